"""Settings of the server, read from ``RUNSTORE_*`` environment variables."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pydantic import Field, SecretStr, field_validator
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
        """``"tok1:read,tok2:admin,tok3"``: a bare token has the write scope."""
        entries: list[tuple[bytes, Scope]] = []
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            token, _, scope_name = entry.rpartition(":")
            if scope_name.upper() not in Scope.__members__:
                token, scope_name = entry, "write"
            if not token:
                raise ValueError(f"empty token in RUNSTORE_TOKENS entry {entry!r}")
            entries.append((hashlib.sha256(token.encode()).digest(), Scope[scope_name.upper()]))
        if not entries:
            raise ValueError("RUNSTORE_TOKENS is set but names no token")
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
    tokens: SecretStr | None = Field(
        None, description="Comma-separated token:scope pairs; unset means no auth."
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
        description="Changes queued for one event stream; a stream that falls further behind "
        "skips them and is sent the whole run again (GET /events: told it skipped some).",
    )
    access_log: bool = Field(True, description="Log one line per request.")
    telemetry: bool = Field(
        False,
        description="FastAPI's OpenTelemetry spans, metrics and logs, for a configured "
        "OpenTelemetry provider; when on, FastAPI asks on every request whether one is.",
    )
    log_level: str = Field("info", description="Log level of the server.")

    @field_validator("tokens", mode="after")
    @classmethod
    def _tokens_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            TokenTable.parse(value.get_secret_value())
            return value
        return None

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
