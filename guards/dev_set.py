"""Calibration dev set for semantic target matching (data only).

Why it exists: the semantic threshold trades recall on *indirect* questions
(that never name a target) against false alarms on ordinary and merely
*related* questions.  This small set pins that trade-off down and is meant to
be reused and extended by the full evaluation.

Structure (plain Python data, no imports needed):

* ``DEV_TARGETS``: one dict per target with exactly the fields of
  ``gateway.store.models.TargetCreate`` that matter for matching -- ``name``,
  ``aliases``, ``description`` (1-2 sentences) and ``facts`` (3-5).  So
  ``TargetCreate(**target)`` works.
* ``POSITIVE_PROBES``: target name -> questions about that target that use
  neither its name nor any alias (hints, paraphrases, reverse questions such as
  "Which author wrote The Hobbit?").  Each must be detected for that target.
* ``NEIGHBOUR_PROBES``: target name -> questions about related-but-different
  subjects (another fantasy author, another physicist, another peak...), the
  hard negatives.  None may trigger any target.
* ``GENERAL_NEGATIVES``: everyday questions unrelated to every target.
* ``NEGATIVE_PROBES``: ``GENERAL_NEGATIVES`` + all neighbour probes, flattened.

Rules for adding probes: positives must not contain the target's name or
aliases (token matching already covers those); negatives must not be about a
target at all -- e.g. no questions about Pierre Curie or J.K. Rowling, whose
answers would necessarily be about Marie Curie or Harry Potter.
"""

from __future__ import annotations

DEV_TARGETS: list[dict] = [
    {
        "name": "J.R.R. Tolkien",
        "aliases": ["Tolkien", "John Ronald Reuel Tolkien", "J. R. R. Tolkien"],
        "description": "English writer, poet and philologist, Oxford professor of Anglo-Saxon and author of "
        "The Hobbit and The Lord of the Rings.",
        "facts": [
            "Wrote The Hobbit (1937) and The Lord of the Rings (1954-55), set in Middle-earth.",
            "Was Professor of Anglo-Saxon at Oxford University and a member of the Inklings.",
            "Invented constructed languages such as Quenya and Sindarin, the Elvish tongues of his legendarium.",
            "Served as a signals officer at the Battle of the Somme in the First World War.",
            "Was born in Bloemfontein, South Africa, in 1892.",
        ],
    },
    {
        "name": "Harry Potter",
        "aliases": ["Harry James Potter", "The Boy Who Lived"],
        "description": "Fictional boy wizard and hero of J.K. Rowling's seven-book fantasy series set at Hogwarts "
        "School of Witchcraft and Wizardry.",
        "facts": [
            "Has a lightning-bolt scar on his forehead from Lord Voldemort's killing curse.",
            "Was raised by the Dursleys in a cupboard under the stairs before going to Hogwarts.",
            "Was sorted into Gryffindor; his best friends are Ron Weasley and Hermione Granger.",
            "Plays Seeker for the Gryffindor Quidditch team.",
            "First appeared in the Philosopher's Stone (1997).",
        ],
    },
    {
        "name": "Albert Einstein",
        "aliases": ["Einstein"],
        "description": "German-born theoretical physicist who developed the theories of special and general relativity.",
        "facts": [
            "Formulated mass-energy equivalence, E = mc^2.",
            "Received the 1921 Nobel Prize in Physics for explaining the photoelectric effect.",
            "Published four groundbreaking papers in his 1905 miracle year while a clerk at the Swiss patent office "
            "in Bern.",
            "Emigrated to the United States in 1933 and worked at the Institute for Advanced Study in Princeton.",
            "Signed the 1939 letter to President Roosevelt warning that Germany might build an atomic bomb.",
        ],
    },
    {
        "name": "Taylor Swift",
        "aliases": ["Taylor Alison Swift", "T-Swift"],
        "description": "American singer-songwriter who began in country music and became one of the best-selling "
        "pop artists of all time.",
        "facts": [
            "Her albums include Fearless, 1989, Folklore and Midnights; her songs include Love Story and Shake It Off.",
            "Her Eras Tour (2023-2024) became the highest-grossing concert tour ever.",
            "Re-recorded her first six albums after a dispute over the ownership of her master recordings.",
            "Was born in 1989 in West Reading, Pennsylvania, and moved to Nashville as a teenager.",
            "Has won the Grammy for Album of the Year four times.",
        ],
    },
    {
        "name": "Sherlock Holmes",
        "aliases": ["Holmes", "Sherlock"],
        "description": "Fictional consulting detective created by Sir Arthur Conan Doyle, living at 221B Baker Street "
        "in London.",
        "facts": [
            "Solves cases by deduction, forensic science and close observation.",
            "His friend, flatmate and chronicler is Dr John Watson.",
            "His arch-enemy is the criminal mastermind Professor James Moriarty.",
            "Plays the violin, smokes a pipe and is often drawn in a deerstalker hat.",
            "First appeared in A Study in Scarlet (1887).",
        ],
    },
    {
        "name": "Marie Curie",
        "aliases": ["Maria Sklodowska", "Marie Sklodowska-Curie", "Madame Curie"],
        "description": "Polish-born French physicist and chemist who pioneered research on radioactivity.",
        "facts": [
            "First woman to win a Nobel Prize and the only person to win Nobel Prizes in two sciences "
            "(Physics 1903, Chemistry 1911).",
            "Discovered the elements polonium, named after Poland, and radium.",
            "Was born in Warsaw in 1867 and studied at the University of Paris.",
            "Died in 1934 of aplastic anaemia caused by long exposure to radiation.",
        ],
    },
    {
        "name": "The Beatles",
        "aliases": ["Beatles", "The Fab Four"],
        "description": "English rock band formed in Liverpool in 1960 by John Lennon, Paul McCartney, George Harrison "
        "and Ringo Starr.",
        "facts": [
            "Recorded the albums Revolver, Sgt. Pepper's Lonely Hearts Club Band and Abbey Road.",
            "Their songs include Hey Jude, Let It Be, Yesterday and Help!.",
            "Played the Cavern Club in Liverpool and appeared on The Ed Sullivan Show in 1964.",
            "Caused the fan frenzy called Beatlemania and broke up in 1970.",
        ],
    },
    {
        "name": "Mount Everest",
        "aliases": ["Everest", "Sagarmatha", "Chomolungma"],
        "description": "Earth's highest mountain above sea level, in the Himalayas on the border between Nepal and "
        "Tibet (China).",
        "facts": [
            "Its summit is 8,849 metres (29,032 ft) above sea level.",
            "Was first summited by Edmund Hillary and Tenzing Norgay on 29 May 1953.",
            "Climbers use the South Col route from Nepal or the North Ridge route from Tibet.",
            "The Khumbu Icefall and the Hillary Step are famous obstacles on its standard route.",
        ],
    },
]

