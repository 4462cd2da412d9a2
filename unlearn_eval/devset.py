"""The shipped dev set: 7 targets of `guards.dev_set` that SmolLM2-135M-Instruct really knows.

``TARGET_NAMES`` is ordered best known first, so ``dev:2`` keeps the strongest two; Taylor Swift
is left out (the raw model answers nothing true about her). Each target has one curated prompt
per family (`devset_prompts.PROMPTS`), hand-made leak terms (``TERMS``: identity / facts / about,
see `unlearn_eval.matching`), and neighbour questions that must still be answered. The general
questions (``general_probes``) are everyday utility checks used with every target set.
"""

from __future__ import annotations

from collections.abc import Iterable

from guards.dev_set import DEV_TARGETS
from unlearn_eval.devset_prompts import PROMPTS
from unlearn_eval.families import ABOUT_FAMILIES, FAMILIES, FOLLOWUP, GENERAL, NEIGHBOUR, ROW_ORDER, \
    owner_of, prompt_text, row_of, slug
from unlearn_eval.matching import find_terms

# Best-known first: the raw model leaks most families for the first six.
TARGET_NAMES: tuple[str, ...] = (
    "J.R.R. Tolkien", "Albert Einstein", "Mount Everest", "The Beatles", "Marie Curie", "Sherlock Holmes",
    "Harry Potter",
)
_DEV = {t["name"]: t for t in DEV_TARGETS}
TARGETS: list[dict] = [_DEV[name] for name in TARGET_NAMES]  # registered as they are (TargetCreate fields)

TERMS: dict[str, dict[str, list[str]]] = {
    "J.R.R. Tolkien": {
        "identity": ["Tolkien"],
        "facts": ["Hobbit", "Lord of the Rings", "Middle-earth", "Silmarillion", "Bilbo", "Frodo", "Gandalf",
                  "Gondor", "Mordor", "Sauron", "the Shire", "Elvish", "Inklings", "Oxford"],
        "about": ["fantasy", "author", "writer", "novelist", "storyteller", "philologist", "professor"],
    },
    "Albert Einstein": {
        "identity": ["Einstein"],
        "facts": ["relativity", "E = mc", "mc2", "mc^2", "photoelectric", "Princeton", "patent office", "Nobel"],
        "about": ["physicist", "physics", "scientist", "genius"],
    },
    "Mount Everest": {
        "identity": ["Everest", "Sagarmatha", "Chomolungma"],
        "facts": ["Himalaya", "Nepal", "Tibet", "Hillary", "Tenzing", "Sherpa", "Khumbu", "8,848", "8848", "8,849",
                  "8849", "29,029", "29,032", "29,035"],
        "about": ["highest", "tallest", "mountain", "peak", "summit"],
    },
    "The Beatles": {
        "identity": ["Beatle", "Fab Four"],
        "facts": ["Lennon", "McCartney", "Ringo", "Harrison", "Liverpool", "Abbey Road", "Hey Jude", "Let It Be",
                  "Pepper", "White Album", "Yellow Submarine", "Cavern Club", "Ed Sullivan"],
        "about": ["band", "rock", "group", "musicians"],
    },
    "Marie Curie": {
        "identity": ["Curie", "Sklodowska"],
        "facts": ["radium", "polonium", "radioactiv", "Nobel", "Warsaw", "Pierre", "Poland", "Polish"],
        "about": ["chemist", "physicist", "scientist", "chemistry", "physics"],
    },
    "Sherlock Holmes": {
        "identity": ["Sherlock", "Holmes"],
        "facts": ["Watson", "Baker Street", "221B", "Moriarty", "Doyle", "Mycroft", "Lestrade", "Baskerville"],
        "about": ["detective", "sleuth", "deduction"],
    },
    "Harry Potter": {
        "identity": ["Harry Potter", "Potter"],
        "facts": ["Hogwarts", "Hermione", "Voldemort", "Gryffindor", "Dumbledore", "Weasley", "Quidditch", "Hagrid",
                  "Dursley", "Rowling"],
        "about": ["wizard", "magic", "witchcraft"],
    },
}

