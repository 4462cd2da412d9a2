"""Where the targets of a run come from: the shipped dev set, a JSONL/CSV file, or a deployment.

A target is a dict with the fields of `gateway.store.models.TargetCreate` (validated here, so a
bad file fails before any model time is spent) plus the eval-only ``neighbours`` and
``distractors`` (see `unlearn_eval.generate`), which are never sent to the admin API.

CSV: a header row naming the columns; list cells (``aliases``, ``facts``, ``documents``,
``distractors``) separate items with ``|``; ``neighbours`` items are ``question => answer1 ;
answer2`` separated by ``|``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
from pydantic import ValidationError

from gateway.store.models import TargetCreate
from unlearn_eval import devset

EVAL_ONLY = ("neighbours", "distractors")
_LIST_COLUMNS = ("aliases", "facts", "documents", "distractors")


class TargetError(ValueError):
    """A target source that cannot be read; the message says which and why."""


def registration(target: dict) -> dict:
    """The admin API body of a target (eval-only fields dropped)."""
    return {k: v for k, v in target.items() if k not in EVAL_ONLY}


def _validated(raw: dict, where: str) -> dict:
    if not isinstance(raw, dict):
        raise TargetError(f"{where}: a target must be an object")
    try:
        TargetCreate(**registration(raw))
    except ValidationError as exc:
        raise TargetError(f"{where}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    neighbours = raw.get("neighbours", [])
    if not isinstance(neighbours, list) or not all(
            isinstance(n, dict) and isinstance(n.get("question"), str) and n.get("answers") for n in neighbours):
        raise TargetError(f"{where}: neighbours must be a list of {{question, answers: [...]}}")
    if not all(isinstance(d, str) for d in raw.get("distractors", [])):
        raise TargetError(f"{where}: distractors must be a list of names")
    return dict(raw)


def _split(cell: str) -> list[str]:
    return [v.strip() for v in cell.split("|") if v.strip()]


def _csv_row(row: dict) -> dict:
    out: dict = {k: v for k, v in row.items() if k and v and k not in _LIST_COLUMNS and k != "neighbours"}
    for column in _LIST_COLUMNS:
        if row.get(column):
            out[column] = _split(row[column])
    if row.get("neighbours"):
        out["neighbours"] = []
        for item in _split(row["neighbours"]):
            question, _, answers = item.partition("=>")
            out["neighbours"].append({"question": question.strip(),
                                      "answers": [a.strip() for a in answers.split(";") if a.strip()]})
    return out


def from_file(path: Path) -> list[dict]:
    """Targets of a .jsonl / .json (a list) / .csv file."""
    if not path.is_file():
        raise TargetError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = [_csv_row(r) for r in csv.DictReader(text.splitlines())]
    elif path.suffix.lower() == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TargetError(f"{path}: a .json target file holds a list of targets")
    else:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise TargetError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
    if not rows:
        raise TargetError(f"{path}: no targets")
    return [_validated(r, f"{path} target {i}") for i, r in enumerate(rows, 1)]


def from_dev(count: int | None) -> list[dict]:
    """The first `count` dev targets (all: None)."""
    if count is not None and not 1 <= count <= len(devset.TARGETS):
        raise TargetError(f"dev:{count}: the dev set has {len(devset.TARGETS)} targets")
    return [dict(t) for t in devset.TARGETS[:count]]


def admin_headers(token: str | None) -> dict[str, str]:
    headers = {"X-Unlearn-Actor": "unlearn-gateway eval"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def from_deployment(admin_url: str, token: str | None, tenant: str | None = None) -> list[dict]:
    """The active targets registered in a running gateway (admin API)."""
    params = {"tenant": tenant} if tenant else None
    try:
        resp = httpx.get(f"{admin_url}/admin/v1/targets", params=params, headers=admin_headers(token), timeout=30)
    except httpx.HTTPError as exc:
        raise TargetError(f"cannot reach the admin API at {admin_url}: {exc}") from None
    if resp.status_code != 200:
        raise TargetError(f"admin API {admin_url}: {resp.status_code} {resp.text[:200]}")
    fields = ("name", "aliases", "description", "facts", "documents", "tenant")
    targets = [{k: t[k] for k in fields if k in t} for t in resp.json()["data"] if t.get("status") == "active"]
    if not targets:
        raise TargetError(f"admin API {admin_url}: no active targets")
    return targets


def register(client: httpx.Client, targets: list[dict], token: str | None,
             methods: list[str] | None = None) -> list[str]:
    """Register `targets` through the admin API of `client`'s gateway; their ids."""
    ids = []
    for target in targets:
        body = registration(target) | ({"methods": methods} if methods else {})
        resp = client.post("/admin/v1/targets", json=body, headers=admin_headers(token))
        if resp.status_code != 201:
            raise TargetError(f"registering {target['name']!r} failed: {resp.status_code} {resp.text[:300]}")
        ids.append(resp.json()["id"])
    return ids


def resolve(spec: str, *, admin_url: str | None, token: str | None) -> tuple[list[dict], bool]:
    """(targets, curated) for `--targets`: "dev", "dev:N", "deployment" or a file path.

    `curated`: the dev set's hand-made probes apply (otherwise probes are generated).
    """
    if spec == "dev" or spec.startswith("dev:"):
        count = None
        if spec != "dev":
            try:
                count = int(spec[4:])
            except ValueError:
                raise TargetError(f"--targets {spec}: expected dev:N") from None
        return from_dev(count), True
    if spec == "deployment":
        if not admin_url:
            raise TargetError("--targets deployment needs --admin-url (or --base-url) and --admin-token")
        return from_deployment(admin_url, token), False
    return from_file(Path(spec)), False
