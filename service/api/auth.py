"""Bearer tokens with scopes, checked before any route runs (unknown paths included).

``/healthz`` and GETs of the viewer's static pages (``/ui/``, which hold no data: their data
calls send the token) are open; bulk ``DELETE /runs`` needs ``admin``; PUT, PATCH and DELETE of
a run need ``write``; everything else needs ``read``; WebSocket connections are refused (the API
has none). Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every
configured token, so timing says nothing about them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from runstore.client.problems import Forbidden, Unauthorized

from ..config import Scope as TokenScope
from ..config import TokenTable
from .problems import problem_response

__all__ = ["BearerAuth", "required_scope"]

OPEN_PATHS: Final = frozenset({"/healthz", "/ui"})
OPEN_PREFIXES: Final = ("/ui/",)
_WRITE_METHODS: Final = frozenset({"PUT", "PATCH", "DELETE", "POST"})


def required_scope(method: str, path: str) -> TokenScope | None:
    """The scope a request needs, or None for open paths."""
    if path in OPEN_PATHS or (method in ("GET", "HEAD") and path.startswith(OPEN_PREFIXES)):
        return None
    if method == "DELETE" and path.rstrip("/") == "/runs":
        return TokenScope.ADMIN
    if method in _WRITE_METHODS:
        return TokenScope.WRITE
    return TokenScope.READ


def _challenge(error: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="runstore"'
    if error is not None:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


class BearerAuth:
    """Pure ASGI middleware; installed only when tokens are configured."""

    def __init__(self, app: ASGIApp, tokens: TokenTable) -> None:
        self.app = app
        self.tokens = tokens

    def _scope_of(self, token: bytes) -> TokenScope | None:
        digest = hashlib.sha256(token).digest()
        found: TokenScope | None = None
        for candidate, scope in self.tokens.scopes:
            if hmac.compare_digest(digest, candidate):
                found = scope
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # No route speaks WebSocket; refused before the handshake, as none is checked here.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        kind, _, token = authorization.partition(b" ")
        if not authorization:
            response = problem_response(
                Unauthorized("Send a token: Authorization: Bearer <token>."),
                headers=_challenge(),
                instance=scope["path"],
            )
        elif kind.lower() != b"bearer" or not token.strip():
            response = problem_response(
                Unauthorized("The Authorization header must be: Bearer <token>."),
                headers=_challenge("invalid_request"),
                instance=scope["path"],
            )
        else:
            granted = self._scope_of(token.strip())
            if granted is None:
                response = problem_response(
                    Unauthorized("The token is not valid."),
                    headers=_challenge("invalid_token"),
                    instance=scope["path"],
                )
            elif granted < needed:
                response = problem_response(
                    Forbidden(
                        f"This request needs the {needed.name.lower()} scope; the token has "
                        f"{granted.name.lower()}."
                    ),
                    headers=_challenge("insufficient_scope"),
                    instance=scope["path"],
                )
            else:
                await self.app(scope, receive, send)
                return
        await response(scope, receive, send)
