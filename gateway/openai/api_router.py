"""HTTP routes of the OpenAI-compatible API; logic lives in the endpoint `serving` modules."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openai.chat.serving import create_chat_completion
from gateway.openai.completions.serving import create_completion
from gateway.openai.responses.api_router import router as responses_router
from gateway.openai.serving import OpenAIServing

router = APIRouter(prefix="/v1")
router.include_router(responses_router)


def _serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await create_chat_completion(_serving(request), request)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await create_completion(_serving(request), request)


@router.get("/models")
async def models(request: Request) -> dict:
    serving = _serving(request)
    serving.auth.tenant(request)
    created = int(request.app.state.started_at or time.time())
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "unlearn-gateway"}
                 for m in serving.backend.model_ids],
    }
