"""`/admin/v1`: a target's probes, its forget report (`verify`) and the dry run of a draft target.

Same bearer token as the rest of the admin API (operators only: the answers name targets).
`verify` and `targets:dry-run` generate answers while the call waits (bounded by `max_probes`
and `max_tokens`; see `gateway.admin.verify`). `targets:dry-run` has no slash after `targets`,
so no `targets/{target_id}` route can capture it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.admin.api_router import _admin, _body, _json
from gateway.admin.probes import PROBES, DryRunBody, ProbesBody, VerifyBody, generated, probes_of, validated
from gateway.admin.verify import TargetVerifier

router = APIRouter(prefix="/admin/v1")


def _verifier(request: Request) -> TargetVerifier:
    return TargetVerifier.of(request.app.state)


@router.post("/targets:dry-run")
async def dry_run(request: Request) -> Response:
    """What a draft target would refuse and which neighbours it would hurt; nothing is stored."""
    _, actor = _admin(request)
    return _json(await _verifier(request).dry_run(await _body(request, DryRunBody), actor))


@router.post("/targets/{target_id}/probes")
async def store_probes(request: Request, target_id: str) -> Response:
    """Store probes with the target (replacing any stored before): given, or generated from it."""
    admin, actor = _admin(request)
    body = await _body(request, ProbesBody)
    target = await admin.get(target_id)
    skipped: list[dict] = []
    if body.probes is not None:
        probes = validated(body.probes, target)
    else:
        probes, skipped = generated(target, body.neighbours, body.distractors)
    target = await _verifier(request).store_probes(target_id, probes, actor)
    return _json({"object": "list", "target_id": target_id, "stored": True, "data": target.derived[PROBES],
                  "skipped": skipped})


@router.get("/targets/{target_id}/probes")
async def get_probes(request: Request, target_id: str) -> Response:
    """The stored probes; without any, those `verify` would generate (`stored: false`)."""
    admin, _ = _admin(request)
    probes, source = probes_of(await admin.get(target_id))
    return _json({"object": "list", "target_id": target_id, "stored": source == "stored", "data": probes})


@router.post("/targets/{target_id}/verify")
async def verify(request: Request, target_id: str) -> Response:
    """Run the target's probes through the live pipeline and the raw backend; store the report."""
    _, actor = _admin(request)
    body = await _body(request, VerifyBody) if await request.body() else VerifyBody()
    result, rows = await _verifier(request).verify(target_id, body, actor)
    return _json({"object": "target.verification", "target_id": target_id, **result, "probes": rows})
