"""`/admin/v1`: manage forget targets and read the audit log. Bearer-token protected."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gateway.admin.service import TargetAdmin
from gateway.errors import APIError, error_payload, validation_error
from gateway.store.models import TENANT_PATTERN, TargetCreate, TargetPatch

MAX_BATCH = 10_000
"""Targets per `targets:batch` call (all stored in one transaction)."""

router = APIRouter(prefix="/admin/v1")


def _admin(request: Request) -> tuple[TargetAdmin, str]:
    actor = request.app.state.admin_auth.actor(request)
    return request.app.state.target_admin, actor


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def _json_object(request: Request) -> dict:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


async def _body(request: Request, model: type[BaseModel]):
    try:
        return model.model_validate(await _json_object(request))
    except ValidationError as exc:
        raise validation_error(exc) from None


@router.post("/targets")
async def create_target(request: Request) -> Response:
    admin, actor = _admin(request)
    target = await admin.create(await _body(request, TargetCreate), actor)
    return _json(target.public(), status=201)


@router.post("/targets:batch")
async def create_targets(request: Request) -> Response:
    """Register up to `MAX_BATCH` targets at once: all of them, or (any item invalid) none.

    A 400 lists every invalid item in `error.errors` as {index, param, message}.
    """
    admin, actor = _admin(request)
    data = await _json_object(request)
    items = data.get("targets")
    if set(data) != {"targets"} or not isinstance(items, list) or not items:
        raise APIError(400, "The body must be {\"targets\": [target, ...]} with at least one target.",
                       code="invalid_request", param="targets")
    if len(items) > MAX_BATCH:
        raise APIError(400, f"At most {MAX_BATCH} targets per batch; split it.", code="invalid_request",
                       param="targets")
    specs: list[TargetCreate] = []
    errors: list[dict] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise APIError(400, "Each target must be a JSON object.", code="invalid_request")
            spec = TargetCreate.model_validate(item)
            admin.resolve_methods(spec.methods)  # unknown methods are an item error too
            specs.append(spec)
        except ValidationError as exc:
            err = validation_error(exc)
            errors.append({"index": index, "param": err.param, "message": err.message})
        except APIError as exc:
            errors.append({"index": index, "param": exc.param, "message": exc.message})
    if errors:
        payload = error_payload(400, f"{len(errors)} of {len(items)} targets are invalid; none was stored.",
                                code="invalid_request", param=f"targets[{errors[0]['index']}]")
        payload["error"]["errors"] = errors
        return _json(payload, status=400)
    created = await admin.create_many(specs, actor)
    return _json({"object": "list", "data": [t.public() for t in created]}, status=201)


@router.post("/store:accept")
async def accept_store(request: Request) -> Response:
    """After a store reset or restore (every replica fails closed): accept the store as it is now."""
    admin, _ = _admin(request)
    state = await admin.accept_store()
    return _json({"object": "store", "epoch": state.epoch, "version": state.version, "accepted": True})


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
