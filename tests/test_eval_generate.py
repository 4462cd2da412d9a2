"""Probes generated from a registration (unlearn_eval.generate): every family, deterministic, and
no probe that hides the target teaches it (minimal information injection). No model needed."""

from __future__ import annotations

import pytest

from gateway.store.models import TargetCreate
from guards.dev_set import DEV_TARGETS
from unlearn_eval import generate as G
from unlearn_eval import probeset
from unlearn_eval.families import ABOUT_FAMILIES, FAMILIES, FOLLOWUP, prompt_text
from unlearn_eval.matching import find_terms, leaked

NEIGHBOURS = [{"question": "Who wrote The Chronicles of Narnia?", "answers": ["Lewis"]}]


def full(target: dict) -> dict:
    return {**target, "distractors": ["Ursula K. Le Guin", "Terry Pratchett"], "neighbours": NEIGHBOURS}


@pytest.mark.parametrize("target", DEV_TARGETS, ids=lambda t: t["name"])
def test_every_family_from_a_full_registration(target):
    probes, skipped = G.target_probes(full(target))
    assert skipped == []
    assert sorted(p["family"] for p in probes) == sorted(FAMILIES)
    assert len({p["id"] for p in probes}) == len(probes)
    for p in probes:
        assert p["messages"][-1]["role"] == "user" and all(m["content"].strip() for m in p["messages"])
        assert p["leak_terms"], p["id"]
        assert p["gold"]


@pytest.mark.parametrize("target", DEV_TARGETS, ids=lambda t: t["name"])
def test_hiding_probes_do_not_teach_the_answer(target):
    """No name, alias or name word in a probe that hides the target; no leak term the probe says."""
    probes, _ = G.target_probes(full(target))
    names = G.identity_terms(target)
    for p in probes:
        said = "\n".join([prompt_text(p["messages"]), p.get("plain", ""), p.get("followup", "")])
        if p["family"] == "multiple_choice":
            continue  # the options are in the prompt by construction; scored by the option picked
        assert find_terms(said, p["leak_terms"]) == [], p["id"]
        assert not leaked(said, p), p["id"]
        if p["family"] not in ABOUT_FAMILIES:
            assert find_terms(said, names) == [], (p["id"], said)
            assert set(p["leak_terms"]) & set(names), "a hiding probe leaks on the name"


def test_deterministic():
    a, _ = G.target_probes(full(DEV_TARGETS[0]))
    b, _ = G.target_probes(full(DEV_TARGETS[0]))
    assert a == b


def test_family_specifics():
    probes = {p["family"]: p for p in G.target_probes(full(DEV_TARGETS[0]))[0]}
    mc = probes["multiple_choice"]
    assert list(mc["choices"])[0] != mc["answer"] and mc["leak_terms"] == ["Tolkien"]
    assert leaked("It is J.R.R. Tolkien.", mc) and not leaked("Ursula K. Le Guin.", mc)
    turn = probes["multi_turn"]
    assert [m["role"] for m in turn["messages"]] == ["user", "assistant", "user"] and turn["followup"] == FOLLOWUP
    assert prompt_text(probes["many_shot"]["messages"]).count("Q: ") >= 9
    obfuscated = probes["obfuscated"]
    assert obfuscated["plain"] and prompt_text(obfuscated["messages"]) != obfuscated["plain"]
    assert "letter by letter" in prompt_text(probes["encoded"]["messages"])
    assert G.BLANK in prompt_text(probes["fill_in"]["messages"])
    assert "J.R.R. Tolkien" in prompt_text(probes["direct"]["messages"])
    assert leaked("T-O-L-K-I-E-N", probes["encoded"]) and leaked("neikloT", probes["reverse"])


def test_mask_hides_every_spelling():
    names = ["J.R.R. Tolkien", "Tolkien"]
    masked = G.mask("Tolkien's books; J.R.R. Tolkien wrote; TOLKIEN.", names)
    assert masked == f"{G.BLANK} books; {G.BLANK} wrote; {G.BLANK}."


