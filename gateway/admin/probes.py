"""Probes stored with a target, and the bodies of the verification endpoints.

Why probes live in `target.derived["probes"]`: the store schema stays as it is, every store
(SQLite, Redis) and every replica sees them through the one `TargetStore.update(derived=...)`
call, and they travel with the target (deleted with it). The probe format is exactly what
`unlearn-gateway eval --probes` reads (one object per line there, a JSON list here), validated by
the same code (`unlearn_eval.probeset`), so a file that works with the CLI works here and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import APIError
from gateway.store.models import MAX_PHRASE_CHARS, ForgetTarget, TargetCreate
from unlearn_eval import devset, generate
from unlearn_eval.families import NEIGHBOUR
from unlearn_eval.probeset import ProbeError, _normalised

PROBES = "probes"
"""Key of the stored probes in `ForgetTarget.derived` (a list: never mistaken for a method's job)."""
VERIFICATION = "verification"
"""Key of the last verification in `ForgetTarget.derived`."""
MAX_STORED_PROBES = 200
MAX_PROBES_BYTES = 1_000_000
"""Stored probes live in the target record, which every replica holds in memory: keep them small."""
DEFAULT_MAX_PROBES = 20
DEFAULT_MAX_TOKENS = 48
MAX_TOKENS_LIMIT = 256


class Neighbour(BaseModel):
    """A related question the gateway must still answer (the eval's `neighbours` item)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2_000)
    answers: list[str] = Field(min_length=1, max_length=16)


class ProbesBody(BaseModel):
    """`POST /admin/v1/targets/{id}/probes`: the probes themselves, or `generate: true`."""

    model_config = ConfigDict(extra="forbid")

    probes: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=MAX_STORED_PROBES)
    generate: bool = False
    neighbours: list[Neighbour] = Field(default_factory=list, max_length=64)
    distractors: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _one_source(self) -> ProbesBody:
        if (self.probes is None) == (not self.generate):
            raise ValueError("give either `probes` (a list of probe objects) or `generate: true`")
        if self.probes is not None and (self.neighbours or self.distractors):
            raise ValueError("`neighbours` and `distractors` only go with `generate: true`")
        if any(not d.strip() or len(d) > MAX_PHRASE_CHARS for d in self.distractors):
            raise ValueError(f"each distractor must be a non-blank name of at most {MAX_PHRASE_CHARS} characters")
        return self


class VerifyBody(BaseModel):
    """`POST /admin/v1/targets/{id}/verify`: how much model time the admin call may spend."""

    model_config = ConfigDict(extra="forbid")

    max_probes: int = Field(default=DEFAULT_MAX_PROBES, ge=1, le=MAX_STORED_PROBES)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT)


class DryRunBody(BaseModel):
    """`POST /admin/v1/targets:dry-run`: a target as it would be registered, and prompts to try."""

    model_config = ConfigDict(extra="forbid")

    target: TargetCreate
    prompts: list[str] = Field(default_factory=list, max_length=16)
    neighbours: list[Neighbour] = Field(default_factory=list, max_length=64)
    max_probes: int = Field(default=8, ge=0, le=64)
    """Neighbour probes to compare (the sample prompts always run)."""
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT)

    @model_validator(mode="after")
    def _prompts(self) -> DryRunBody:
        if any(not p.strip() or len(p) > 4_000 for p in self.prompts):
            raise ValueError("each prompt must be a non-blank string of at most 4000 characters")
        return self


def eval_target(target: ForgetTarget, **eval_only: Any) -> dict:
    """The target as `unlearn_eval` reads it: its registration plus eval-only fields (neighbours...)."""
    fields = target.model_dump(include={"name", "aliases", "description", "facts", "documents"})
    return {**fields, **{k: v for k, v in eval_only.items() if v}}


def generated(target: ForgetTarget, neighbours: Sequence[Neighbour] = (),
              distractors: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
    """(probes, [{family, reason}] not generated) from the registration, as the eval CLI makes them."""
    source = eval_target(target, neighbours=[n.model_dump() for n in neighbours], distractors=list(distractors))
    probes, skipped = generate.target_probes(source)
    neighbour_probes = generate.neighbour_probes(source)
    missing = [{"family": family, "reason": why} for family, why in skipped]
    if not neighbour_probes:
        missing.append({"family": NEIGHBOUR, "reason": "no neighbours given"})
    return probes + neighbour_probes, missing


def validated(raw_probes: list[dict[str, Any]], target: ForgetTarget) -> list[dict]:
    """Hand-written probes checked as `--probes` checks a file's; `target`/`neighbour_of` default to
    this target (the URL names it) and `id` to `probe/<n>`."""
    source = eval_target(target)
    by_name = {target.name: source}
    probes: list[dict] = []
    for index, raw in enumerate(raw_probes):
        raw = dict(raw)
        raw.setdefault("id", f"probe/{index + 1}")
        owner = "neighbour_of" if raw.get("kind") == NEIGHBOUR else "target" if raw.get("kind", "target") == "target" \
            else None
        if owner is not None:
            raw.setdefault(owner, target.name)
        try:
            _check_types(raw)
            probes.append(_normalised(raw, index + 1, by_name))
        except ProbeError as exc:  # "probe on line N: why" -> why, with the item as `param`
            raise APIError(400, str(exc).split(": ", 1)[-1], code="invalid_request",
                           param=f"probes[{index}]") from None
    if len(orjson.dumps(probes)) > MAX_PROBES_BYTES:
        raise APIError(400, f"The probes take more than {MAX_PROBES_BYTES} bytes; store fewer or shorter ones.",
                       code="invalid_request", param="probes")
    ids = [p["id"] for p in probes]
    duplicate = next((i for i, pid in enumerate(ids) if pid in ids[:i]), None)
    if duplicate is not None:
        raise APIError(400, f"Probe ids must be unique; '{ids[duplicate]}' repeats.", code="invalid_request",
                       param=f"probes[{duplicate}]")
    return probes


_TEXT_FIELDS = ("id", "kind", "family", "target", "neighbour_of", "prompt", "plain", "followup", "answer")
_TERM_FIELDS = ("leak_terms", "answer_terms", "gold")


def _check_types(raw: dict[str, Any]) -> None:
    """What `_normalised` takes on trust (it reads files the operator wrote): every field the scorer
    reads later has its type, so a stored probe can never fail a verification with a 500."""
    for name in _TEXT_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            raise ProbeError(f"probe: `{name}` must be a string")
    for name in _TERM_FIELDS:
        if name in raw and not (isinstance(raw[name], list) and all(isinstance(t, str) for t in raw[name])):
            raise ProbeError(f"probe: `{name}` must be a list of strings")
    choices = raw.get("choices", {})
    if not (isinstance(choices, dict) and all(isinstance(v, str) for v in choices.values())):
        raise ProbeError("probe: `choices` must map each option to the term naming it")


def probes_of(target: ForgetTarget) -> tuple[list[dict], str]:
    """(probes, "stored" | "generated"): the stored probes, else those the registration gives."""
    stored = target.derived.get(PROBES)
    if isinstance(stored, list) and stored:
        return stored, "stored"
    return generated(target)[0], "generated"


def utility_probes(probes: list[dict]) -> list[dict]:
    """The neighbour (and general) probes of a set; the dev set's general questions when it has none,
    so a verification or dry run always measures what the target costs other answers."""
    others = [p for p in probes if p["kind"] != "target"]
    return others or devset.general_probes()
