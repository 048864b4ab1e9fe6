"""Request headers: one header's value, and the entity tags of conditional headers (RFC 9110)."""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request

from runstore.client.models import MAX_INT
from runstore.client.problems import BadRequest, InvalidRun

__all__ = ["LEASE_HEADER", "header", "parse_etags", "parse_if_match", "parse_lease"]

LEASE_HEADER: Final = "Runstore-Lease"


def header(request: Request, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), or None.

    Read straight from the ASGI scope, whose header names the server gives in lower case (the
    assumption starlette's ``request.headers`` makes too), without building a Headers object or
    raising KeyError for an absent header, on every request of the run routes.
    """
    for key, value in request.scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


_ETAG: Final = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def parse_etags(value: str, header: str) -> list[tuple[bool, str]] | None:
    """A list of (weak, opaque) entity tags, or None for ``*``; BadRequest if malformed."""
    if value.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    position = 0
    text = value.strip()
    while position < len(text):
        match = _ETAG.match(text, position)
        if match is None:
            raise BadRequest(
                f'{header} must be * or quoted entity tags such as "3" (got {value[:80]!r}).',
            )
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    if not tags:
        raise BadRequest(f"{header} is empty.")
    return tags


def parse_if_match(value: str | None) -> set[int] | None:
    """Versions an ``If-Match`` header accepts (strong comparison), None when absent.

    ``*`` gives an empty set, meaning "any stored version".
    """
    if value is None:
        return None
    tags = parse_etags(value, "If-Match")
    if tags is None:
        return set()
    # A weak tag or a tag that is no version never matches; -1 stands for such a tag.
    return {int(tag) if not weak and tag.isdigit() and len(tag) < 19 else -1 for weak, tag in tags}


def parse_lease(value: str | None) -> int | None:
    """The lease number of a ``Runstore-Lease`` header (1 or more), None when absent; 422 for
    anything but a decimal integer."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) < 20 and 0 < int(text) <= MAX_INT):
        raise InvalidRun(
            f"{LEASE_HEADER} must be a lease number, an integer of 1 or more (got {value[:40]!r}).",
            errors=[
                {
                    "path": f"header.{LEASE_HEADER}",
                    "message": "must be an integer of 1 or more",
                    "type": "int_parsing",
                }
            ],
        )
    return int(text)
