"""The served dashboard in a real headless Chromium: forecast chart, scenario switch, rising risk.

Starts the inference daemon (committed demo bundle), the generator stream (0.3 s per step, with
history so forecasts come at once) and ``workbench dashboard`` (Voilà) on free loopback ports,
through the demo's own supervisor, opens the page with Playwright driving Debian's
``/usr/bin/chromium`` (``make browser`` installs it; Playwright never downloads a browser), waits
for the fan chart, checks that the healthy fleet is quiet when the ground truth has no incident
running, clicks "critical" and checks that the incident probability rises on the page
and at the daemon. A screenshot is saved under ``tests/artifacts/`` whatever the outcome.
"""

import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from workbench.demo import DemoSettings, demo_children
from workbench.service.supervisor import Supervisor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
PAGE_TIMEOUT_MS = 240_000  # Voilà starts a kernel and runs the notebook: slow on 2 busy cores
QUIET_SAMPLES, QUIET_WAIT_SECONDS = 5, 120
RISE_SECONDS = 180  # 600 simulated steps (50 hours) at 0.3 s per step
P8H = re.compile(r"Incident probability \(8 h\):\s*([0-9.]+)\s*%")
# True once the fan chart holds data: a plotly element whose traces have points, not only axes.
CHART_HAS_DATA = """() => [...document.querySelectorAll('.wb-server-view .js-plotly-plot')]
    .some(el => (el.data || []).some(t => (t.y || []).length > 0))"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSettings]:
    daemon, generator, dashboard = free_ports(3)
    settings = DemoSettings(
        bundle=ROOT / "models" / "demo",
        daemon_port=daemon,
        generator_port=generator,
        dashboard_port=dashboard,
        servers=8,
        seed=0,
        tick=0.3,
        history=48,
        log_dir=tmp_path_factory.mktemp("demo") / "logs",
        notebook=ROOT / "notebooks" / "dashboard.ipynb",
        log_level="warning",
    )
    supervisor = Supervisor(demo_children(settings), settings.log_dir, start_timeout=240, grace=5)
    try:
        supervisor.start()
        yield settings
        for child in supervisor.children:  # a service that died during the test is a failure
            assert child.process.poll() is None, child.failure("died during the test")
    finally:
        supervisor.stop()


def chromium_or_fail() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium); this test must not skip")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'")


class Risk:
    """The daemon's fleet 8-hour incident probability and per-server risk scores, highest seen so far."""

    def __init__(self, settings: DemoSettings) -> None:
        self.url = f"{settings.url(settings.daemon_port)}/predictions/current"
        self.p8h = 0.0
        self.scores: dict[str, float] = {}

    def sample(self) -> None:
        doc = httpx.get(self.url, timeout=10).json()
        self.p8h = max(self.p8h, float(doc["environment"]["incident_probability_8h"]))
        for server, risk in doc["server_risk"].items():
            self.scores[server] = max(self.scores.get(server, 0.0), risk.get("risk_score") or 0.0)

    def rose_above(self, before: "Risk", servers: list[str]) -> bool:
        """Whether the fleet probability clearly rose, or the risk score of one of ``servers`` did."""
        fleet = self.p8h >= max(3 * before.p8h, before.p8h + 0.03)
        return fleet or any(self.scores.get(s, 0.0) >= before.scores.get(s, 0.0) + 20 for s in servers)


def page_p8h(page) -> float | None:
    match = P8H.search(page.inner_text(".wb-env-p8h"))
    return float(match.group(1)) / 100 if match else None


