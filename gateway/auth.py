"""Who is calling: client API keys map to tenants; the admin API takes one bearer token."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from gateway.errors import APIError

DEFAULT_TENANT = "default"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ClientAuth:
    """With no keys configured every caller is the default tenant; otherwise the key picks the tenant."""

    def __init__(self, tenant_by_key: dict[str, str]):
        self._tenant_by_key = dict(tenant_by_key)

    def tenant(self, request: Request) -> str:
        if not self._tenant_by_key:
            return DEFAULT_TENANT
        token = _bearer(request)
        if token is None:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        for key, tenant in self._tenant_by_key.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return tenant
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")


class AdminAuth:
    """Bearer token check; with no token the admin API is off unless explicitly insecure."""

    def __init__(self, token: str | None, *, insecure: bool):
        self._token = token
        self._insecure = insecure

    @property
    def enabled(self) -> bool:
        return bool(self._token) or self._insecure

    def actor(self, request: Request) -> str:
        """Check the caller and name it for the audit log (`X-Unlearn-Actor`, else 'admin')."""
        if not self.enabled:
            raise APIError(403, "The admin API is disabled: set UNLEARN_ADMIN_TOKEN (or --insecure-admin).",
                           code="admin_disabled")
        if self._token:
            token = _bearer(request)
            if token is None or not hmac.compare_digest(token.encode(), self._token.encode()):
                raise APIError(401, "Invalid or missing admin token.", code="invalid_admin_token")
        actor = request.headers.get("x-unlearn-actor", "").strip()
        return actor[:128] if actor else "admin"


class MetricsAuth:
    """Who may read /metrics. Its series tell which requests met a protected topic and how many
    targets exist, so it is an operator's view: with a token (`UNLEARN_METRICS_TOKEN`) it takes
    `Authorization: Bearer <token>` (Prometheus's `authorization` / `bearer_token_file` scrape
    settings); without one it is open only while the gateway has no client keys either, and off
    (403) once clients authenticate, rather than readable by every client."""

    def __init__(self, token: str | None, *, clients_authenticate: bool):
        self._token = token
        self._off = not token and clients_authenticate

    @property
    def mode(self) -> str:
        """`token`, `open` or `off`, for the start-up log."""
        return "token" if self._token else ("off" if self._off else "open")

    def check(self, request: Request) -> None:
        if self._off:
            raise APIError(403, "/metrics is disabled: client API keys are set, so it needs UNLEARN_METRICS_TOKEN.",
                           code="metrics_disabled")
        if self._token:
            token = _bearer(request)
            if token is None or not hmac.compare_digest(token.encode(), self._token.encode()):
                raise APIError(401, "Invalid or missing metrics token.", code="invalid_metrics_token",
                               headers={"WWW-Authenticate": "Bearer"})
