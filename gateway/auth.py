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
