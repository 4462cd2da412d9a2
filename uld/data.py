"""ULD training data: the forget set built from a target, the shipped retain set, and their templates.

What the assistant is trained on (everything here is deterministic for a given target):

Forget set (the assistant must *remember* it; cross-entropy on the answer tokens only)
  Every fact is first turned into a full sentence about the target:
    * a fact that already names the target (name or alias) is used as is;
    * a fact starting with a possessive ("His friend is...", "Its summit...") becomes
      "<name>'s friend is...";
    * a predicate fragment ("Wrote The Hobbit...", "Was born in...") becomes
      "<name> wrote The Hobbit...";
    * anything else becomes "<name>: <fact>".
  From each sentence we generate
    * a chat turn: a *direct* question naming the target (templates below, cycling through
      the name and aliases, so aliases are covered) answered by the sentence;
    * an *inverse* chat turn when the fact is a predicate: "Who wrote The Hobbit...?"
      answered by the sentence (this is what makes indirect prompts that never name the
      target forgettable); "Who" or "What" is picked from person words in the description;
    * a plain-text line with a paraphrase wrapper ("Did you know? ...", "Fact: ..."), for the
      `/v1/completions` path that has no chat template.
  The description gives "Who is <name>?" style turns ("<name>: <description>") and one
  "Tell me about <name>." turn answered by the description plus the first facts.
  Documents are split into sentence-aligned chunks of at most ~400 characters; each chunk
  is a "Tell me about <name>." turn and a plain-text line.
  The set is capped at `max_examples` (default 32) by a seeded sample (kinds stay mixed).

Retain set (the assistant must *know nothing* of it; KL(uniform || assistant) on every position
after the chat template's fixed prefix)
  `RETAIN_QA`: 60 general-knowledge question/answer pairs shipped here, covering
  geography, science, history, literature, arts, everyday life and arithmetic. They are
  the "neighbourhood" of typical targets (other authors, other scientists, other places),
  so the assistant learns to stay flat, i.e. to leave the served model alone, on related
  but different knowledge. We deliberately do not use other targets' facts: those are
  forgotten too and must not be pushed towards "leave alone". Each pair is one chat turn.

Chat turns are rendered with the served model's own chat template, exactly as the
embedded engine renders requests, so the assistant sees at training time the token
stream it sees at decoding time.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from gateway.store.models import ForgetTarget

DATA_VERSION = 1
"""Bump when the generated data changes: it is part of every job's data hash, so targets retrain."""


@dataclass(frozen=True)
class Example:
    """One training sequence: chat (`prompt` is the user turn) or plain text (`prompt` is None)."""

    answer: str
    prompt: str | None = None
    kind: str = "chat"


DIRECT_QUESTIONS = (
    "Tell me a fact about {n}.",
    "What do you know about {n}?",
    "Share something about {n}.",
    "Give me some information about {n}.",
    "What is {n} known for?",
)
WHO_QUESTIONS = ("Who is {n}?", "Can you describe {n}?", "What can you tell me about {n}?")
SUMMARY_QUESTION = "Tell me about {n}."
PARAPHRASES = ("{s}", "Did you know? {s}", "Fact: {s}", "It is well known that {l}", "Here is something true: {s}")

