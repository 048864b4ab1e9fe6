"""The run viewer in a real browser (headless Chromium) against a real server: the list and
its filters, a run's steps, live updates from the event streams, values shown as text, and
the token prompt. Screenshots of each page go to tests/artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_rig import console_problems, screenshot, start_browser, wait_for
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from support import ServerProcess, make_snapshot

pytestmark = [pytest.mark.server, pytest.mark.browser]

T0 = 1_700_000_000_000
XSS_OUTPUT = "<img src=x onerror=alert(1)>"
XSS_INPUT = "</script><script>alert(1)</script>"
TOKENS = "reader-token:read,writer-token:write"
# What the open page must show within, from the write: the bound for live updates.
LIVE_WITHIN = 2.0


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path: Path, browser: WebDriver) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "runs.db") as process:
        yield process
        # Nothing the page did was refused by its Content-Security-Policy or failed in a script.
        problems = console_problems(browser)
        browser.get("about:blank")  # before the server stops, or the page tries to reconnect
    assert problems == []


def put(server: ServerProcess, run: dict[str, Any], token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.put(f"{server.url}/runs/{run['runId']}", json=run, headers=headers)
    assert answer.is_success, answer.text


def patch(server: ServerProcess, run_id: str, body: dict[str, Any]) -> None:
    answer = httpx.patch(f"{server.url}/runs/{run_id}", json=body)
    assert answer.is_success, answer.text


def step(index: int, tool: str = "search", ms: int = 100) -> dict[str, Any]:
    return {
        "type": "tool",
        "tool": tool,
        "input": {"query": f"question {index}"},
        "output": f"answer {index}",
        "durationMs": ms,
        "usage": {"inputTokens": 20, "outputTokens": 7},
    }


def texts_of(browser: WebDriver, selector: str) -> list[str]:
    """The text of every element ``selector`` finds, read at once (rows change live)."""
    found: list[str] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)", selector
    )
    return found


def run_ids(browser: WebDriver) -> list[str]:
    return texts_of(browser, "#runs tbody td.run-id")


def open_list(browser: WebDriver, server: ServerProcess, query: str = "") -> None:
    browser.get(f"{server.url}/ui/{query}")
    wait_for(browser, lambda b: b.find_element(By.ID, "live").text == "Live")


def open_run(browser: WebDriver, server: ServerProcess, run_id: str) -> None:
    browser.get(f"{server.url}/ui/run.html?id={run_id}")
    wait_for(browser, lambda b: b.find_element(By.ID, "run").is_displayed())


def step_rows(browser: WebDriver) -> list[str]:
    return texts_of(browser, "#trace > li .tool")


def test_the_list_shows_runs_newest_first_and_filters_them(
    browser: WebDriver, server: ServerProcess
) -> None:
    put(server, make_snapshot("old", 2, status="completed", completedAt=T0 + 65_000))
    put(server, make_snapshot("middle", 1, status="failed", startedAt=T0 + 1000, error="boom"))
    put(server, make_snapshot("new", 3, startedAt=T0 + 2000, input="first line\nsecond"))
    open_list(browser, server)
    wait_for(browser, lambda b: run_ids(b) == ["new", "middle", "old"])
    cells = texts_of(browser, "#runs tbody tr:first-child td")
    assert cells[0] == "running"
    assert cells[2] == "first line"
    assert cells[3] == "3"
    assert cells[6] == "45"  # 30 input + 15 output tokens
    assert texts_of(browser, '#runs tr[data-run-id="old"] td')[5] == "1 m 05 s"
    screenshot(browser, "runs")

    browser.find_element(By.CSS_SELECTOR, 'input[name="status"][value="failed"]').click()
    browser.find_element(By.CSS_SELECTOR, '#filters button[type="submit"]').click()
    wait_for(browser, lambda b: run_ids(b) == ["middle"])
    assert "status=failed" in browser.current_url

    # A time range, from the page's URL (the form shows it in local time).
    open_list(browser, server, f"?startedAfter={T0 + 500}")
    wait_for(browser, lambda b: run_ids(b) == ["new", "middle"])
    assert browser.find_element(By.NAME, "startedAfter").get_attribute("value")
    browser.find_element(By.CSS_SELECTOR, '#filters button[type="reset"]').click()
    wait_for(browser, lambda b: run_ids(b) == ["new", "middle", "old"])


def test_the_list_pages_with_the_cursor(browser: WebDriver, server: ServerProcess) -> None:
    for index in range(55):
        put(server, make_snapshot(f"run-{index:02d}", startedAt=T0 + index))
    open_list(browser, server)
    wait_for(browser, lambda b: len(run_ids(b)) == 50)
    browser.find_element(By.ID, "more").click()
    wait_for(browser, lambda b: len(run_ids(b)) == 55)
    assert run_ids(browser) == [f"run-{index:02d}" for index in reversed(range(55))]
    assert not browser.find_element(By.ID, "more").is_displayed()


def test_the_list_follows_writes_live(browser: WebDriver, server: ServerProcess) -> None:
    put(server, make_snapshot("existing"))
    open_list(browser, server)
    wait_for(browser, lambda b: run_ids(b) == ["existing"])

    put(server, make_snapshot("arrived", 1, startedAt=T0 + 5000))
    wait_for(browser, lambda b: run_ids(b) == ["arrived", "existing"], LIVE_WITHIN)
    patch(server, "arrived", {"status": "failed", "completedAt": T0 + 6000})
    row = '#runs tr[data-run-id="arrived"]'
    wait_for(browser, lambda b: texts_of(b, f"{row} .status") == ["failed"], LIVE_WITHIN)
    assert texts_of(browser, f"{row} .duration") == ["1.00 s"]
    httpx.delete(f"{server.url}/runs/existing").raise_for_status()
    wait_for(browser, lambda b: run_ids(b) == ["arrived"], LIVE_WITHIN)

    # With a status filter, a run that changes to another status leaves the list.
    open_list(browser, server, "?status=running")
    put(server, make_snapshot("third", startedAt=T0 + 7000))
    wait_for(browser, lambda b: run_ids(b) == ["third"], LIVE_WITHIN)
    patch(server, "third", {"status": "cancelled", "completedAt": T0 + 8000})
    wait_for(browser, lambda b: run_ids(b) == [], LIVE_WITHIN)


def test_the_list_shows_who_holds_a_lease(browser: WebDriver, server: ServerProcess) -> None:
    put(server, make_snapshot("held"))
    put(server, make_snapshot("free", startedAt=T0 + 1000))
    granted = httpx.post(
        f"{server.url}/runs/held/lease", json={"holder": "worker-7 <b>", "ttlMs": 60_000}
    )
    assert granted.status_code == 200, granted.text
    lease = str(granted.json()["lease"])
    open_list(browser, server)
    wait_for(browser, lambda b: run_ids(b) == ["free", "held"])
    assert texts_of(browser, '#runs tr[data-run-id="held"] .lease') == ["worker-7 <b>"]
    assert texts_of(browser, '#runs tr[data-run-id="free"] .lease') == [""]

    # A write's summary carries the lease as it then stands: released, the column empties.
    released = httpx.delete(f"{server.url}/runs/held/lease", headers={"Runstore-Lease": lease})
    assert released.status_code == 204, released.text
    patch(server, "held", {"status": "completed", "completedAt": T0 + 9000})
    row = '#runs tr[data-run-id="held"]'
    wait_for(browser, lambda b: texts_of(b, f"{row} .status") == ["completed"], LIVE_WITHIN)
    assert texts_of(browser, f"{row} .lease") == [""]


def test_a_run_page_shows_its_steps_and_follows_the_run_live(
    browser: WebDriver, server: ServerProcess
) -> None:
    put(
        server,
        make_snapshot(
            "agent-7",
            trace=[step(0, "search", 1200), step(1, "fetch_page", 300), step(2, "summarise", 2400)],
            plan={"goal": "answer the question", "steps": ["search", "read", "answer"]},
            history=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": "Let me look it up."},
            ],
            usage={"inputTokens": 60, "outputTokens": 21},
        ),
    )
    open_run(browser, server, "agent-7")
    wait_for(browser, lambda b: step_rows(b) == ["search", "fetch_page", "summarise"])
    assert browser.find_element(By.ID, "run-id").text == "agent-7"
    assert "answer the question" in browser.find_element(By.ID, "run-plan").text
    assert texts_of(browser, "#history .role") == ["user", "assistant"]
    # The longest step's bar is the full width; the others to scale.
    widths = [
        bar.size["width"] for bar in browser.find_elements(By.CSS_SELECTOR, "#trace .dur-bar")
    ]
    assert widths[2] > widths[0] > widths[1] > 0
    # A step's input and output show when it is opened, by keyboard as well.
    summary = browser.find_elements(By.CSS_SELECTOR, "#trace > li > details > summary")[1]
    summary.send_keys("\n")
    fields = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#trace .field pre"))
    assert json.loads(fields[0].text) == {"query": "question 1"}
    assert fields[1].text == "answer 1"
    curl = browser.find_element(By.ID, "curl").get_attribute("value")
    assert curl == f"curl '{server.url}/runs/agent-7'"
    assert browser.find_element(By.ID, "live").text == "Live"

    patch(server, "agent-7", {"trace": [step(3, "write"), step(4, "check")], "traceFrom": 3})
    wait_for(browser, lambda b: step_rows(b)[3:] == ["write", "check"], LIVE_WITHIN)
    patch(
        server,
        "agent-7",
        {
            "status": "completed",
            "completedAt": T0 + 9000,
            "text": "It is sunny in Paris.",
            "history": [{"role": "assistant", "content": "It is sunny in Paris."}],
            "historyFrom": 2,
        },
    )
    wait_for(browser, lambda b: b.find_element(By.ID, "live").text == "Finished", LIVE_WITHIN)
    assert browser.find_element(By.ID, "run-text").text == "It is sunny in Paris."
    assert browser.find_element(By.CSS_SELECTOR, "#run-status .status").text == "completed"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history .turn")) == 3
    screenshot(browser, "run", height=1500)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    screenshot(browser, "run-dark")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    browser.set_window_size(390, 844)  # a phone
    screenshot(browser, "run-phone")
    browser.set_window_size(1280, 900)


def test_values_from_a_run_are_shown_as_text(browser: WebDriver, server: ServerProcess) -> None:
    put(
        server,
        make_snapshot(
            "hostile",
            input=XSS_INPUT + "\nmore",
            trace=[{"type": XSS_OUTPUT, "tool": XSS_INPUT, "output": XSS_OUTPUT}],
            error=XSS_OUTPUT,
            text=XSS_INPUT,
            history=[{"role": XSS_OUTPUT, "content": XSS_INPUT}],
        ),
    )
    open_list(browser, server)
    wait_for(browser, lambda b: run_ids(b) == ["hostile"])
    assert browser.find_element(By.CSS_SELECTOR, "#runs td.input").text == XSS_INPUT

    open_run(browser, server, "hostile")
    browser.find_element(By.CSS_SELECTOR, "#trace > li > details > summary").click()
    output = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#trace .field pre"))
    assert output[0].text == XSS_OUTPUT
    assert browser.find_element(By.CSS_SELECTOR, "#trace .tool").text == XSS_INPUT
    assert browser.find_element(By.ID, "run-input").text == XSS_INPUT + "\nmore"
    assert browser.find_element(By.ID, "run-error").text == XSS_OUTPUT
    assert browser.find_element(By.ID, "run-text").text == XSS_INPUT
    assert browser.find_element(By.CSS_SELECTOR, "#history .role").text == XSS_OUTPUT
    # No element was made from the values, and no script of theirs ran.
    assert browser.execute_script("return document.images.length") == 0
    assert browser.execute_script("return document.scripts.length") == 1
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_the_token_is_asked_once_and_sent_as_a_header(browser: WebDriver, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "runs.db", env={"RUNSTORE_TOKENS": TOKENS}) as server:
        put(server, make_snapshot("guarded", 2), token="writer-token")
        browser.get(f"{server.url}/ui/")
        dialog = wait_for(browser, lambda b: b.find_element(By.ID, "token-dialog"))
        wait_for(browser, lambda b: dialog.is_displayed())
        message = browser.find_element(By.CSS_SELECTOR, ".token-message")
        assert "needs a token" in message.text
        field = browser.find_element(By.NAME, "token")
        field.send_keys("wrong-token\n")
        wait_for(browser, lambda b: "refused this token" in message.text)
        assert dialog.is_displayed()
        field.send_keys("reader-token\n")
        wait_for(browser, lambda b: run_ids(b) == ["guarded"])
        wait_for(browser, lambda b: b.find_element(By.ID, "live").text == "Live")

        # Live updates with the token too, through a stream that sends it as a header.
        put(server, make_snapshot("later", startedAt=T0 + 1), token="writer-token")
        wait_for(browser, lambda b: run_ids(b) == ["later", "guarded"], LIVE_WITHIN)

        # Kept for the tab: the run page needs no second prompt.
        browser.find_element(By.LINK_TEXT, "guarded").click()
        wait_for(browser, lambda b: b.find_element(By.ID, "run").is_displayed())
        assert not browser.find_element(By.ID, "token-dialog").is_displayed()
        stored = browser.execute_script("return sessionStorage.getItem('runstore.token')")
        assert stored == "reader-token"
        assert "$RUNSTORE_TOKEN" in browser.find_element(By.ID, "curl").get_attribute("value")
        addresses = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert not [address for address in addresses if "reader-token" in address]
        assert "reader-token" not in browser.current_url
        browser.find_element(By.ID, "forget-token").click()
        wait_for(browser, lambda b: b.find_element(By.ID, "token-dialog").is_displayed())
        assert browser.execute_script("return sessionStorage.length") == 0
        # The refused token and the first request without one are the only errors.
        assert console_problems(browser, allowed=("401",)) == []
        browser.get("about:blank")


def test_a_large_run_opens_with_its_first_rows_and_scrolls_to_the_rest(
    browser: WebDriver, server: ServerProcess
) -> None:
    steps = 5000
    put(server, make_snapshot("long", trace=[step(i, ms=i % 700) for i in range(steps)]))
    open_run(browser, server, "long")
    opened = wait_for(
        browser, lambda b: b.execute_script("return document.documentElement.dataset.openedMs")
    )
    # Rows are made as they scroll into view, not all at once.
    shown = len(browser.find_elements(By.CSS_SELECTOR, "#trace > li"))
    assert 0 < shown < steps
    for _ in range(steps):
        browser.execute_script("document.getElementById('trace-more').scrollIntoView()")
        if len(browser.find_elements(By.CSS_SELECTOR, "#trace > li")) == steps:
            break
        wait_for(
            browser, lambda b, n=shown: len(b.find_elements(By.CSS_SELECTOR, "#trace > li")) > n
        )
        shown = len(browser.find_elements(By.CSS_SELECTOR, "#trace > li"))
    last = browser.find_elements(By.CSS_SELECTOR, "#trace > li")[-1]
    assert last.get_attribute("data-index") == str(steps - 1)
    # The time to open it is a benchmark figure (bench/viewer_open.py), not an assertion.
    print(f"a {steps}-step run opened in {opened} ms (navigation to first rows)")


SSE_STREAM = (
    ": keep-alive\r\n\r\n"
    'event: run\nid: 3\ndata: {"a":\n'
    "data: 1}\n\n"
    "event: patch\rid: 4\rdata:no space\r\r"
    "data: plain message\r\n\r\n"
    "event: deleted\ndata\n\n"
)
SSE_EVENTS = [
    {"event": "run", "id": "3", "data": '{"a":\n1}'},
    {"event": "patch", "id": "4", "data": "no space"},
    {"event": "message", "id": "4", "data": "plain message"},
    {"event": "deleted", "id": "4", "data": ""},
]


def test_the_event_stream_parser_takes_chunks_split_anywhere(
    browser: WebDriver, server: ServerProcess
) -> None:
    browser.get(f"{server.url}/ui/run.html")
    parsed = browser.execute_async_script(
        """
        const [stream, done] = arguments;
        import(new URL("viewer.js", document.baseURI).href).then(({ SseParser }) => {
          const results = [];
          for (let cut = 0; cut <= stream.length; cut++) {
            for (let second = cut; second <= stream.length; second += 7) {
              const parser = new SseParser();
              results.push([
                ...parser.push(stream.slice(0, cut)),
                ...parser.push(stream.slice(cut, second)),
                ...parser.push(stream.slice(second)),
              ]);
            }
          }
          done(results);
        });
        """,
        SSE_STREAM,
    )
    assert parsed
    assert all(events == SSE_EVENTS for events in parsed)


def test_leaving_a_page_closes_its_stream(browser: WebDriver, server: ServerProcess) -> None:
    # A browser opens six connections to a host over HTTP/1.1: pages left with their streams
    # still open (kept in the back/forward cache) would soon leave none for the next page.
    put(server, make_snapshot("followed", 1))
    for _ in range(5):
        open_list(browser, server)
        open_run(browser, server, "followed")
        wait_for(browser, lambda b: b.find_element(By.ID, "live").text == "Live")
