"""The viewer's static files (docs/api.md, "The run viewer"): served from the package under
``/ui/`` with a strict Content-Security-Policy, without a token, and written so that nothing
from a run can become markup or code (no inline code, no other origin, no HTML sinks)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.resources import files

import httpx
import pytest
from pydantic import SecretStr
from support import assert_problem

from runstore.service import Settings

pytestmark = pytest.mark.anyio

UI = files("runstore.service") / "ui"
FILES = sorted(entry.name for entry in UI.iterdir() if entry.is_file())
PAGES = [name for name in FILES if name.endswith(".html")]
SCRIPTS = [name for name in FILES if name.endswith(".js")]
CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}


@pytest.fixture
def backend() -> str:
    return "sqlite"  # static files: the store plays no part


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"tokens": SecretStr("reader-token:read")})


def test_the_package_holds_the_pages_their_scripts_and_style() -> None:
    assert {"index.html", "run.html", "runs.js", "run.js", "viewer.js", "viewer.css"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
async def test_every_file_is_served_without_a_token_under_a_strict_policy(
    client: httpx.AsyncClient, name: str
) -> None:
    answer = await client.get(f"/ui/{name}")
    assert answer.status_code == 200
    assert answer.content == (UI / name).read_bytes()
    assert answer.headers["content-type"].startswith(CONTENT_TYPES[name.rsplit(".", 1)[1]])
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in answer.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert answer.headers["x-content-type-options"] == "nosniff"
    # Revalidated by its ETag, so an upgraded package's files are seen at once.
    etag = answer.headers["etag"]
    again = await client.get(f"/ui/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304


async def test_the_list_is_the_index_and_the_data_still_needs_a_token(
    client: httpx.AsyncClient,
) -> None:
    index = await client.get("/ui/")
    assert index.status_code == 200
    assert index.content == (UI / "index.html").read_bytes()
    assert "content-security-policy" in index.headers
    moved = await client.get("/ui")
    assert moved.status_code == 308
    assert moved.headers["location"] == "ui/"
    assert_problem(await client.get("/runs"), 401, "unauthorized")
    assert_problem(await client.get("/events"), 401, "unauthorized")


@pytest.mark.parametrize(
    "path",
    [
        "/ui/missing.js",
        "/ui/..%2fapp.py",
        "/ui/%2e%2e%2fapp.py",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/%2fetc%2fpasswd",
    ],
)
async def test_anything_else_under_ui_is_not_found(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 404, "not-found")


class _Markup(HTMLParser):
    """What a page's markup loads and runs."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_code: list[str] = []
        self.references: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.inline_code.append(f"<{tag} {name}={value!r}>")
            if name in ("src", "href") and value is not None:
                self.references.append(value)
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        elif tag == "style":
            self.inline_code.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(data)


@pytest.mark.parametrize("name", PAGES)
def test_pages_load_only_their_own_files_and_hold_no_inline_code(name: str) -> None:
    markup = _Markup()
    markup.feed((UI / name).read_text())
    assert markup.inline_code == []
    assert markup.scripts
    assert all(script.get("src") in SCRIPTS for script in markup.scripts)
    for reference in markup.references:
        assert reference in FILES or reference in ("./", "data:,") or reference.startswith("#")


# Ways a string becomes markup or code in a page; the scripts set text (textContent, append).
_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*[\"']on|createContextualFragment|https?://"
)


@pytest.mark.parametrize("name", [*SCRIPTS, "viewer.css"])
def test_scripts_never_turn_a_value_into_markup_or_reach_another_origin(name: str) -> None:
    assert _SINKS.findall((UI / name).read_text()) == []
