"""The clients' own HTTP/1.1 transports, and when they use them.

httpx's default transport (httpcore over h11) spends most of an agent's CPU per hook: a hook is
one small PATCH, and the generic machinery around it costs several times what the request
does. :class:`Http11Transport` and :class:`AsyncHttp11Transport` do only what a client of the
runstore server needs: plain-HTTP/1.1 keep-alive, one write per request, and a response parser
with no per-event objects. :func:`lean_transport_serves` says when they apply.
"""

from __future__ import annotations

import urllib.request

import httpx

from ._async import AsyncHttp11Transport
from ._common import DEFAULT_LIMITS, Answer
from ._http11 import encode_head, origin_of
from ._sync import Http11Transport

__all__ = [
    "DEFAULT_LIMITS",
    "Answer",
    "AsyncHttp11Transport",
    "Http11Transport",
    "encode_head",
    "lean_transport_serves",
    "origin_of",
    "proxied",
]


def proxied(url: httpx.URL) -> bool:
    """Whether httpx, trusting the environment, might send a request to ``url`` via a proxy.

    httpx reads the proxies from :func:`urllib.request.getproxies` (``HTTP_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY`` and their lower-case forms, and the system settings on macOS and
    Windows). Its ``NO_PROXY`` matching has rules of its own (suffixes, schemes, ports); this
    answers False only where they surely exempt ``url``: no proxy for its scheme, ``*``, or its
    host named exactly. Otherwise httpx decides.
    """
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    exempt = {host.strip().lower() for host in proxies.get("no", "").split(",")}
    return not ("*" in exempt or url.host.lower() in exempt)


def lean_transport_serves(base_url: httpx.URL) -> bool:
    """Whether the clients use their lean transport for ``base_url`` (when given none).

    It serves plain ``http://`` with no proxy from the environment (see :func:`proxied`);
    ``https://`` and proxied URLs keep httpx's default transport, which does TLS and proxies.
    """
    return base_url.scheme == "http" and not proxied(base_url)
