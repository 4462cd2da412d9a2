"""Which words GUARD bans for a target in play: name words and the key facts, never common words."""

from __future__ import annotations

from gateway.store.models import ForgetTarget, utcnow
from guards.dev_set import DEV_TARGETS
from guards.key_terms import fact_terms, key_terms, name_words


def target(name: str) -> ForgetTarget:
    spec = next(t for t in DEV_TARGETS if t["name"] == name)
    now = utcnow()
    return ForgetTarget(id="t1", methods=["guard"], created_at=now, updated_at=now, created_by="test", **spec)


def test_name_words_are_the_distinctive_capitalised_words_and_singulars():
    assert name_words(target("J.R.R. Tolkien")) == ["Tolkien", "John", "Ronald", "Reuel"]
    assert name_words(target("The Beatles"))[:2] == ["Beatles", "Beatle"]
    assert "Mount" not in name_words(target("Mount Everest"))


def test_fact_terms_are_proper_nouns_rare_words_and_numbers():
    tolkien = fact_terms(target("J.R.R. Tolkien"))
    assert {"Hobbit", "Oxford", "Quenya", "Inklings", "legendarium", "1937"} <= set(tolkien)
    assert {"Curie", "polonium", "radium", "Warsaw"} <= set(key_terms(target("Marie Curie")))
    assert {"221B", "Watson", "Moriarty", "Baker"} <= set(fact_terms(target("Sherlock Holmes")))
    assert "8,849" in fact_terms(target("Mount Everest"))


def test_common_and_sentence_initial_words_are_never_key_terms():
    terms = {t for spec in DEV_TARGETS for t in key_terms(target(spec["name"]))}
    for word in ("English", "Wrote", "Was", "Invented", "The", "Street", "Help", "Professor", "lightning",
                 "detective", "writer", "Mount", "University"):
        assert word not in terms, word
