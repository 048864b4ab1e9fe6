"""The run viewer in a browser: how long a large run takes to open, and how soon a write shows
on an open run page.

    .venv/bin/python bench/viewer_open.py                      # 5,000 steps, 5 rounds
    .venv/bin/python bench/viewer_open.py --steps 500 --rounds 2   # a quick check

It starts ``runstore serve`` on a temporary SQLite file and drives Debian's headless Chromium
(``chromium``, ``chromium-driver``) with Selenium.

- **Open**: a run of ``--steps`` steps (each a tool call with a ~300-byte input and output) and,
  as the reference, the same run with 50 steps, opened in turns. The figure is what the page
  measures itself: ``performance.now()`` once its first rows are in place (ms from the start of
  the navigation: the page, its scripts, the GET of the run, the first rows).
- **Live**: on the open run page, a PATCH of one new step; the time from sending it until the
  new row is in the page (polled every 10 ms from here, so up to ~10 ms late).

On a shared machine the figures drift by tens of percent: compare within one invocation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_load import start_runstore  # noqa: E402


def run_of(run_id: str, steps: int) -> dict[str, Any]:
    return {
        "runId": run_id,
        "status": "running",
        "startedAt": 1_700_000_000_000,
        "input": "Plan a three-day trip to Lisbon within a budget.",
        "trace": [step(index) for index in range(steps)],
        "usage": {"inputTokens": 120 * steps, "outputTokens": 40 * steps},
        "stepIndex": steps,
        "iterations": steps,
        "revisions": 0,
    }


def step(index: int) -> dict[str, Any]:
    return {
        "type": "tool",
        "tool": ("search", "fetch_page", "summarise")[index % 3],
        "input": {"query": f"step {index}: " + "lisbon hotels near the river " * 8},
        "output": f"result {index}: " + "a paragraph of model output " * 10,
        "durationMs": 50 + (index * 37) % 2000,
        "usage": {"inputTokens": 120, "outputTokens": 40},
    }


def browser() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        sys.exit("needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def opened_ms(page: webdriver.Chrome, url: str) -> float:
    page.get(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = page.execute_script("return document.documentElement.dataset.openedMs")
        if value is not None:
            return float(value)
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not open within 60 s")


def live_ms(page: webdriver.Chrome, base: str, run_id: str, index: int) -> float:
    count = "return document.querySelectorAll('#trace > li').length"
    sent = time.perf_counter()
    answer = httpx.patch(f"{base}/runs/{run_id}", json={"trace": [step(index)], "traceFrom": index})
    answer.raise_for_status()
    while page.execute_script(count) <= index:
        if time.perf_counter() - sent > 10:
            raise RuntimeError("the new step did not appear within 10 s")
        time.sleep(0.01)
    return (time.perf_counter() - sent) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps of the large run")
    parser.add_argument("--rounds", type=int, default=5, help="opens of each run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = start_runstore(str(Path(workdir, "runs.db")), None, pin=False)
        page = browser()
        try:
            base = f"http://127.0.0.1:{server.port}"
            for run_id, steps in (("large", args.steps), ("small", 50)):
                httpx.put(f"{base}/runs/{run_id}", json=run_of(run_id, steps)).raise_for_status()
            times: dict[str, list[float]] = {"large": [], "small": []}
            for _ in range(args.rounds):
                for run_id in ("large", "small"):
                    times[run_id].append(opened_ms(page, f"{base}/ui/run.html?id={run_id}"))
            # Live: on the small run's page (all its rows shown), a step at a time.
            page.get(f"{base}/ui/run.html?id=small")
            opened_ms(page, f"{base}/ui/run.html?id=small")
            while (
                page.execute_script("return document.getElementById('live').textContent") != "Live"
            ):
                time.sleep(0.01)
            live = [live_ms(page, base, "small", 50 + n) for n in range(args.rounds * 4)]
        finally:
            page.quit()
            server.stop()
    result = {
        "steps": args.steps,
        "open_large_ms_median": statistics.median(times["large"]),
        "open_large_ms_max": max(times["large"]),
        "open_50_steps_ms_median": statistics.median(times["small"]),
        "live_patch_to_row_ms_median": statistics.median(live),
        "live_patch_to_row_ms_max": max(live),
    }
    print(
        f"open, {args.steps} steps: median {result['open_large_ms_median']:.0f} ms, "
        f"max {result['open_large_ms_max']:.0f} ms (each round: "
        f"{', '.join(f'{t:.0f}' for t in times['large'])})"
    )
    print(f"open, 50 steps:   median {result['open_50_steps_ms_median']:.0f} ms")
    print(
        f"live, PATCH to new row: median {result['live_patch_to_row_ms_median']:.0f} ms, "
        f"max {result['live_patch_to_row_ms_max']:.0f} ms"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
