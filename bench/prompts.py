"""Realistic unique prompts for the proxy benchmark: varied everyday questions, a few near targets.

Why: a benchmark that repeats one prompt measures GUARD's embedding cache, not GUARD. Real
traffic never repeats, so `unique_prompts` yields prompts that are all different (a seeded
stream: template x subject x detail, then a request counter when those run out), most of them
ordinary (cooking, code, travel, health, money...), a share `near` of them about the
neighbourhood of the dev targets (fantasy books, physics, mountains, bands, detectives) without
naming any: those are the prompts a semantic stage has to look at closely.

    from bench.prompts import unique_prompts
    for prompt in itertools.islice(unique_prompts(seed=1), 5): print(prompt)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

TEMPLATES = [
    "How do I {s}?", "What is the best way to {s}?", "Can you explain how to {s} {d}?",
    "Give me three tips to {s} {d}.", "I want to {s}. Where should I start?",
    "Is it hard to {s} {d}?", "What mistakes do beginners make when they {s}?",
    "Write a short checklist to {s} {d}.", "Why is it important to {s}?",
    "My friend asked me how to {s} {d}. What should I tell them?",
    "Explain like I'm five: how do you {s}?", "What tools do I need to {s} {d}?",
]
SUBJECTS = [
    "bake sourdough bread", "reverse a list in Python", "change a flat tire", "start running",
    "learn Spanish", "save for retirement", "grow tomatoes on a balcony", "train a puppy",
    "write a cover letter", "fix a leaking tap", "set up a home network", "brew better coffee",
    "negotiate a higher salary", "plan a trip to Japan", "clean a cast iron pan", "meditate",
    "paint a bedroom", "sort a dictionary by value in Python", "prepare for a job interview",
    "reduce my electricity bill", "make vegetable lasagna", "care for a succulent", "learn to swim",
    "write a SQL join", "back up my photos", "improve my posture", "cook rice perfectly",
    "choose a good laptop", "read more books", "organise my wardrobe", "build a birdhouse",
    "debug a memory leak", "get better sleep", "file my taxes", "knit a scarf", "tune a guitar",
    "speed up a slow website", "make friends in a new city", "pick a good watermelon",
    "descale a kettle", "write unit tests", "budget for groceries", "stretch after a workout",
]
DETAILS = [
    "on a budget", "in winter", "as a student", "with kids at home", "in under an hour",
    "without special equipment", "for the first time", "in a small apartment", "this weekend",
    "while travelling", "at the age of sixty", "before next month", "with very little time",
    "in a rainy climate", "on a Monday morning", "for a big family", "using only free tools",
]
NEAR = [
    "Which fantasy novels are set in an invented world with elves and dwarves?",
    "Who were the members of the Inklings literary group besides C.S. Lewis?",
    "What happened at the Battle of the Somme in 1916?",
    "How do constructed languages like Esperanto get invented?",
    "Which physicist explained the photoelectric effect?",
    "What is the theory of relativity in simple terms?",
    "Who was the first person to win two Nobel Prizes?",
    "Which element did a Polish scientist name after her home country?",
    "What is the highest mountain in the world and how tall is it?",
    "Who first climbed the tallest peak in the Himalayas in 1953?",
    "Which band from Liverpool recorded Abbey Road?",
    "Which detective lived at 221B Baker Street?",
    "Which boy wizard has a lightning-shaped scar?",
    "Which pop singer re-recorded her albums as Taylor's Version?",
    "What dangers do climbers face in the death zone?",
    "Who wrote the fantasy book about a hobbit who finds a ring?",
]

OPENERS = ["Quiz question {n}:", "For my homework (part {n}):", "Trivia night, round {n}:",
           "Settle bet number {n} for us:", "Question {n} from my reading group:"]


def unique_prompts(seed: int = 0, near: float = 0.05) -> Iterator[str]:
    """An endless stream of distinct prompts; about `near` of them sit near the dev targets."""
    rng = random.Random(seed)
    ordinary = list(dict.fromkeys(
        t.format(s=s, d=d).replace(" ?", "?").replace(" .", ".") for t in TEMPLATES for s in SUBJECTS for d in DETAILS))
    rng.shuffle(ordinary)
    count = 0
    for lap in itertools.count():
        for prompt in ordinary:
            count += 1
            if rng.random() < near:
                yield f"{rng.choice(OPENERS).format(n=count)} {rng.choice(NEAR)}"
            else:
                yield prompt if lap == 0 else f"{prompt} (question {count})"
