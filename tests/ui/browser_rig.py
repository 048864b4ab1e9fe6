"""What the viewer's browser tests share: headless Chromium driven by Selenium, a runstore
server per test, and waits that poll the page (never a sleep).

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run``
installs them). Without them the tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

# Screenshots of each page, kept after the run (ignored by git).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

T = TypeVar("T")


def chromium_paths() -> tuple[str, str]:
    """The Chromium binary and its driver, or a skip (a failure in CI) naming the packages."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        message = (
            "the viewer's browser tests need Chromium and its driver: "
            "apt-get install chromium chromium-driver"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run them; .ci/run installs them)")
        pytest.skip(message)
    return browser, driver


def start_browser() -> WebDriver:
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--force-prefers-reduced-motion",
    ):
        options.add_argument(argument)
    # Console messages, to find Content-Security-Policy refusals and script errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given: Selenium Manager (which would download drivers) is not used.
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    # A page that does not load by then is stuck (one waiting for a free connection to the
    # server waits ~60 s); not a measure of speed: pages load in well under a second.
    chrome.set_page_load_timeout(30)
    return chrome


def wait_for(browser: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 10.0) -> T:
    """The first truthy value of ``condition``, polled every 50 ms, within ``timeout``."""
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def texts(elements: list[WebElement]) -> list[str]:
    return [element.text for element in elements]


def console_problems(browser: WebDriver, allowed: tuple[str, ...] = ()) -> list[str]:
    """Console errors since the last call, but for messages containing one of ``allowed``."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [
        entry["message"]
        for entry in entries
        if (entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"])
        and not any(part in entry["message"] for part in allowed)
    ]


def screenshot(browser: WebDriver, name: str, height: int | None = None) -> Path:
    """Save the page as tests/artifacts/<name>.png (the whole page up to ``height`` px)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = browser.get_window_size()
    if height is not None:
        browser.set_window_size(size["width"], height)
        wait_for(browser, lambda b: b.execute_script("return window.outerHeight") == height)
    browser.save_screenshot(str(path))
    if height is not None:
        browser.set_window_size(size["width"], size["height"])
    return path
