"""Settings of the server, read from ``RUNSTORE_*`` environment variables."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Scope", "Settings", "TokenTable", "is_loopback"]

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024


class Scope(IntEnum):
    """What a token may do; each scope includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Tokens by SHA-256 digest, so a lookup compares fixed-length digests in constant time."""

    scopes: tuple[tuple[bytes, Scope], ...]

    @classmethod
    def parse(cls, spec: str) -> TokenTable:
        """``"tok1:read,tok2:admin,tok3"``: a bare token has the write scope.

        ValueError names the first malformed entry (by position, never its token) and why: a
        token is visible ASCII without ``,`` ``:`` or spaces, and a scope is read, write or
        admin. An empty spec is refused: it would otherwise mean no auth, silently.
        """
        if not spec.strip():
            raise ValueError(
                "RUNSTORE_TOKENS is set but empty; name tokens, or unset it, or set "
                "RUNSTORE_AUTH_DISABLED=true to serve without auth"
            )
        entries: list[tuple[bytes, Scope]] = []
        for number, raw in enumerate(spec.split(","), start=1):
            entry = raw.strip()
            where = f"RUNSTORE_TOKENS entry {number}"
            if not entry:
                raise ValueError(
                    f"{where} is empty: no token between two commas, or after one at an end"
                )
            token, colon, scope_name = entry.partition(":")
            if not colon:
                scope_name = "write"
            elif scope_name.lower() not in ("read", "write", "admin"):
                raise ValueError(
                    f"{where} has scope {scope_name[:20]!r}; a scope is read, write or admin, "
                    "with no spaces around the colon"
                )
            if not token:
                raise ValueError(f"{where} has no token before the colon")
            if not all("!" <= char <= "~" for char in token):
                raise ValueError(f"{where}: a token is visible ASCII characters, without spaces")
            entries.append((hashlib.sha256(token.encode()).digest(), Scope[scope_name.upper()]))
        return cls(tuple(entries))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Server configuration; every field reads ``RUNSTORE_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="RUNSTORE_", extra="ignore")

    db: str = Field("./runs.db", description="Path of the SQLite database file.")
    database_url: SecretStr | None = Field(
        None, description="postgresql://... selects the PostgreSQL backend instead of SQLite."
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body accepted."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send a request body."
    )
    max_head_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) accepted; larger: 431.",
    )
    head_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request head; then 408."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections served at once; one more is answered 503 and closed.",
    )
    keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open."
    )
    backlog: int = Field(
        2048, ge=1, description="Connections the kernel queues before the server accepts them."
    )
    max_items_per_write: int = Field(
        100_000,
        ge=1,
        description="trace and history items one PUT or PATCH may send, together; more: 413.",
    )
    max_json_depth: int = Field(
        256, ge=8, le=900, description="Deepest nesting of arrays and objects in a body; 400."
    )
    max_body_memory: int = Field(
        4 * DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Bytes of request bodies held at once (being read, parsed or written); "
        "a body that would pass it is answered 503 with Retry-After.",
    )
    auth_disabled: bool = Field(
        False,
        description="Serve without auth even though RUNSTORE_TOKENS is set (to an empty value).",
    )
    tokens: SecretStr | None = Field(
        None,
        description="Comma-separated token:scope pairs; unset means no auth. Set but empty is "
        "an error unless RUNSTORE_AUTH_DISABLED is true.",
    )
    wal_autocheckpoint: int = Field(
        1000,
        ge=0,
        description="WAL pages after which SQLite checkpoints (SQLite's default); 0 leaves every "
        "checkpoint, the one at a clean stop included, to a replicator such as Litestream.",
    )
    events_keepalive: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds an event stream may stay silent before a keep-alive comment.",
    )
    events_queue: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Changes kept for the event streams of a run (and of GET /events); a stream "
        "that falls further behind is sent the whole run again (GET /events: told it skipped "
        "some).",
    )
    access_log: bool = Field(True, description="Log one line per request.")
    telemetry: bool = Field(
        False,
        description="OpenTelemetry traces: FastAPI's request spans and the store's write and "
        "commit spans, exported as the OTEL_* variables say (the otel extra); when on, FastAPI "
        "asks on every request whether a provider is configured.",
    )
    log_level: str = Field("info", description="Log level of the server.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: human-readable log lines; json: one JSON object per line "
        "(time, level, logger, message and the request's fields).",
    )
    metrics: bool = Field(
        True,
        description="GET /metrics (Prometheus) and request ids (X-Request-Id); false turns "
        "both off.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve /metrics on this port of RUNSTORE_HOST, without a token, "
        "for a scraper; unset: only on the API's port (read scope).",
    )

    @field_validator("tokens", mode="after")
    @classmethod
    def _tokens_parse(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("auth_disabled"):
            return None
        if value is not None:
            # Refused here, at start-up, with the reason: never a silently open server.
            TokenTable.parse(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Settings:
        # Otherwise a body of the largest allowed size would be 503 forever, retried in vain.
        if self.max_body_memory < self.max_body_bytes:
            raise ValueError(
                f"RUNSTORE_MAX_BODY_MEMORY ({self.max_body_memory}) must be at least "
                f"RUNSTORE_MAX_BODY_BYTES ({self.max_body_bytes})"
            )
        return self

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("RUNSTORE_DATABASE_URL must start with postgresql://")
        return value

    @property
    def token_table(self) -> TokenTable | None:
        return None if self.tokens is None else TokenTable.parse(self.tokens.get_secret_value())