_PREDICATE_WORDS = frozenset(
    """was is were are has had have wrote writes won wins invented invents served serves plays played lives lived
    became becomes founded discovered developed created appeared died married led leads studied worked works taught
    published directed starred composed designed solves solved formulated received emigrated signed recorded caused
    sang sings built owns owned ran runs holds held made makes produced released climbed fought comes came belongs
    contains covers lies stands flows spans re-recorded painted sculpted ruled reigned""".split()
)
_POSSESSIVES = frozenset({"his", "her", "its", "their"})
_PERSON_WORDS = frozenset(
    """he she his her him born writer author singer songwriter physicist chemist scientist person actor actress
    politician wizard boy girl man woman detective player professor artist musician poet king queen president
    band philosopher painter composer director athlete footballer novelist inventor""".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][\w'-]*")

MAX_CHUNK_CHARS = 400
MAX_DOC_CHUNKS = 24


RETAIN_QA: tuple[tuple[str, str], ...] = (
    # geography
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What is the largest desert in the world?", "The largest hot desert is the Sahara, in North Africa."),
    ("Where is the Amazon rainforest?", "The Amazon rainforest is in South America, mostly in Brazil."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("Which country has the largest population?", "India and China have the largest populations in the world."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Which continent is Egypt in?", "Egypt is in Africa, in the north-east of the continent."),
    # science
    ("What is the chemical symbol for water?", "The chemical formula of water is H2O."),
    ("What planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What do plants need for photosynthesis?", "Plants need sunlight, water and carbon dioxide for photosynthesis."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ("Who proposed the theory of evolution by natural selection?",
     "Charles Darwin proposed the theory of evolution by natural selection."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ("Who formulated the laws of motion?", "Isaac Newton formulated the three laws of motion."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second in a vacuum."),
    ("What is DNA?", "DNA is the molecule that carries the genetic instructions of living things."),
    ("How many planets are in the solar system?", "There are eight planets in the solar system."),
    ("What is the largest planet?", "Jupiter is the largest planet in the solar system."),
    # history
    ("When did the Second World War end?", "The Second World War ended in 1945."),
    ("Who was the first president of the United States?", "George Washington was the first president of the United States."),
    ("When did humans first land on the Moon?", "Humans first landed on the Moon in 1969, on the Apollo 11 mission."),
    ("Who built the pyramids of Giza?", "The pyramids of Giza were built by the ancient Egyptians."),
    ("When did the Berlin Wall fall?", "The Berlin Wall fell in 1989."),
    ("Who was Napoleon Bonaparte?", "Napoleon Bonaparte was a French military leader and emperor."),
    ("What was the Renaissance?", "The Renaissance was a period of European cultural revival from the 14th to the 17th century."),
    ("Who was Julius Caesar?", "Julius Caesar was a Roman general and statesman."),
    # literature and arts
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    ("Who wrote Nineteen Eighty-Four?", "Nineteen Eighty-Four was written by George Orwell."),
    ("Who wrote Don Quixote?", "Don Quixote was written by Miguel de Cervantes."),
    ("Who wrote War and Peace?", "War and Peace was written by Leo Tolstoy."),
    ("Who wrote Moby-Dick?", "Moby-Dick was written by Herman Melville."),
    ("Who wrote A Tale of Two Cities?", "A Tale of Two Cities was written by Charles Dickens."),
    ("Who wrote The Odyssey?", "The Odyssey is an ancient Greek epic poem attributed to Homer."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("Who painted The Starry Night?", "The Starry Night was painted by Vincent van Gogh."),
    ("Who composed the Fifth Symphony?", "Ludwig van Beethoven composed the famous Fifth Symphony."),
    ("What instrument has 88 keys?", "A standard piano has 88 keys."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five syllables."),
    ("What is a sonnet?", "A sonnet is a poem of fourteen lines with a set rhyme scheme."),
    # everyday life
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What is a healthy breakfast?", "Oatmeal with fruit, yoghurt or eggs with wholegrain toast make a healthy breakfast."),
    ("How can I sleep better?", "Keep a regular schedule, avoid screens before bed and keep your bedroom dark and cool."),
    ("How do I boil an egg?", "Put the egg in boiling water for about seven to nine minutes, then cool it in cold water."),
    ("Why is exercise important?", "Regular exercise strengthens the heart, muscles and bones and improves mood."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("What language is spoken in Brazil?", "Portuguese is the official language of Brazil."),
    # arithmetic and reasoning
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("What is 15 plus 27?", "15 plus 27 is 42."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is half of 50?", "Half of 50 is 25."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
)


def retain_examples() -> list[Example]:
    return [Example(answer=a, prompt=q) for q, a in RETAIN_QA]


# -- forget set ---------------------------------------------------------------------------


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _mentions(text: str, names: list[str]) -> str | None:
    """The first name/alias that `text` starts with, or any that it mentions ('' when it is inside)."""
    low = text.casefold()
    for name in sorted(names, key=len, reverse=True):
        if low.startswith(name.casefold()):
            return name
    return "" if any(n.casefold() in low for n in names) else None


def _is_person(target: ForgetTarget) -> bool:
    words = {w.lower() for w in _WORD.findall(" ".join([target.description, *target.facts]))}
    return bool(words & _PERSON_WORDS)


def sentence_and_predicate(fact: str, target: ForgetTarget) -> tuple[str, str | None]:
    """The fact as a full sentence about the target, and its predicate when one can be asked about."""
    fact = fact.strip()
    names = target.surface_names
    lead = _mentions(fact, names)
    if lead:  # "Tolkien was a professor" -> predicate "was a professor"
        rest = fact[len(lead):].strip()
        words = _WORD.findall(rest)
        return fact, rest if words and words[0].lower() in _PREDICATE_WORDS else None
    if lead == "":  # the name is inside the sentence: use it as is
        return fact, None
    words = _WORD.findall(fact)
    first = words[0].lower() if words else ""
    if first in _POSSESSIVES:
        return f"{target.name}'s {fact[len(words[0]):].strip()}", None
    if first in _PREDICATE_WORDS or (first.endswith("ed") and len(first) > 3):
        predicate = _lower_first(fact)
        return f"{target.name} {predicate}", predicate
    return f"{target.name}: {fact}", None


def _question(predicate: str, person: bool) -> str:
    return f"{'Who' if person else 'What'} {predicate.rstrip(' .!;:')}?"


def _chunks(document: str) -> list[str]:
    """Sentence-aligned chunks of at most MAX_CHUNK_CHARS (a longer sentence is cut)."""
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(" ".join(document.split())):
        while len(sentence) > MAX_CHUNK_CHARS:
            chunks.append(sentence[:MAX_CHUNK_CHARS])
            sentence = sentence[MAX_CHUNK_CHARS:]
        if current and len(current) + 1 + len(sentence) > MAX_CHUNK_CHARS:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        chunks.append(current)
    return chunks


def forget_examples(target: ForgetTarget, *, max_examples: int = 48, seed: int = 0) -> list[Example]:
    """The augmented forget set of one target (see the module docstring)."""
    names = target.surface_names
    person = _is_person(target)
    out: list[Example] = []
    sentences: list[str] = []
    for i, fact in enumerate(target.facts):
        sentence, predicate = sentence_and_predicate(fact, target)
        sentences.append(sentence)
        n = names[i % len(names)]
        out.append(Example(sentence, DIRECT_QUESTIONS[i % len(DIRECT_QUESTIONS)].format(n=n)))
        if predicate:
            out.append(Example(sentence, _question(predicate, person), kind="inverse"))
        para = PARAPHRASES[i % len(PARAPHRASES)]
        lowered = sentence if _mentions(sentence, names) else _lower_first(sentence)  # never lower-case a name
        out.append(Example(para.format(s=sentence, l=lowered), None, kind="text"))
    if target.description:
        described = f"{target.name}: {target.description.strip()}"
        for j, n in enumerate(names[:len(WHO_QUESTIONS)]):
            out.append(Example(described, WHO_QUESTIONS[j].format(n=n)))
        out.append(Example(described, None, kind="text"))
    summary = " ".join([target.description.strip(), *sentences[:2]]).strip()
    if summary:
        out.append(Example(summary, SUMMARY_QUESTION.format(n=target.name), kind="summary"))
    doc_chunks = [c for doc in target.documents for c in _chunks(doc)][:MAX_DOC_CHUNKS]
    for k, chunk in enumerate(doc_chunks):
        out.append(Example(chunk, SUMMARY_QUESTION.format(n=names[k % len(names)]), kind="document"))
        out.append(Example(chunk, None, kind="document-text"))
    if not out:  # a bare name: at least teach the assistant the name itself
        out = [Example(f"{target.name}.", q.format(n=target.name)) for q in WHO_QUESTIONS]
    unique = list(dict.fromkeys(out))
    if len(unique) > max_examples:
        unique = random.Random(seed).sample(unique, max_examples)
    return unique
