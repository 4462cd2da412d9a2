"""`/admin/v1/canary`: the leakage canary's last run, and a run on demand. Admin token only: the
report names target ids."""

from __future__ import annotations

from dataclasses import asdict

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

router = APIRouter(prefix="/admin/v1")


@router.get("/canary")
async def canary_report(request: Request) -> Response:
    request.app.state.admin_auth.actor(request)
    return Response(orjson.dumps(request.app.state.canary.report()), media_type="application/json")


@router.post("/canary:run")
async def canary_run(request: Request) -> Response:
    """Run the canary now (the store must be readable: 503 otherwise) and return its report."""
    request.app.state.admin_auth.actor(request)
    report = await request.app.state.canary.run_once()
    return Response(orjson.dumps(asdict(report)), media_type="application/json")