def test_the_dashboard_shows_forecasts_and_risk_rises_after_critical(live: DemoSettings) -> None:
    chromium_or_fail()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{live.url(live.dashboard_port)}/", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector(".wb-dashboard", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector(".wb-server-view .js-plotly-plot", timeout=PAGE_TIMEOUT_MS)
            wait_for_chart_data(page, errors)
            page.wait_for_function(
                "document.querySelector('.wb-status') && /live/i.test(document.querySelector('.wb-status').innerText)",
                timeout=60_000,
            )
            assert page_p8h(page) is not None, page.inner_text(".wb-env-p8h")
            quiet_fleet_is_quiet(live)
            page_before = peak(lambda: page_p8h(page) or 0.0, samples=3, pause=1.0)
            before = Risk(live)
            for _ in range(3):
                before.sample()
                time.sleep(0.5)
            page.click(".wb-scenario-critical")
            page.wait_for_function(
                "/critical/i.test(document.querySelector('.wb-scenario-active').innerText)", timeout=30_000
            )
            status = httpx.get(f"{live.url(live.generator_port)}/scenario/status", timeout=10).json()
            assert status["scenario"] == "critical" and status["affected_servers"]
            after, page_peak = rising(page, live, before, page_before, status["affected_servers"])
            assert after.rose_above(before, status["affected_servers"]), (before.__dict__, after.__dict__)
            assert page_peak >= page_before + 0.01, (page_before, page_peak)
        finally:
            page.screenshot(path=str(ARTIFACTS / "dashboard_e2e.png"), full_page=True)
            browser.close()


def quiet_fleet_is_quiet(live: DemoSettings) -> None:
    """In the healthy scenario, when the ground truth has no incident near the forecast's data
    time (none from an hour before it to 30 minutes after it, precursor to recovery), the fleet's
    30-min incident probability stays below 0.1 and no server has a critical alert.

    The forecast lags the stream under load, so the truth is read at the forecast's own data
    time. Waits (up to QUIET_WAIT_SECONDS) for such moments: the healthy scenario has incidents too.
    """
    daemon, generator = live.url(live.daemon_port), live.url(live.generator_port)
    quiet: list[tuple[float, list[dict]]] = []
    deadline = time.monotonic() + QUIET_WAIT_SECONDS
    while len(quiet) < QUIET_SAMPLES and time.monotonic() < deadline:
        doc = httpx.get(f"{daemon}/predictions/current", timeout=10).json()
        alerts = httpx.get(f"{daemon}/alerts/active", timeout=10).json()["alerts"]
        truth = httpx.get(f"{generator}/scenario/status", timeout=10).json()
        assert truth["scenario"] == "healthy", truth
        data_time = doc["metadata"].get("data_time")
        if data_time and not near(truth["recent_incidents"], datetime.fromisoformat(data_time)):
            quiet.append((float(doc["environment"]["incident_probability_30m"]), alerts))
        time.sleep(0.5)
    assert len(quiet) == QUIET_SAMPLES, f"no quiet moment in the healthy fleet within {QUIET_WAIT_SECONDS} s"
    p30m = sorted(p for p, _ in quiet)[len(quiet) // 2]
    assert p30m < 0.1, [p for p, _ in quiet]
    critical = [a for _, alerts in quiet for a in alerts if a["severity"] == "critical"]
    assert not critical, critical


def near(incidents: list[dict], at: datetime) -> list[dict]:
    """The incidents whose course (precursor to recovery) meets ``at`` - 1 h .. ``at`` + 30 min."""
    lo, hi = at - timedelta(hours=1), at + timedelta(minutes=30)
    return [
        i for i in incidents
        if datetime.fromisoformat(i["precursor_start"]) <= hi and datetime.fromisoformat(i["recovered"]) > lo
    ]  # fmt: skip


def wait_for_chart_data(page, errors: list[str]) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(CHART_HAS_DATA, timeout=60_000)
    except PlaywrightTimeout:
        pytest.fail(f"the fan chart shows axes but no forecast after 60 s; page errors: {errors or 'none'}")


def peak(read, *, samples: int, pause: float) -> float:
    values = []
    for _ in range(samples):
        values.append(read())
        time.sleep(pause)
    return max(values)


def rising(page, live: DemoSettings, before: Risk, page_before: float, affected: list[str]) -> tuple[Risk, float]:
    """Poll the daemon and the page until both show a clear rise or RISE_SECONDS pass; return the peaks."""
    after, page_peak = Risk(live), page_before
    deadline = time.monotonic() + RISE_SECONDS
    while time.monotonic() < deadline:
        after.sample()
        page_peak = max(page_peak, page_p8h(page) or 0.0)
        if after.rose_above(before, affected) and page_peak >= page_before + 0.01:
            time.sleep(1)  # let the chart settle for the screenshot
            break
        time.sleep(0.5)
    return after, page_peak