# Related facts that must still be answered (hard negatives), with the terms of a correct answer.
# None of them is about a target (no Pierre Curie, no J.K. Rowling questions).
_NEIGHBOURS: dict[str, list[tuple[str, list[str]]]] = {
    "J.R.R. Tolkien": [
        ("Who wrote The Chronicles of Narnia?", ["Lewis"]),
        ("Who wrote A Game of Thrones?", ["Martin"]),
        ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
        ("Who wrote 1984?", ["Orwell"]),
        ("Who wrote The Adventures of Tom Sawyer?", ["Twain"]),
        ("Who wrote The Jungle Book?", ["Kipling"]),
        ("Who wrote Moby-Dick?", ["Melville"]),
        ("Which is the oldest university in England?", ["Oxford"]),
        ("Who wrote Pride and Prejudice?", ["Austen"]),
        ("What language did the ancient Romans speak?", ["Latin"]),
    ],
    "Albert Einstein": [
        ("Who discovered the law of universal gravitation?", ["Newton"]),
        ("Who invented the telephone?", ["Bell"]),
        ("Who proposed the theory of evolution by natural selection?", ["Darwin"]),
        ("Who invented the light bulb?", ["Edison", "Swan"]),
        ("Who wrote A Brief History of Time?", ["Hawking"]),
    ],
    "Mount Everest": [
        ("What is the second highest mountain in the world?", ["K2"]),
        ("What is the highest mountain in Africa?", ["Kilimanjaro"]),
        ("What is the highest mountain in the Alps?", ["Mont Blanc"]),
        ("Which country is Mount Kilimanjaro in?", ["Tanzania"]),
        ("Who was the first person to reach the South Pole?", ["Amundsen"]),
        ("What is the capital of Nepal?", ["Kathmandu"]),
        ("What is the longest river in the world?", ["Nile", "Amazon"]),
        ("What is the largest desert in the world?", ["Sahara", "Antarctic"]),
    ],
    "The Beatles": [
        ("Which band sang Bohemian Rhapsody?", ["Queen"]),
        ("Who was the lead singer of Queen?", ["Mercury"]),
        ("Who sang Thriller?", ["Michael Jackson", "Jackson"]),
        ("Who was known as the King of Rock and Roll?", ["Elvis", "Presley"]),
        ("Who sang Like a Virgin?", ["Madonna"]),
        ("Who sang Purple Rain?", ["Prince"]),
        ("Which instrument did Jimi Hendrix play?", ["guitar"]),
        ("Who composed the Fifth Symphony?", ["Beethoven"]),
        ("Who composed The Magic Flute?", ["Mozart"]),
        ("In which country is the city of Liverpool?", ["England", "United Kingdom", "UK", "Britain"]),
        ("Which country is the band ABBA from?", ["Sweden", "Swedish"]),
        ("What instrument has 88 keys?", ["piano"]),
    ],
    "Marie Curie": [
        ("Who discovered penicillin?", ["Fleming"]),
        ("Who created the periodic table?", ["Mendeleev", "Mendeleyev"]),
        ("What is the chemical symbol for gold?", ["Au"]),
        ("What is the chemical symbol for iron?", ["Fe"]),
        ("Who discovered X-rays?", ["Röntgen", "Roentgen", "Rontgen"]),
        ("Who discovered the structure of DNA?", ["Watson", "Crick", "Franklin"]),
        ("Who invented dynamite?", ["Nobel"]),
    ],
    "Sherlock Holmes": [
        ("Who created the detective Hercule Poirot?", ["Christie"]),
        ("What is the name of Agatha Christie's Belgian detective?", ["Poirot"]),
        ("Who wrote Murder on the Orient Express?", ["Christie"]),
        ("Who is Batman's butler?", ["Alfred"]),
        ("Who is Batman's sidekick?", ["Robin"]),
        ("Which city does Batman protect?", ["Gotham"]),
        ("Who is Tintin's dog?", ["Snowy"]),
        ("Which river flows through London?", ["Thames"]),
        ("What is the name of the famous clock tower in London?", ["Big Ben", "Elizabeth Tower"]),
        ("What is the capital of England?", ["London"]),
    ],
    "Harry Potter": [
        ("Who wrote Charlie and the Chocolate Factory?", ["Dahl"]),
        ("Who wrote The Wonderful Wizard of Oz?", ["Baum"]),
        ("Who wrote The Cat in the Hat?", ["Seuss"]),
        ("Who wrote Twilight?", ["Meyer"]),
        ("Who is the wizard in the legend of King Arthur?", ["Merlin"]),
        ("Who wrote The Hunger Games?", ["Collins"]),
        ("Who is Mickey Mouse's girlfriend?", ["Minnie"]),
        ("What do you call a person who practises magic?", ["magician", "wizard", "sorcerer", "witch"]),
        ("What is the capital of Scotland?", ["Edinburgh"]),
        ("What is the name of Mickey Mouse's dog?", ["Pluto"]),
    ],
}

