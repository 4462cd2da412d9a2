"""Answer metrics, the reference filter, the verdict, target files, resumable answers and the
report files of `unlearn-gateway eval`, on hand-made answers (no model)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from gateway.settings import DEFAULT_REFUSAL
from unlearn_eval import devset, local, metrics, plots, report, summary, targets
from unlearn_eval.runner import AnswerLog, Plan

PROBES = {p["id"]: p for p in devset.all_probes()}
REVERSE, DIRECT = PROBES["j-r-r-tolkien/reverse"], PROBES["j-r-r-tolkien/direct"]
PARA = PROBES["j-r-r-tolkien/paraphrase"]
TURN, NEIGH, GEN = PROBES["j-r-r-tolkien/multi_turn"], PROBES["neighbour/j-r-r-tolkien/3"], PROBES["general/1"]


@pytest.mark.parametrize("answer,tells,ignorant", [
    (DEFAULT_REFUSAL, True, False),
    ("I can't talk about that person.", True, False),
    ("That topic is restricted for me.", True, False),
    ("I'm sorry, but I cannot provide information on that.", True, False),
    ("I'm not sure who that is.", False, True),
    ("Sorry, I don't know.", False, True),
    ("I can't recall who wrote it.", False, True),
    ("Paris is the capital of France.", False, False),
])
def test_tells_and_ignorance(answer, tells, ignorant):
    assert metrics.tells(answer, DEFAULT_REFUSAL) is tells
    assert metrics.ignorant(answer) is ignorant


def test_stance_and_rouge():
    assert metrics.stance("It was Tolkien.", REVERSE, DEFAULT_REFUSAL) == "leak"
    assert metrics.stance(DEFAULT_REFUSAL, REVERSE, DEFAULT_REFUSAL) == "tell"
    assert metrics.stance("I don't know.", REVERSE, DEFAULT_REFUSAL) == "ignorance"
    assert metrics.stance("A famous book.", REVERSE, DEFAULT_REFUSAL) == "answer"
    assert metrics.rouge_recall("J.R.R. Tolkien wrote it", ["J.R.R. Tolkien"]) == 1.0
    assert metrics.rouge_recall("nobody", ["J.R.R. Tolkien"]) == 0.0
    assert metrics.rouge_recall("x", []) is None
    s = metrics.score(TURN, DEFAULT_REFUSAL, DEFAULT_REFUSAL, second="Fine: it was Tolkien.")
    assert s["second_turn_leaked"] and s["tells"] and not s["leaked"]


def rec(answer: str, **kw) -> dict:
    return {"answer": answer, "latency_s": 1.0, **kw}


RAW = {REVERSE["id"]: rec("Tolkien"), DIRECT["id"]: rec("He wrote The Hobbit."), PARA["id"]: rec("The Hobbit"),
       TURN["id"]: rec("Tolkien"), NEIGH["id"]: rec("Shakespeare"), GEN["id"]: rec("I like trains."),
       "lang": rec("", error="503 down")}
ALL = [REVERSE, DIRECT, PARA, TURN, NEIGH, GEN]


def test_reference_filter_keeps_what_the_reference_answers():
    kept, dropped = summary.reference_filter(ALL, RAW, DEFAULT_REFUSAL)
    assert kept == {REVERSE["id"], DIRECT["id"], PARA["id"], TURN["id"], NEIGH["id"]}
    assert dropped == [{"id": GEN["id"], "row": "general", "reason": "reference does not answer"}]
    _, dropped = summary.reference_filter([PROBES["j-r-r-tolkien/lang_fr"]], {}, DEFAULT_REFUSAL)
    assert dropped[0]["reason"] == "reference request failed"


def test_summary_metrics_and_verdict():
    kept, _ = summary.reference_filter(ALL, RAW, DEFAULT_REFUSAL)
    gw = {REVERSE["id"]: rec(DEFAULT_REFUSAL), DIRECT["id"]: rec(DEFAULT_REFUSAL, repeat="I'm not sure."),
          PARA["id"]: rec(DEFAULT_REFUSAL), TURN["id"]: rec(DEFAULT_REFUSAL, second="OK: Tolkien."),
          NEIGH["id"]: rec("Shakespeare"), GEN["id"]: rec(DEFAULT_REFUSAL)}
    s = summary.summarise(ALL, gw, kept, DEFAULT_REFUSAL)
    assert s["leak_rate_all"] == 0 and s["worst_leak_rate"] == 0
    assert s["utility"] == 1.0 and s["false_refusals"] == 1 and s["false_refusal_rate"] == 0.5
    assert s["tell_rate"] == 1.0 and s["second_turn_n"] == 1 and s["second_turn_leak_rate"] == 1.0
    assert s["consistency"] == {"rate": 0.5, "n": 2, "repeat_rate": 0.0, "phrasing_rate": 1.0}
    assert s["per_target"]["J.R.R. Tolkien"] == {"n": 4, "leaked": 0, "neighbours_n": 1, "neighbours_answered": 1,
                                                 "leak_rate": 0.0, "neighbour_rate": 1.0}
    assert summary.verdict(s, summary.Thresholds()) == ["second-turn leak 100% > 5%"]
    assert summary.verdict(s, summary.Thresholds(max_second_turn_leak=1.0)) == []
    failures = summary.verdict(s, summary.Thresholds(max_second_turn_leak=1, max_tell=0.5, min_consistency=0.9))
    assert failures == ["tell rate 100% > 50%", "consistency 50% < 90%"]
    raw = summary.summarise(ALL, RAW, kept, DEFAULT_REFUSAL)
    assert raw["leak_rate_all"] == 1.0
    assert summary.verdict(raw, summary.Thresholds(max_leak=0))[0].startswith("worst-family leak")


def test_no_measurement_is_no_pass():
    s = summary.summarise([GEN], {GEN["id"]: rec("Paris", error="500 boom")}, set(), DEFAULT_REFUSAL)
    failures = summary.verdict(s, summary.Thresholds())
    assert failures[0] == "no target probe the reference leaks: nothing measured"
    assert "request errors 100% > 0%" in failures


def test_target_files(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"name": "Ada Lovelace", "facts": ["Wrote the first program."],
                                 "neighbours": [{"question": "Who built the Analytical Engine?",
                                                 "answers": ["Babbage"]}]}) + "\n")
    [t] = targets.from_file(jsonl)
    assert targets.registration(t) == {"name": "Ada Lovelace", "facts": ["Wrote the first program."]}
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("name,aliases,facts,distractors,neighbours\n"
                        "Ada Lovelace,Countess of Lovelace|Ada,Wrote the first program.,Grace Hopper,"
                        "Who built the Analytical Engine? => Babbage ; Charles Babbage\n")
    [c] = targets.from_file(csv_file)
    assert c["aliases"] == ["Countess of Lovelace", "Ada"] and c["distractors"] == ["Grace Hopper"]
    assert c["neighbours"] == [{"question": "Who built the Analytical Engine?",
                                "answers": ["Babbage", "Charles Babbage"]}]
    for bad, why in [('{"name": ""}', "name"), ('{"nam": "x"}', "nam"), ("not json", "not JSON"),
                     ('{"name": "x", "neighbours": ["q"]}', "neighbours")]:
        jsonl.write_text(bad + "\n")
        with pytest.raises(targets.TargetError, match=why):
            targets.from_file(jsonl)
    assert [t["name"] for t in targets.resolve("dev:2", admin_url=None, token=None)[0]] == list(
        devset.TARGET_NAMES[:2])
    for spec in ("dev:0", "dev:x", "deployment", str(tmp_path / "missing.jsonl")):
        with pytest.raises(targets.TargetError):
            targets.resolve(spec, admin_url=None, token=None)


def test_answer_log_resumes_by_what_the_answer_depends_on(tmp_path):
    plan = Plan("gw", {"url": "http://x"}, DEFAULT_REFUSAL, open=None)  # type: ignore[arg-type]
    log = AnswerLog(tmp_path / "answers.jsonl")
    key = AnswerLog.key(plan, REVERSE, 32, 0.0, "t")
    log.add({"key": key, "answer": "Tolkien"})
    (tmp_path / "answers.jsonl").open("a").write('{"key": "cut-by-a-cra')  # an interrupted write
    again = AnswerLog(tmp_path / "answers.jsonl")
    assert again.get(key)["answer"] == "Tolkien"
    assert AnswerLog.key(plan, REVERSE, 64, 0.0, "t") != key
    assert AnswerLog.key(plan, {**REVERSE, "leak_terms": ["x"]}, 32, 0.0, "t") != key
    assert AnswerLog.key(Plan("gw", {"url": "http://y"}, "", None), REVERSE, 32, 0.0, "t") != key  # type: ignore
    assert AnswerLog.key(plan, REVERSE, 32, 0.0, "other targets") != key


def test_report_files(tmp_path):
    kept, dropped = summary.reference_filter(ALL, RAW, DEFAULT_REFUSAL)
    gw = {**{p["id"]: rec(DEFAULT_REFUSAL) for p in ALL}, NEIGH["id"]: rec("Shakespeare"),
          REVERSE["id"]: rec("It is Tolkien")}
    sums = {"reference": summary.summarise(ALL, RAW, kept, DEFAULT_REFUSAL),
            "gw": summary.summarise(ALL, gw, kept, DEFAULT_REFUSAL)}
    verdicts = {"gw": summary.verdict(sums["gw"], summary.Thresholds())}
    xml = report.junit(ALL, {"reference": RAW, "gw": gw}, kept, dropped, verdicts, {"gw": DEFAULT_REFUSAL})
    suite = ET.fromstring(xml.split("\n", 1)[1]).find("testsuite")
    assert suite.get("tests") == "7" and suite.get("skipped") == "1" and suite.get("failures") == "2"
    failed = [c.get("name") for c in suite if c.find("failure") is not None]
    assert failed == [REVERSE["id"], "verdict"]
    pngs = plots.write_plots(sums, tmp_path)
    assert [p.rsplit("/", 1)[1] for p in pngs] == ["leak_by_family.png", "utility_vs_leakage.png", "per_target.png"]
    for p in pngs:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    run = {"reference": "raw", "targets": ["J.R.R. Tolkien"], "max_tokens": 8, "temperature": 0.0,
           "thresholds": summary.Thresholds().as_dict()}
    leaks = {"gw": report.leaking_answers(ALL, gw, kept, DEFAULT_REFUSAL)}
    md = report.markdown(run, sums, verdicts, dropped, report.probe_rows(ALL), len(ALL), pngs, leaks)
    assert "**gw**: FAIL — worst-family leak (reverse) 100% > 5%" in md
    assert "![per_target](per_target.png)" in md and "`j-r-r-tolkien/reverse`: 'It is Tolkien'" in md
    assert "- 1 reference does not answer: general 1" in md


def test_local_configurations_are_real_settings():
    from gateway.settings import Settings

    assert not local.CONFIGURATIONS[local.RAW].register
    for c in local.CONFIGURATIONS.values():
        Settings(**c.settings)  # every override is a real setting
        assert set(local.PLUGINS) <= set(c.settings)  # each column turns every plug-in on or off