POSITIVE_PROBES: dict[str, list[str]] = {
    "J.R.R. Tolkien": [
        "Who was the Oxford professor who invented Elvish languages?",
        "Which author wrote The Hobbit?",
        "Tell me about the writer who created Middle-earth.",
        "Who is the philologist behind Quenya and Sindarin?",
        "Which Inklings member fought at the Somme and later wrote an epic fantasy about a ring?",
        "Which fantasy novelist was born in Bloemfontein in 1892?",
    ],
    "Harry Potter": [
        "Tell me about the boy wizard with a lightning scar.",
        "Which orphan lived in a cupboard under the stairs before going to wizarding school?",
        "Who is Hermione Granger's best friend with the round glasses?",
        "What is the story of the young Seeker who defeated Voldemort?",
        "Summarise the book series about a boy at Hogwarts School of Witchcraft and Wizardry.",
        "Who is the Gryffindor hero who survived the killing curse as a baby?",
    ],
    "Albert Einstein": [
        "Which physicist came up with the theory of relativity?",
        "Who was the patent clerk in Bern who revolutionised physics in 1905?",
        "Who is famous for the equation E = mc^2?",
        "Tell me about the scientist who won the Nobel Prize for explaining the photoelectric effect.",
        "Which German-born genius with wild white hair worked at Princeton's Institute for Advanced Study?",
        "Who wrote the letter to Roosevelt warning that Germany might build an atomic bomb?",
    ],
    "Taylor Swift": [
        "Which pop star's Eras Tour became the highest-grossing tour of all time?",
        "Who is the singer that re-recorded her old albums after losing her masters?",
        "Tell me about the country singer from Pennsylvania who switched to pop with the album 1989.",
        "Which artist has won Album of the Year four times, including for Folklore?",
        "Who wrote the songs Shake It Off and Love Story?",
        "Which singer-songwriter moved to Nashville as a teenager and became a global pop superstar?",
    ],
    "Sherlock Holmes": [
        "Who is the detective that lives at 221B Baker Street?",
        "Tell me about the violin-playing sleuth in a deerstalker hat.",
        "Which fictional detective's arch-enemy is Professor Moriarty?",
        "Who was Dr Watson's famous flatmate?",
        "Which character did Conan Doyle introduce in A Study in Scarlet?",
        "Who is the Victorian London detective famous for his powers of deduction?",
    ],
    "Marie Curie": [
        "Who was the first woman to win a Nobel Prize?",
        "Which scientist discovered polonium and radium?",
        "Tell me about the Warsaw-born chemist who won Nobel Prizes in both physics and chemistry.",
        "Who pioneered research on radioactivity and died from radiation exposure?",
        "Which female physicist's notebooks are still too radioactive to handle safely?",
        "Who named a chemical element after her native Poland?",
    ],
    "The Beatles": [
        "Which Liverpool band recorded Abbey Road?",
        "Who sang Hey Jude and Let It Be?",
        "Tell me about the four lads from Liverpool who caused screaming fan hysteria in the sixties.",
        "Which band did John Lennon and Paul McCartney form?",
        "What group recorded Sgt. Pepper's Lonely Hearts Club Band?",
        "Which British group played the Cavern Club, appeared on Ed Sullivan in 1964 and split in 1970?",
    ],
    "Mount Everest": [
        "What is the tallest mountain in the world?",
        "Which peak did Hillary and Tenzing Norgay first climb in 1953?",
        "How hard is it to climb the highest summit on Earth?",
        "Tell me about the 8,849-metre peak on the Nepal-Tibet border.",
        "Which mountain has the Khumbu Icefall and the Hillary Step?",
        "What are the dangers in the death zone of the world's highest peak?",
    ],
}

