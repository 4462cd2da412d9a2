"""What a run leaves in its output directory besides the answers: summary.json, report.md,
junit.xml (one test case per probe and one per verdict, for CI) and the console table."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from unlearn_eval.families import FAMILIES, GENERAL, NEIGHBOUR, ROW_ORDER, row_of
from unlearn_eval.metrics import score

_LABEL = {NEIGHBOUR: "neighbours", GENERAL: "general"}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def _cell(summary: dict, row: str) -> str:
    cell = summary["rows"][row]
    if not cell["n"]:
        return "—"
    if row in FAMILIES:
        return f"leak {pct(cell['leak_rate'])} ({cell['leaked']}/{cell['n']})"
    return f"ans {pct(cell['answer_rate'])} ({cell['answered']}/{cell['n']})"


def metric_rows(summaries: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """The table below the per-family rows: one (label, cells) per headline metric."""
    s = summaries.values()
    return [
        ("all target probes: leak", [pct(x["leak_rate_all"]) for x in s]),
        ("worst family", [f"{pct(x['worst_leak_rate'])} {x['worst_family'] or ''}" for x in s]),
        ("utility vs reference", [pct(x["utility"]) for x in s]),
        ("false refusals", [f"{pct(x['false_refusal_rate'])} ({x['false_refusals']}/{x['benign_n']})" for x in s]),
        ("tell rate", [pct(x["tell_rate"]) for x in s]),
        ("ignorance answers", [pct(x["ignorance_rate"]) for x in s]),
        ("selective refusal gap", [pct(x["selective_refusal_gap"]) for x in s]),
        ("consistency", [f"{pct(x['consistency']['rate'])} (n={x['consistency']['n']})" for x in s]),
        ("second-turn leak", [f"{pct(x['second_turn_leak_rate'])} (n={x['second_turn_n']})" for x in s]),
        ("ROUGE-L recall, target", [_num(x["rouge_l_target"]) for x in s]),
        ("ROUGE-L recall, neighbours", [_num(x["rouge_l_neighbour"]) for x in s]),
        ("mean latency (s)", [_num(x["mean_latency_s"]) for x in s]),
        ("LLM calls / request", [_num(x["llm_calls_per_request"]) for x in s]),
        ("request errors", [str(x["errors"]) for x in s]),
    ]


def probe_rows(probes: Sequence[dict]) -> list[str]:
    """The table rows a probe set has, in table order."""
    present = {row_of(p) for p in probes}
    return [r for r in ROW_ORDER if r in present]


def console_table(summaries: dict[str, dict], rows: Sequence[str]) -> Table:
    table = Table(title="Leak rate per attack family (lower is better); neighbours / general: answer rate",
                  title_justify="left")
    table.add_column("row")
    for name in summaries:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(_LABEL.get(row, row), *[_cell(s, row) for s in summaries.values()],
                      end_section=row == rows[-1])
    for label, cells in metric_rows(summaries):
        table.add_row(label, *cells)
    return table


def dropped_lines(dropped: Sequence[dict], total: int) -> list[str]:
    """'kept K of N probes', then one line per reason with its count per row."""
    lines = [f"Reference filter: kept {total - len(dropped)} of {total} probes, dropped {len(dropped)}."]
    by_reason: dict[str, Counter] = {}
    for d in dropped:
        by_reason.setdefault(d["reason"], Counter())[d["row"]] += 1
    for reason, rows in by_reason.items():
        detail = ", ".join(f"{_LABEL.get(r, r)} {rows[r]}" for r in ROW_ORDER if r in rows)
        lines.append(f"- {sum(rows.values())} {reason}: {detail}")
    return lines


def markdown(run: dict, summaries: dict[str, dict], verdicts: dict[str, list[str]], dropped: Sequence[dict],
             rows: Sequence[str], total: int, plots: Sequence[str], leaks: dict[str, list[tuple[str, str]]]) -> str:
    names = list(summaries)
    head = "| row | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    body = "".join(f"| {_LABEL.get(r, r)} | " + " | ".join(_cell(summaries[n], r) for n in names) + " |\n"
                   for r in rows)
    body += "".join(f"| {label} | " + " | ".join(cells) + " |\n" for label, cells in metric_rows(summaries))
    lines = [
        "# Unlearning evaluation", "",
        f"Reference: `{run['reference']}`; configurations under test: {', '.join(f'`{n}`' for n in verdicts)}; "
        f"targets: {run['targets']}; max_tokens {run['max_tokens']}, temperature {run['temperature']}.", "",
        "## Verdict", "",
    ]
    for name, failures in verdicts.items():
        lines.append(f"- **{name}**: " + ("PASS" if not failures else "FAIL — " + "; ".join(failures)))
    lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in run["thresholds"].items()), "",
              "## Probes", "", *dropped_lines(dropped, total),
              *[f"- not generated for {s['target']}: {s['family']} ({s['reason']})"
                for s in run.get("not_generated", [])],
              "", "## Results", "", head + body]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    for name, items in leaks.items():
        if items:
            lines += ["", f"## Leaks of `{name}` ({len(items)})", ""]
            lines += [f"- `{pid}`: {answer!r}" for pid, answer in items[:50]]
    return "\n".join(lines) + "\n"


def junit(probes: Sequence[dict], results: dict[str, dict[str, dict]], kept: set[str], dropped: Sequence[dict],
          verdicts: dict[str, list[str]], refusal_texts: dict[str, str]) -> str:
    """One <testsuite> per configuration under test: a case per probe (leak / lost answer fails,
    a probe the reference does not answer is skipped) and a `verdict` case."""
    why = {d["id"]: d["reason"] for d in dropped}
    suites = ET.Element("testsuites", name="unlearn-gateway eval")
    for name, failures in verdicts.items():
        suite = ET.SubElement(suites, "testsuite", name=name)
        counts = Counter()
        for probe in probes:
            record = results[name].get(probe["id"])
            case = ET.SubElement(suite, "testcase", classname=f"{name}.{row_of(probe)}", name=probe["id"])
            counts["tests"] += 1
            if probe["id"] not in kept:
                ET.SubElement(case, "skipped", message=why.get(probe["id"], "not run"))
                counts["skipped"] += 1
                continue
            s = score(probe, record["answer"], refusal_texts[name])
            lost = s.get("leaked") or (probe["kind"] != "target" and not s["answered"])
            if record.get("error") or lost:
                message = record.get("error") or ("leaked" if probe["kind"] == "target" else "not answered")
                ET.SubElement(case, "failure", message=message).text = record["answer"]
                counts["failures"] += 1
        case = ET.SubElement(suite, "testcase", classname=f"{name}.verdict", name="verdict")
        counts["tests"] += 1
        if failures:
            ET.SubElement(case, "failure", message="; ".join(failures))
            counts["failures"] += 1
        for key in ("tests", "failures", "skipped"):
            suite.set(key, str(counts[key]))
        suite.set("errors", "0")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def leaking_answers(probes: Sequence[dict], records: dict[str, dict], kept: set[str],
                    refusal_text: str) -> list[tuple[str, str]]:
    return [(p["id"], " ".join(records[p["id"]]["answer"].split())[:160]) for p in probes
            if p["kind"] == "target" and p["id"] in kept
            and score(p, records[p["id"]]["answer"], refusal_text)["leaked"]]


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def console_verdicts(verdicts: dict[str, list[str]]) -> list[str]:
    return [f"  {name:<18} " + ("[green]PASS[/green]" if not f else "[red]FAIL[/red]  " + escape("; ".join(f)))
            for name, f in verdicts.items()]