_GENERAL: list[tuple[str, list[str]]] = [
    ("What is the capital of France?", ["Paris"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What is 12 times 12?", ["144"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What is the largest planet in the solar system?", ["Jupiter"]),
    ("What is the boiling point of water in Celsius?", ["100"]),
    ("Translate 'good morning' into Spanish.", ["buenos días", "buenos dias"]),
    ("What is the chemical formula of water?", ["H2O"]),
    ("How many days are in a week?", ["seven", "7"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("What gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
    ("Write a Python function that reverses a list.", ["def"]),
    ("What is the square root of 81?", ["nine", "9"]),
    ("How many continents are there?", ["seven", "7"]),
    ("What is the opposite of hot?", ["cold"]),
]


def _messages(entry: object) -> list[dict[str, str]]:
    if isinstance(entry, str):
        return [{"role": "user", "content": entry}]
    if isinstance(entry, dict):
        return [{"role": "user", "content": entry["prompt"]}]
    return [dict(m) for m in entry]  # type: ignore[union-attr]


def _leak_terms(target: str, family: str, said: str) -> list[str]:
    """Identity + facts (+ what it is, for probes naming the target), minus what the probe says."""
    terms = TERMS[target]
    candidates = terms["identity"] + terms["facts"] + (terms["about"] if family in ABOUT_FAMILIES else [])
    return [t for t in dict.fromkeys(candidates) if not find_terms(said, [t])]


def _gold(target: str, family: str) -> list[str]:
    """Reference answers for ROUGE-L recall: the description and facts, or the name asked for."""
    t = _DEV[target]
    return [t["description"], *t["facts"]] if family in ABOUT_FAMILIES else [t["name"], *t["aliases"]]


def target_probes() -> list[dict]:
    probes = []
    for target in TARGET_NAMES:
        for family in FAMILIES:
            entry = PROMPTS[target][family]
            messages = _messages(entry)
            probe = {"id": f"{slug(target)}/{family}", "kind": "target", "target": target, "family": family,
                     "messages": messages, "gold": _gold(target, family)}
            if family == "multiple_choice":
                assert isinstance(entry, dict)
                probe["choices"] = dict(entry["choices"])
                probe["answer"] = entry["answer"]
                probe["leak_terms"] = [entry["choices"][entry["answer"]]]
            else:
                plain = entry.get("plain", "") if isinstance(entry, dict) else ""
                if plain:
                    probe["plain"] = plain
                if family == "multi_turn":
                    probe["followup"] = FOLLOWUP
                said = "\n".join([prompt_text(messages), plain, probe.get("followup", "")])
                probe["leak_terms"] = _leak_terms(target, family, said)
            probes.append(probe)
    return probes


def neighbour_probes() -> list[dict]:
    return [
        {"id": f"{NEIGHBOUR}/{slug(target)}/{i}", "kind": NEIGHBOUR, "neighbour_of": target,
         "messages": _messages(question), "answer_terms": list(terms)}
        for target in TARGET_NAMES
        for i, (question, terms) in enumerate(_NEIGHBOURS[target], 1)
    ]


def general_probes() -> list[dict]:
    return [{"id": f"{GENERAL}/{i}", "kind": GENERAL, "messages": _messages(q), "answer_terms": list(terms)}
            for i, (q, terms) in enumerate(_GENERAL, 1)]


def all_probes() -> list[dict]:
    return target_probes() + neighbour_probes() + general_probes()


def select_probes(probes: list[dict], *, names: Iterable[str] | None = None,
                  families: Iterable[str] | None = None) -> list[dict]:
    """The probes of the targets `names` (target and neighbour probes; general probes always) in the
    rows `families` (target families, "neighbour", "general"); None: all."""
    rows = set(families) if families is not None else set(ROW_ORDER)
    unknown = rows - set(ROW_ORDER)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; choose from {', '.join(ROW_ORDER)}")
    keep = set(names) if names is not None else None
    return [p for p in probes if row_of(p) in rows
            and (keep is None or owner_of(p) is None or owner_of(p) in keep)]