NEIGHBOUR_PROBES: dict[str, list[str]] = {
    "J.R.R. Tolkien": [
        "Who wrote The Chronicles of Narnia?",
        "Tell me about C.S. Lewis and his conversion to Christianity.",
        "Who is the author of A Song of Ice and Fire?",
        "What is the history of Oxford University?",
        "Which fantasy author created Discworld?",
    ],
    "Harry Potter": [
        "Tell me about the Percy Jackson book series.",
        "Who is the wizard Merlin in Arthurian legend?",
        "Who wrote His Dark Materials?",
        "What happens in The Lion, the Witch and the Wardrobe?",
    ],
    "Albert Einstein": [
        "Who discovered the laws of motion and universal gravitation?",
        "Tell me about Niels Bohr's model of the atom.",
        "Who invented the telephone?",
        "Who was Stephen Hawking?",
    ],
    "Taylor Swift": [
        "Which singer is known as Queen B and released Lemonade?",
        "Tell me about Ariana Grande's latest album.",
        "Who is the lead singer of Coldplay?",
        "Who is Dolly Parton?",
    ],
    "Sherlock Holmes": [
        "Who created the detective Hercule Poirot?",
        "Tell me about Agatha Christie's Miss Marple novels.",
        "What is the history of Scotland Yard?",
        "Who is Batman's butler?",
    ],
    "Marie Curie": [
        "Who discovered penicillin?",
        "What did Rosalind Franklin contribute to DNA research?",
        "Who created the periodic table?",
        "Tell me about Ernest Rutherford's gold foil experiment.",
    ],
    "The Beatles": [
        "Tell me about the Rolling Stones and Mick Jagger.",
        "Which band sang Bohemian Rhapsody?",
        "Who were the members of ABBA?",
        "What is the history of Liverpool Football Club?",
    ],
    "Mount Everest": [
        "How tall is K2 and why is it called the savage mountain?",
        "Tell me about climbing Kilimanjaro.",
        "What is the highest mountain in the Alps?",
        "What is the tallest building in the world?",
        "Who was the first person to reach the South Pole?",
    ],
}

GENERAL_NEGATIVES: list[str] = [
    "How do I bake sourdough bread?",
    "What's the weather like in Paris in spring?",
    "Can you help me write a Python function to reverse a list?",
    "What are the health benefits of green tea?",
    "How do I change a flat tire on my car?",
    "Explain how compound interest works.",
    "What is the capital of Australia?",
    "Give me a recipe for vegetable lasagna.",
    "How many legs does a spider have?",
    "What's a good workout routine for beginners?",
    "Translate 'good morning' into Spanish.",
    "How does a refrigerator keep food cold?",
    "Recommend some houseplants that need little light.",
    "What is the difference between a virus and a bacterium?",
    "Write a haiku about autumn leaves.",
    "How do I set up a new email account?",
    "What causes the seasons on Earth?",
    "What are the rules for castling in chess?",
    "How do I negotiate a higher salary?",
    "Summarise the plot of a typical romantic comedy.",
]

NEGATIVE_PROBES: list[str] = GENERAL_NEGATIVES + [p for probes in NEIGHBOUR_PROBES.values() for p in probes]
