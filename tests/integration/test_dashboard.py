"""The live dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver,
through selenium) against a real three-hospital federation with TLS.

Skipped, with the reason, only where the browser is not installed; CI installs it (.ci/run). Set
MEDFED_DASHBOARD_SCREENSHOT=PATH to keep the screenshot (the README's comes from this test).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from medfed.common.data.partition import partition_to_folders
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, start_server, synthetic_dataset, wait_for_log
from tests.integration.test_federation import make_pki, start_hospitals

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "a-dashboard-token-for-the-test"


def unavailable(reason: str) -> NoReturn:
    """Skip, saying why, where the browser cannot be installed; CI, which installs it, sets
    MEDFED_REQUIRE_BROWSER=1 so that a missing browser fails there instead."""
    if os.environ.get("MEDFED_REQUIRE_BROWSER"):
        pytest.fail(f"MEDFED_REQUIRE_BROWSER is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None or CHROMEDRIVER is None:
        unavailable("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1500, 1200)  # the whole page in the screenshot
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(what: str, check: Callable[[], Any], procs: ProcessGroup, browser: Any, timeout: float = 90.0) -> Any:
    """Let selenium poll ``check`` until it returns something true; fail with the coordinator's log if
    it never does, or at once if the coordinator exits."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(_driver: Any) -> Any:
        assert procs.procs["server"].poll() is None, (
            f"the coordinator exited before {what}:\n{procs.tail('server', 20)}"
        )
        return check()

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.2).until(ready)
    except TimeoutException:
        pytest.fail(f"no {what} within {timeout} s:\n{procs.tail('server', 20)}")


def test_the_dashboard_shows_hospitals_rounds_curves_and_a_revoked_hospital(
    tmp_path: Path, procs: ProcessGroup, browser: Any
) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    tls = make_pki(tmp_path / "pki")
    dashboard_port = tmp_path / "dashboard.port"
    # More rounds than the test waits for: it stops the run itself once it has seen what it needs.
    start_server(procs, tmp_path, *tls, "--rounds", "400", "--min-clients", "3", "--min-fit", "2",
                 "--test-data", str(tmp_path / "data" / "test"), "--out", str(tmp_path / "run"),
                 "--dashboard-address", "127.0.0.1:0", "--dashboard-port-file", str(dashboard_port),
                 "--dashboard-token", TOKEN)  # fmt: skip
    port = int((tmp_path / "server.port").read_text())
    url = f"http://127.0.0.1:{int(dashboard_port.read_text())}/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "api/status?token=wrong-token-of-some-length", timeout=10)
    assert refused.value.code == 401 and refused.value.read() == b""
    start_hospitals(procs, tmp_path / "data", port, tmp_path / "pki")

    browser.get(f"{url}?token={TOKEN}")
    rows = (
        "return [...document.querySelectorAll('#hospitals tbody tr[data-name]')]"
        ".map(r => [r.dataset.name, r.dataset.state])"
    )
    wait_until("three hospitals on the page", lambda: len(browser.execute_script(rows)) == 3, procs, browser)
    round_text = "return document.getElementById('round').textContent"
    first = wait_until("a round number", lambda: _round(browser.execute_script(round_text)), procs, browser)
    wait_until(
        "the round counter to advance", lambda: _round(browser.execute_script(round_text)) > first, procs, browser
    )
    accuracy = "return document.querySelectorAll('#chart-test circle[data-series=\"accuracy\"]').length"
    points = wait_until(
        "two points on the accuracy curve", lambda: browser.execute_script(accuracy) >= 2, procs, browser
    )
    before = browser.execute_script(accuracy)
    wait_until("the accuracy curve to gain a point", lambda: browser.execute_script(accuracy) > before, procs, browser)
    assert points

    revoked = run_cli("medfed.tools.certs", "revoke", "--dir", str(tmp_path / "pki"), "--name", "hospital_c")
    assert revoked.returncode == 0, revoked.stderr
    wait_until(
        "hospital_c shown as refused", lambda: ["hospital_c", "refused"] in browser.execute_script(rows), procs, browser
    )
    events = browser.execute_script("return document.getElementById('events').textContent")
    assert "hospital_c" in events and "PERMISSION_DENIED" in events and "revoked" in events
    states = dict(browser.execute_script(rows))
    assert states["hospital_a"] != "refused" and states["hospital_b"] != "refused"
    after = _round(browser.execute_script(round_text))
    wait_until(
        "a round after the revocation", lambda: _round(browser.execute_script(round_text)) > after + 1, procs, browser
    )
    assert browser.execute_script("return document.getElementById('federation').textContent").startswith("federation ")

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("MEDFED_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)
    wait_for_log(procs, "server", "hospital_c: the certificate of 'hospital_c'")


def _round(text: str) -> int:
    """'7 of 400' -> 7 (0 before the first round)."""
    head = text.split(" of ")[0].strip()
    return int(head) if head.isdigit() else 0
