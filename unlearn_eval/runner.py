"""Every probe through every configuration, resumable: answers.jsonl is the run's memory.

Why resumable: a full run decodes thousands of answers; an interrupted or extended run (one more
configuration, one more target) must not ask again what it already knows. Each answer is keyed by
what it depends on -- the configuration's identity (URL or embedded settings, model, targets),
the probe's fingerprint, max_tokens and temperature -- so a changed probe or setting is asked
again and everything else is reused. Answers are appended line by line as they arrive, so
Ctrl-C loses at most the answer in flight.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from unlearn_eval.client import Endpoint, ask, open_client
from unlearn_eval.families import fingerprint, owner_of, row_of

ANSWERS_FILE = "answers.jsonl"


@dataclass
class Plan:
    """One configuration to run: its name, what its answers depend on, and how to reach it."""

    name: str
    identity: dict
    refusal_text: str
    open: Callable[[], AbstractContextManager[Endpoint]]


def _digest(data: object) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class AnswerLog:
    """answers.jsonl of an output directory: load what is there, append what is new."""

    def __init__(self, path: Path):
        self.path = path
        self._by_key: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a crash: asked again
                        continue
                    self._by_key[record["key"]] = record

    @staticmethod
    def key(plan: Plan, probe: dict, max_tokens: int, temperature: float, targets_digest: str) -> str:
        return _digest([plan.identity, targets_digest, fingerprint(probe), probe["id"], max_tokens, temperature])

    def get(self, key: str) -> dict | None:
        return self._by_key.get(key)

    def add(self, record: dict) -> None:
        self._by_key[record["key"]] = record
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_plans(plans: Iterable[Plan], probes: list[dict], log: AnswerLog, *, targets: list[dict], max_tokens: int,
              temperature: float, timeout: float, console_log: Callable[[str], None],
              progress: Progress) -> dict[str, dict[str, dict]]:
    """{configuration: {probe id: record}}; only missing answers are asked."""
    targets_digest = _digest(targets)
    results: dict[str, dict[str, dict]] = {}
    for plan in plans:
        keys = {p["id"]: AnswerLog.key(plan, p, max_tokens, temperature, targets_digest) for p in probes}
        results[plan.name] = {pid: r for pid, k in keys.items() if (r := log.get(k)) is not None}
        pending = [p for p in probes if p["id"] not in results[plan.name]]
        task = progress.add_task(plan.name, total=len(probes), completed=len(probes) - len(pending))
        if not pending:
            console_log(f"[{plan.name}] all {len(probes)} answers reused from {log.path}")
            continue
        with plan.open() as endpoint, open_client(endpoint, timeout) as http:
            for probe in pending:
                record = ask(http, endpoint, probe, max_tokens=max_tokens, temperature=temperature, follow_up=True)
                record.update(key=keys[probe["id"]], config=plan.name, id=probe["id"], kind=probe["kind"],
                              row=row_of(probe), target=owner_of(probe))
                log.add(record)
                results[plan.name][probe["id"]] = record
                progress.advance(task)
    return results


def new_progress(console) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
