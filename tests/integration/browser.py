"""A real browser for the tests of the console and the simulator's phone: headless Chromium
from Debian's packages (``chromium``, ``chromium-driver``; ``.ci/run`` installs them), driven
by Selenium's WebDriver client with the system's chromedriver (no driver is downloaded).

- ``chrome``: a fresh browser (its own profile) for one test, 1280×900;
- a failing test that used it leaves a screenshot beside its report
  (``test-reports/browser/<test>.png``; the hook is in ``tests/integration/conftest.py``),
  and the report names the file;
- without Chromium the tests are skipped, unless ``TOPUP_REQUIRE_SERVERS=1`` (CI): then they
  fail.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPORTS = pathlib.Path(__file__).resolve().parents[2] / "test-reports" / "browser"
# Chromium's own traffic is off: this machine reaches nothing outside, and a test must not
# depend on what Chromium would fetch at start-up
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


def require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    reason = "no browser for the browser tests: " + ", ".join(missing) + \
        " (apt-get install chromium chromium-driver)"
    if os.environ.get("TOPUP_REQUIRE_SERVERS") == "1":
        pytest.fail(f"TOPUP_REQUIRE_SERVERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def chrome(request):
    """A headless Chromium of its own for this test."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="topup-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    request.node.browser = driver      # for the screenshot of a failure
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def screenshot_of_failure(item) -> pathlib.Path | None:
    """Save what the browser of a failed test shows; its path, or None."""
    driver = getattr(item, "browser", None)
    if driver is None:
        return None
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / (re.sub(r"[^\w.-]+", "_", item.nodeid.split("::", 1)[-1]) + ".png")
    try:
        driver.save_screenshot(str(path))
    except Exception:   # the browser died with the test: nothing to show
        return None
    return path


def replaced(element):
    """A wait condition: the page that held ``element`` has been replaced by the next one.

    Selenium's ``staleness_of`` waits for StaleElementReferenceException; while the next page
    is loading, chromedriver sometimes answers instead "unhandled inspector error: Node with
    given id does not belong to the document", a WebDriverException that says the same."""
    from selenium.common.exceptions import WebDriverException

    def gone(_driver) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:   # StaleElementReferenceException is one
            return True
        return False
    return gone
