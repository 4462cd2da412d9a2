"""OpenAI-format errors: every failure a client sees is `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.backends.base import BackendError
from gateway.store.base import StoreUnavailable

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
RETRY_AFTER_SECONDS = 1
"""A full queue drains in about a token's time per sequence: one second is a polite first retry."""


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers


def error_payload(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The error as a response; a 429 always says when to retry (`Retry-After`, which OpenAI's SDKs honour)."""
    if status == 429 and not any(name.lower() == "retry-after" for name in headers or ()):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_SECONDS)}
    body = orjson.dumps(error_payload(status, message, code=code, param=param))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The first problem, phrased for a person, with `param` naming the field."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request")
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return APIError(400, message, code="invalid_request", param=param)


def exception_response(exc: Exception) -> Response:
    """Any exception a request raised → the OpenAI-format error the client gets (one mapping for
    FastAPI's handlers and the raw generation routes)."""
    if isinstance(exc, APIError):
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        err = validation_error(exc)
        return error_response(err.status, err.message, code=err.code, param=err.param)
    if isinstance(exc, BackendError):
        return error_response(exc.status, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, StoreUnavailable):
        log.error("target store unavailable: %s", exc)
        return error_response(503, "The service is temporarily unavailable; retry shortly.",
                              code="service_unavailable")
    if isinstance(exc, StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        if exc.status_code == 404:
            message = "Not found: unknown route."
        return error_response(exc.status_code, message, headers=exc.headers)  # e.g. 405 keeps `Allow`
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "The server had an error while processing your request.", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 404:  # name the route, as OpenAI does
            return error_response(404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url")
        return exception_response(exc)

    for kind in (APIError, RequestValidationError, BackendError, StoreUnavailable, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)
