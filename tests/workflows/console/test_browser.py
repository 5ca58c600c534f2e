"""The console and tracking page as a person uses them: headless Chromium against the real server.

The intake API (with the console mounted) runs under uvicorn on a loopback port; cases come from the
Hub and Bartec simulators through the real pipeline. Screenshots go to docs/img/console-*.png.
Needs Debian's `chromium` and `chromium-driver` (`.ci/browser` installs them).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from hubbridge.store import DeadLetterRow, LinkRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.outbox import push_hub

from ..conftest import Rig
from .conftest import PASSWORDS, cases_of, take_in, write_console_yaml

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[3] / "docs" / "img"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "install Chromium and its driver first: bash .ci/browser"
    profile = tempfile.mkdtemp(prefix="hubbridge-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-GB",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # the Debian driver named explicitly, so Selenium never tries to fetch one
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Server:
    """The intake API with the console, under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def site(rig: Rig, browser: WebDriver, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Rig, Server, WebDriver]]:
    monkeypatch.setenv("TEST_CONSOLE_SECRET", "browser-test-secret-" + "y" * 24)
    hashes = write_console_yaml(rig.rt.settings.config_dir)
    monkeypatch.setenv("TEST_OLIVE_HASH", hashes["olive"])
    monkeypatch.setenv("TEST_RUFUS_HASH", hashes["rufus"])
    with Server(create_app(rig.rt, enqueue=False)) as server:
        browser.delete_all_cookies()  # cookies ignore ports: start every test logged out
        browser.set_window_size(1280, 900)
        yield rig, server, browser


