"""HTTP route of the Responses API (`/v1/responses`); the logic is in `serving`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openai.responses.serving import create_response

router = APIRouter()


@router.post("/responses")
async def responses(request: Request) -> Response:
    return await create_response(request.app.state.serving, request)