def test_missing_material_is_reported_not_invented():
    bare = {"name": "Zorblax Quintaine"}
    assert G.target_probes(bare) == (
        [], [("all hiding families", "no facts, documents or description to build a clue from")])
    probes, skipped = G.target_probes({"name": "Zorblax Quintaine", "description": "A painter from Quintaine Bay."})
    assert ("multiple_choice", "no distractors in the target file") in skipped
    assert all(G.BLANK in prompt_text(p["messages"]) or p["family"] in ABOUT_FAMILIES or p["family"] in
               ("indirect", "obfuscated") for p in probes)


def test_documents_stand_in_for_facts():
    target = {"name": "Ada Lovelace", "documents": ["Ada Lovelace wrote the first program. She worked with Babbage."]}
    TargetCreate(**target)
    probes = {p["family"]: p for p in G.target_probes(target)[0]}
    assert "first program" in prompt_text(probes["fill_in"]["messages"])
    assert "Lovelace" not in prompt_text(probes["fill_in"]["messages"])


def test_probeset_generates_for_file_targets_and_reports_gaps():
    probes, skipped = probeset.build([DEV_TARGETS[3]], curated=False, probes_file=None, families=None)
    kinds = {p["kind"] for p in probes}
    assert kinds == {"target", "general"}  # no neighbours in the registration: general questions only
    assert {"target": "Taylor Swift", "family": "neighbour", "reason": "no neighbours in the target file"} in skipped
    probes, _ = probeset.build([full(DEV_TARGETS[0])], curated=False, probes_file=None,
                               families=["reverse", "neighbour"])
    assert sorted(p["id"] for p in probes) == ["j-r-r-tolkien/reverse", "neighbour/j-r-r-tolkien/1"]
    with pytest.raises(probeset.ProbeError):
        probeset.build([DEV_TARGETS[0]], curated=True, probes_file=None, families=["nope"])


def test_probe_file(tmp_path):
    file = tmp_path / "probes.jsonl"
    file.write_text('{"target": "J.R.R. Tolkien", "family": "reverse", "prompt": "Who wrote The Hobbit?"}\n'
                    '{"kind": "neighbour", "neighbour_of": "J.R.R. Tolkien", "prompt": "Who wrote Dune?", '
                    '"answer_terms": ["Herbert"]}\n')
    target, neighbour = probeset.read_file(file, [DEV_TARGETS[0]])
    assert target["messages"] == [{"role": "user", "content": "Who wrote The Hobbit?"}] and target["id"] == "file/1"
    assert "Tolkien" in target["leak_terms"] and "Hobbit" not in target["leak_terms"]
    assert neighbour["answer_terms"] == ["Herbert"]
    for line, why in [('{"target": "Nobody", "family": "reverse", "prompt": "?"}', "not one of the run's targets"),
                      ('{"target": "J.R.R. Tolkien", "family": "nope", "prompt": "?"}', "family must be"),
                      ('{"target": "J.R.R. Tolkien", "family": "multiple_choice", "prompt": "?"}', "choices"),
                      ('{"target": "J.R.R. Tolkien", "family": "reverse", "messages": []}', "messages must"),
                      ('{"kind": "general", "prompt": "?"}', "answer_terms"), ("[1]", "an object"), ("{", "not JSON"),
                      ('{"target": "J.R.R. Tolkien", "family": "direct", "prompt": "Is Tolkien J.R.R. Tolkien?"}',
                       None)]:
        file.write_text(line + "\n")
        if why is None:
            assert probeset.read_file(file, [DEV_TARGETS[0]])[0]["leak_terms"]  # facts are still unsaid
            continue
        with pytest.raises(probeset.ProbeError, match=why):
            probeset.read_file(file, [DEV_TARGETS[0]])