def wait_for(driver: WebDriver, css: str, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def text_of(driver: WebDriver, css: str) -> str:
    return str(wait_for(driver, css).text).strip()


def screenshot(driver: WebDriver, name: str, *, phone: bool = False) -> Path:
    """Save the whole page (or a 390 px wide phone view) as docs/img/console-<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"console-{name}.png"
    if phone:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        width = 390 if phone else 1280
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": min(max(height, 600), 2400), "deviceScaleFactor": 1,
                                "mobile": phone})
        driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert path.stat().st_size > 5000, f"{path} looks empty"
    return path


def log_in(driver: WebDriver, server: Server, name: str, *, shot: str | None = None) -> None:
    driver.get(f"{server.url}/console/login")
    wait_for(driver, "#name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    if shot:
        screenshot(driver, shot)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, "form.who")


def test_without_a_login_the_console_asks_for_one_and_refuses_a_wrong_password(site: Any) -> None:
    _rig, server, driver = site
    driver.get(f"{server.url}/console/queues")
    wait_for(driver, "#password")
    assert "/console/login?next=" in driver.current_url
    driver.find_element(By.ID, "name").send_keys("olive")
    driver.find_element(By.ID, "password").send_keys("not-the-password")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    assert "do not match" in text_of(driver, "#login-error")
    screenshot(driver, "login-refused")
    driver.find_element(By.ID, "name").send_keys("olive")
    driver.find_element(By.ID, "password").send_keys(PASSWORDS["olive"])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, "#connectors")
    assert driver.current_url.endswith("/console/queues"), "after login you land where you were going"


def test_operator_looks_a_case_up_by_its_back_office_reference(site: Any) -> None:
    rig, server, driver = site
    refs = [take_in(rig.rt, c) for c in cases_of("refuse.missed-collection", 2)]
    with session_scope(rig.url) as s:
        link = s.scalar(select(LinkRow).where(LinkRow.hub_ref == refs[0]))
    assert link is not None
    log_in(driver, server, "olive", shot="login")
    box = wait_for(driver, "#ref")
    box.send_keys(link.backoffice_ref)
    box.submit()
    assert text_of(driver, "#case-ref") == refs[0]
    assert text_of(driver, "#case-status") == "delivered"
    assert text_of(driver, "#mapping-version") == link.mapping_version
    clocks = text_of(driver, "#clocks")
    assert "acknowledge" in clocks and "resolve" in clocks and "on track" in clocks
    assert "hub.acknowledged" in text_of(driver, "#trail")
    screenshot(driver, "case")
    screenshot(driver, "case-phone", phone=True)


def test_operator_replays_a_dead_letter_after_confirming(site: Any) -> None:
    rig, server, driver = site
    case = cases_of("refuse.missed-collection")[0]
    bad = sorted(rig.backoffice.unknown_uprns)[0]
    case["location"]["uprn"] = case["customer"]["address"]["uprn"] = bad
    ref = take_in(rig.rt, case, deliver=False)
    assert deliver_case(rig.rt, ref).kind == "dead"
    with session_scope(rig.url) as s:
        dead_id = s.scalar(select(DeadLetterRow.id).where(DeadLetterRow.hub_ref == ref))
    log_in(driver, server, "olive")
    driver.get(f"{server.url}/console/queues")
    row = wait_for(driver, f"#dead-{dead_id}")
    assert ref in row.text and "refused" in row.text and "UPRN" in row.text
    assert "hubbridge.deliver" in text_of(driver, "#queues")
    screenshot(driver, "queues")
    row.find_element(By.LINK_TEXT, "Replay").click()
    wait_for(driver, "#confirm")
    screenshot(driver, "replay-confirm")
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is None, "nothing happens before confirming"
    rig.backoffice.unknown_uprns.discard(bad)  # the address gazetteer was corrected in the back office
    try:
        driver.find_element(By.ID, "confirm").click()
        assert f"case {ref} queued for delivery again" in text_of(driver, "#action-result")
        # the worker's part, done here in-process: the case is due now and is delivered once
        assert deliver_case(rig.rt, ref).kind == "done"
        assert push_hub(rig.rt, ref).kind == "done"
    finally:
        rig.backoffice.unknown_uprns.add(bad)
    driver.find_element(By.LINK_TEXT, f"Look at case {ref}").click()
    assert text_of(driver, "#case-status") == "delivered"
    assert "dead_letter.replayed" in text_of(driver, "#trail")
    assert rig.backoffice.store.count_by_hub_ref().get(ref) == 1


def test_a_breach_appears_on_the_sla_dashboard(site: Any) -> None:
    rig, server, driver = site
    refs = [take_in(rig.rt, c) for c in cases_of("refuse.missed-collection", 3)]
    refs += [take_in(rig.rt, c) for c in cases_of("refuse.bulky-waste", 2)]
    log_in(driver, server, "olive")
    driver.get(f"{server.url}/console/sla")
    assert int(text_of(driver, "#tile-resolve .n-breached")) == 0
    assert int(text_of(driver, "#tile-resolve .n-volume")) == len(refs)
    # the SLA engine's sweep, on a clock two months ahead: every open clock has run out
    with session_scope(rig.url) as s:
        rig.rt.sla.sweep(s, datetime.now(UTC) + timedelta(days=60))
    driver.refresh()
    breached = int(text_of(driver, "#tile-resolve .n-breached"))
    assert breached == len(refs)
    bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect.bar-breach")
    assert any(float(b.get_attribute("height") or 0) > 0 for b in bars), "the breach shows in the chart"
    assert "refuse.bulky-waste" in text_of(driver, "#sla-table")
    screenshot(driver, "sla")
    # a service-area user sees the same dashboard for their service only
    driver.delete_all_cookies()
    log_in(driver, server, "rufus")
    driver.get(f"{server.url}/console/sla")
    assert int(text_of(driver, "#tile-resolve .n-volume")) == 3
    assert "refuse.bulky-waste" not in text_of(driver, "#sla-table")


def test_customer_tracks_a_case_and_a_wrong_postcode_is_refused(site: Any) -> None:
    rig, server, driver = site
    case = cases_of("refuse.missed-collection")[0]
    ref = take_in(rig.rt, case)
    postcode = case["customer"]["address"]["postcode"]
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        driver.get(f"{server.url}/track")
        wait_for(driver, "#ref").send_keys(ref)
        driver.find_element(By.ID, "postcode").send_keys(postcode.lower())
        screenshot(driver, "track-form", phone=True)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        assert text_of(driver, "#track-status") == "With the service team"
        assert text_of(driver, "#track-expected")[-4:].isdigit()
        page = str(driver.find_element(By.TAG_NAME, "main").text)
        for personal in (case["customer"]["name"], case["customer"]["phone"], case["customer"]["address"]["line1"],
                         postcode):
            assert personal not in page
        screenshot(driver, "track", phone=True)
        driver.get(f"{server.url}/track")
        wait_for(driver, "#ref").send_keys(ref)
        other = "WR1 1AA" if postcode != "WR1 1AA" else "B60 1AA"
        driver.find_element(By.ID, "postcode").send_keys(other)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        refusal = text_of(driver, "#track-refused")
        assert "could not find" in refusal
        assert ref not in str(driver.find_element(By.TAG_NAME, "main").text)
        screenshot(driver, "track-refused", phone=True)
    finally:
        with contextlib.suppress(Exception):
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
