"""/docs (Swagger UI) and /redoc work offline: every asset they load comes from this server
(issue 15)."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio

# Anything a page would fetch: src= and href= attributes, url(...) and quoted absolute URLs.
REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")
ABSOLUTE = re.compile(r"""\b(?:https?:)?//[a-z0-9.-]+""", re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_assets_this_server_serves(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)

    assert response.status_code == 200
    html = response.text
    assert ABSOLUTE.findall(html) == [], "the page names another host"
    references = [next(filter(None, match)) for match in REFERENCES.findall(html)]
    assert any(reference.endswith(".js") for reference in references)
    for reference in references:
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        assert asset.content, reference


async def test_swagger_ui_reads_the_served_openapi_document(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text

    assert "'/openapi.json'" in html or '"/openapi.json"' in html
