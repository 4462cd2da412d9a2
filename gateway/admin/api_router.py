"""`/admin/v1`: manage forget targets and read the audit log. Bearer-token protected."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gateway.admin.service import TargetAdmin
from gateway.errors import APIError, validation_error
from gateway.store.models import TENANT_PATTERN, TargetCreate, TargetPatch

router = APIRouter(prefix="/admin/v1")


def _admin(request: Request) -> tuple[TargetAdmin, str]:
    actor = request.app.state.admin_auth.actor(request)
    return request.app.state.target_admin, actor


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[BaseModel]):
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


@router.post("/targets")
async def create_target(request: Request) -> Response:
    admin, actor = _admin(request)
    target = await admin.create(await _body(request, TargetCreate), actor)
    return _json(target.public(), status=201)


@router.get("/targets")
async def list_targets(request: Request, tenant: str | None = Query(None, pattern=TENANT_PATTERN)) -> Response:
    admin, _ = _admin(request)
    return _json({"object": "list", "data": [t.public() for t in await admin.list(tenant)]})


@router.get("/targets/{target_id}")
async def get_target(request: Request, target_id: str) -> Response:
    admin, _ = _admin(request)
    return _json((await admin.get(target_id)).public())


@router.patch("/targets/{target_id}")
async def update_target(request: Request, target_id: str) -> Response:
    admin, actor = _admin(request)
    target = await admin.update(target_id, await _body(request, TargetPatch), actor)
    return _json(target.public())


@router.delete("/targets/{target_id}")
async def delete_target(request: Request, target_id: str) -> Response:
    admin, actor = _admin(request)
    await admin.delete(target_id, actor)
    return _json({"id": target_id, "object": "target", "deleted": True})


@router.get("/audit")
async def audit(request: Request, tenant: str | None = Query(None, pattern=TENANT_PATTERN),
                limit: int = Query(100, ge=1, le=1000)) -> Response:
    admin, _ = _admin(request)
    return _json({"object": "list", "data": [e.model_dump(mode="json") for e in await admin.audit(tenant, limit)]})
