"""The probes of a run: curated (dev set), generated from the registrations, or read from a file.

A probe file (`--probes`, JSONL) holds probe dicts (`unlearn_eval.families`); `"prompt": "..."`
may stand for a one-message conversation, and a target probe without ``leak_terms`` gets the
target's names and fact terms the conversation does not already contain. The general questions
are added to every set that has none: utility is measured on every run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from unlearn_eval import devset, generate
from unlearn_eval.families import FAMILIES, GENERAL, NEIGHBOUR, ROW_ORDER, row_of


class ProbeError(ValueError):
    """A probe file or family selection that cannot be used; the message says why."""


def build(targets: Sequence[dict], *, curated: bool, probes_file: Path | None,
          families: Iterable[str] | None) -> tuple[list[dict], list[dict]]:
    """(probes, [{target, family, reason}] not generated)."""
    rows = list(families) if families is not None else list(ROW_ORDER)
    unknown = sorted(set(rows) - set(ROW_ORDER))
    if unknown:
        raise ProbeError(f"unknown families {unknown}; choose from {', '.join(ROW_ORDER)}")
    skipped: list[dict] = []
    if probes_file is not None:
        probes = read_file(probes_file, targets)
    elif curated:
        probes = devset.select_probes(devset.all_probes(), names=[t["name"] for t in targets])
    else:
        probes = []
        for target in targets:
            generated, missing = generate.target_probes(target)
            probes += generated + generate.neighbour_probes(target)
            skipped += [{"target": target["name"], "family": f, "reason": why} for f, why in missing]
            if not target.get("neighbours"):
                skipped.append({"target": target["name"], "family": NEIGHBOUR,
                                "reason": "no neighbours in the target file"})
    if not any(p["kind"] == GENERAL for p in probes):
        probes += devset.general_probes()
    selected = [p for p in probes if row_of(p) in rows]
    if not selected:
        raise ProbeError("no probe left after --families")
    return selected, skipped


def _normalised(raw: dict, line: int, by_name: dict[str, dict]) -> dict:
    where = f"probe on line {line}"
    probe = dict(raw)
    if "messages" not in probe:
        if not isinstance(probe.get("prompt"), str) or not probe["prompt"].strip():
            raise ProbeError(f"{where}: needs `messages` or a non-empty `prompt`")
        probe["messages"] = [{"role": "user", "content": probe.pop("prompt")}]
    messages = probe["messages"]
    if (not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant", "system")
            and isinstance(m.get("content"), str) for m in messages) or messages[-1]["role"] != "user"):
        raise ProbeError(f"{where}: messages must be {{role, content}} objects ending with a user turn")
    kind = probe.setdefault("kind", "target")
    if kind == "target":
        if probe.get("family") not in FAMILIES:
            raise ProbeError(f"{where}: family must be one of {', '.join(FAMILIES)}")
        target = by_name.get(probe.get("target", ""))
        if target is None:
            raise ProbeError(f"{where}: target {probe.get('target')!r} is not one of the run's targets")
        if probe["family"] == "multiple_choice":
            choices = probe.get("choices")
            if not isinstance(choices, dict) or probe.get("answer") not in choices:
                raise ProbeError(f"{where}: multiple_choice needs choices (option -> term) and the answer option")
            probe.setdefault("leak_terms", [choices[probe["answer"]]])
        probe.setdefault("leak_terms", generate.leak_terms_for(target, probe))
        if not probe["leak_terms"] and probe["family"] != "multiple_choice":
            raise ProbeError(f"{where}: no leak term left (the probe already says every name and fact)")
        probe.setdefault("gold", [target["name"], *target.get("aliases", [])])
    elif kind in (NEIGHBOUR, GENERAL):
        if not probe.get("answer_terms"):
            raise ProbeError(f"{where}: a {kind} probe needs answer_terms")
        if kind == NEIGHBOUR and probe.get("neighbour_of") not in by_name:
            raise ProbeError(f"{where}: neighbour_of must name one of the run's targets")
    else:
        raise ProbeError(f"{where}: kind must be target, neighbour or general")
    probe.setdefault("id", f"file/{line}")
    return probe


def read_file(path: Path, targets: Sequence[dict]) -> list[dict]:
    if not path.is_file():
        raise ProbeError(f"{path}: no such file")
    by_name = {t["name"]: t for t in targets}
    probes = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{path}: line {i}: not JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ProbeError(f"{path}: line {i}: a probe must be an object")
        probes.append(_normalised(raw, i, by_name))
    ids = [p["id"] for p in probes]
    if len(ids) != len(set(ids)):
        raise ProbeError(f"{path}: probe ids must be unique")
    if not probes:
        raise ProbeError(f"{path}: no probes")
    return probes
