"""The dashboard widgets, driven by a fake daemon client (no network, no browser), and its launcher."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta

import httpx
import ipywidgets as w
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.dashboard import DaemonClient, FleetDashboard, launch
from workbench.dashboard import defaults as d
from workbench.dashboard.documents import parse_time, plot_time
from workbench.dashboard.environment import gauge_style
from workbench.dashboard.server import TRACES
from workbench.errors import ConfigError, DaemonError, DaemonUnreachable
from workbench.thresholds import Thresholds

H = 96
DATA_TIME = "2025-01-06T10:00:00+00:00"


def tft(level: float, spread: float = 5.0) -> dict:
    return {
        "p10": [level - spread + 0.01 * k for k in range(H)],
        "p50": [level + 0.01 * k for k in range(H)],
        "p90": [level + spread + 0.01 * k for k in range(H)],
        "current": level,
        "trend": 0.12,
        "source": "tft",
    }


def warming(steps: int = 3, needed: int = 12) -> dict:
    return {"source": "warming_up", "history_steps": steps, "needed_steps": needed}


def document(risks: dict[str, float | None], alerts: list[dict] | None = None, p8h: float = 0.42) -> dict:
    """A ``/predictions/current`` document: a score makes a TFT server, ``None`` a warming-up one."""
    predictions, server_risk = {}, {}
    for name, score in risks.items():
        if score is None:
            predictions[name] = {m: warming() for m in ("cpu_pct", "mem_pct")}
            server_risk[name] = {"risk_score": None, "driver": None, "source": "warming_up"}
        else:
            predictions[name] = {"cpu_pct": tft(50 + score / 4), "mem_pct": tft(40)}
            profile = "database" if name.startswith("ppdb") else "web_api"
            server_risk[name] = {"risk_score": score, "driver": "cpu_pct", "profile": profile}
    ready = [s for s in risks if risks[s] is not None]
    return {
        "predictions": predictions,
        "alerts": alerts or [],
        "environment": {
            "incident_probability_30m": 0.1,
            "incident_probability_8h": p8h,
            "high_risk_servers": sum(1 for s in ready if risks[s] >= 70),
            "total_servers": len(risks),
            "fleet_health": "degraded",
        },
        "server_risk": server_risk,
        "metadata": {
            "model_type": "TFT",
            "bundle": "tiny",
            "contract_version": "1.0.0",
            "prediction_time": "2026-11-25T14:00:00+00:00",
            "data_time": DATA_TIME if ready else None,
            "horizon_steps": H,
            "device": "cpu",
            "status": "ok" if ready else "warming_up",
            "message": None,
        },
    }


def alert(server: str, severity: str = "critical") -> dict:
    return {
        "server": server,
        "metric": "cpu_pct",
        "severity": severity,
        "predicted_value": 97.5,
        "threshold": 95.0,
        "minutes_ahead": 35,
        "probability": 0.81,
    }


def summary_of(doc: dict) -> dict:
    """The ``?view=summary`` form of a document (the daemon's shape, figures at 30 min, 2 h and 8 h)."""
    servers = {}
    for name, metrics in doc["predictions"].items():
        first = next(iter(metrics.values()))
        profile = doc["server_risk"][name].get("profile") or "generic"
        if first["source"] != "tft":
            servers[name] = {"profile": profile, **first}
            continue
        figures = {
            metric: {
                "current": e["current"],
                "p50": [e["p50"][k] for k in (5, 23, 95)],
                "p90": [e["p90"][k] for k in (5, 23, 95)],
                "p90_max": max(e["p90"]),
                "p90_max_minutes": 5 * (e["p90"].index(max(e["p90"])) + 1),
            }
            for metric, e in metrics.items()
        }
        servers[name] = {"profile": profile, "source": "tft", "metrics": figures}
    rest = {key: value for key, value in doc.items() if key != "predictions"}
    return {"servers": servers, **rest, "view": "summary", "lead_minutes": [30, 120, 480]}


class FakeClient:
    """Serves canned documents; ``down`` makes every daemon call fail as a dead daemon would."""

    daemon_url = "http://fake-daemon:8000"
    generator_url = "http://fake-generator:8001"

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.down = False
        self.scenario = "healthy"
        self.scenario_calls: list[str] = []
        self.history_calls: list[str] = []
        self.reads: list[str] = []  # "summary", or the servers asked for in full

    def _check(self) -> None:
        if self.down:
            raise DaemonUnreachable(f"cannot reach {self.daemon_url}: ConnectError", url=self.daemon_url)

    def predictions(self, servers: list[str] | None = None) -> dict:
        self._check()
        self.reads.append("all" if servers is None else ",".join(servers))
        doc = copy.deepcopy(self.doc)
        if servers is not None:
            for key in ("predictions", "server_risk"):
                doc[key] = {n: v for n, v in doc[key].items() if n in servers}
            doc["alerts"] = [a for a in doc["alerts"] if a["server"] in servers]
        return doc

    def summary(self) -> dict:
        self._check()
        self.reads.append("summary")
        return summary_of(copy.deepcopy(self.doc))

    def status(self) -> dict:
        self._check()
        rows = self.doc["predictions"].values()
        ready = sum(1 for r in rows if r["cpu_pct"]["source"] == "tft")
        total = len(self.doc["predictions"])
        return {
            "warmup": {
                "is_warmed_up": ready == total and total > 0,
                "progress_percent": 50.0,
                "threshold": 12,
                "ready_servers": ready,
                "total_servers": total,
            }
        }

    def history(self, server: str, steps: int) -> dict:
        self._check()
        self.history_calls.append(server)
        end = parse_time(DATA_TIME)
        times = [(end - timedelta(minutes=5 * (steps - 1 - k))).isoformat() for k in range(steps)]
        return {
            "server": server,
            "profile": "database" if server.startswith("ppdb") else "web_api",
            "timestamps": times,
            "metrics": {"cpu_pct": [30.0 + k for k in range(steps)], "mem_pct": [40.0] * steps},
            "forecast_start": (end + timedelta(minutes=5)).isoformat(),
        }

    def archived(self, params: dict) -> dict:  # GET /history: this fake daemon keeps no history
        self._check()
        raise DaemonError(f"GET {self.daemon_url}/history answered 404: no history", url=self.daemon_url, status=404)

    def set_scenario(self, name: str) -> dict:
        self.scenario_calls.append(name)
        if name == "broken":
            raise DaemonError("POST /scenario/set answered 422: unknown scenario", url=self.generator_url, status=422)
        self.scenario = name
        return {"status": "success", "old_scenario": "healthy", "new_scenario": name}

    def scenario_status(self) -> dict:
        return {"scenario": self.scenario}


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient(document({"ppdb001": 85.0, "ppweb002": 20.0, "ppweb003": 50.0}))


@pytest.fixture
def dash(fake) -> FleetDashboard:
    board = FleetDashboard(fake, history_steps=24)
    board.refresh()
    yield board
    board.close()


def dom_classes(widget) -> set[str]:
    found = set(getattr(widget, "_dom_classes", ()))
    for child in getattr(widget, "children", ()):
        found |= dom_classes(child)
    return found


def widget_tree_size(widget) -> int:
    return 1 + sum(widget_tree_size(child) for child in getattr(widget, "children", ()))


# ---------------------------------------------------------------------- fleet overview


def test_tiles_recolour_when_risk_changes_and_are_reused(dash, fake):
    tile = dash.fleet.tiles["ppweb002"]
    assert tile.style.button_color == d.GREEN and dash.fleet.tiles["ppdb001"].style.button_color == d.RED
    assert dash.fleet.tiles["ppweb003"].style.button_color == d.AMBER
    fake.doc = document({"ppdb001": 85.0, "ppweb002": 92.0, "ppweb003": 50.0})
    dash.refresh()
    assert dash.fleet.tiles["ppweb002"] is tile and tile.style.button_color == d.RED
    assert "92" in tile.description


def test_tiles_sort_by_risk_or_name_and_filter_by_profile(dash):
    assert dash.fleet.shown == ["ppdb001", "ppweb003", "ppweb002"]
    dash.fleet.sort_by = "name"
    assert dash.fleet.shown == ["ppdb001", "ppweb002", "ppweb003"]
    dash.fleet.profile = "web_api"
    assert dash.fleet.shown == ["ppweb002", "ppweb003"]
    dash.fleet.profile = "all"
    assert len(dash.fleet.shown) == 3


def test_a_server_that_leaves_loses_its_tile(dash, fake):
    gone = dash.fleet.tiles["ppweb003"]
    fake.doc = document({"ppdb001": 85.0, "ppweb002": 20.0})
    dash.refresh()
    assert "ppweb003" not in dash.fleet.tiles and gone.comm is None  # closed, not leaked


# ---------------------------------------------------------------------- alerts


def test_alert_rows_appear_and_clear(dash, fake):
    assert dash.alerts.row_count == 0
    fake.doc = document({"ppdb001": 85.0, "ppweb002": 20.0}, alerts=[alert("ppdb001"), alert("ppweb002", "warning")])
    dash.refresh()
    assert dash.alerts.row_count == 2
    html = dash.alerts.html
    for text in ("critical", "ppdb001", "cpu_pct", "97.5 % vs 95.0 %", "35 min", "81.0 %", "warning"):
        assert text in html
    fake.doc = document({"ppdb001": 85.0, "ppweb002": 20.0}, alerts=[alert("ppweb002", "warning")])
    dash.refresh()
    assert dash.alerts.row_count == 1 and "ppdb001" not in dash.alerts.html
    fake.doc = document({"ppdb001": 85.0, "ppweb002": 20.0})
    dash.refresh()
    assert dash.alerts.row_count == 0


# ---------------------------------------------------------------------- server view


def test_the_riskiest_server_is_shown_first_with_its_fan(dash, fake):
    assert dash.fleet.selected_server == "ppdb001"
    view, entry = dash.server_view, fake.doc["predictions"]["ppdb001"]["cpu_pct"]
    assert list(view.trace("p50").y) == entry["p50"]
    assert list(view.trace("p10").y) == entry["p10"] and list(view.trace("p90").y) == entry["p90"]
    first = plot_time(parse_time(DATA_TIME) + timedelta(minutes=5))
    assert view.trace("p50").x[0] == first and len(view.trace("p50").x) == H
    history = fake.history("ppdb001", 24)
    assert list(view.trace("history").y) == history["metrics"]["cpu_pct"]
    assert view.trace("history").x[-1] == plot_time(parse_time(DATA_TIME))
    level = Thresholds().level("cpu_pct", "database")
    assert set(view.trace("warning").y) == {level.warning} and set(view.trace("critical").y) == {level.critical}
    assert view.figure.layout.shapes[0].x0 == plot_time(parse_time(DATA_TIME))  # the "now" marker


def test_clicking_or_choosing_a_server_drills_down(dash, fake):
    dash.fleet.tiles["ppweb002"].click()
    assert dash.fleet.selected_server == "ppweb002" and fake.history_calls[-1] == "ppweb002"
    assert list(dash.server_view.trace("p50").y) == fake.doc["predictions"]["ppweb002"]["cpu_pct"]["p50"]
    assert "ppweb002" in dash.server_view.title
    dash.fleet._choose.value = "ppweb003"
    assert dash.fleet.selected_server == "ppweb003"
    assert list(dash.server_view.trace("p50").y) == fake.doc["predictions"]["ppweb003"]["cpu_pct"]["p50"]
    dash.server_view.metric = "mem_pct"
    assert list(dash.server_view.trace("p50").y) == fake.doc["predictions"]["ppweb003"]["mem_pct"]["p50"]
    assert list(dash.server_view.trace("history").y) == [40.0] * 24


def test_the_fleet_reads_the_summary_and_only_the_selected_server_in_full(dash, fake):
    assert fake.reads == ["summary", "ppdb001"]  # the riskiest, drawn first
    dash.fleet.tiles["ppweb002"].click()
    dash.refresh()
    assert fake.reads[2:] == ["ppweb002", "summary", "ppweb002"] and "all" not in fake.reads
    assert dash.fleet.tiles["ppdb001"].description == "ppdb001 85" and dash.fleet.shown[0] == "ppdb001"


def test_warming_up_servers_show_no_fan(fake):
    fake.doc = document({"ppdb001": 85.0, "ppweb009": None})
    board = FleetDashboard(fake, history_steps=6)
    board.refresh()
    assert board.fleet.tiles["ppweb009"].style.button_color == d.GREY
    assert "warming up" in board.fleet.tiles["ppweb009"].description
    board.fleet.tiles["ppweb009"].click()
    for q in ("p10", "p50", "p90"):
        assert len(board.server_view.trace(q).x) == 0 and len(board.server_view.trace(q).y) == 0
    assert "warming up: 3/12" in board.server_view.title
    assert len(board.server_view.trace("history").y) == 6  # real history is still shown
    board.close()


def test_a_fleet_still_warming_up_says_so_and_draws_nothing(fake):
    fake.doc = document({"ppweb008": None, "ppweb009": None})
    board = FleetDashboard(fake)
    board.refresh()
    assert board.state == "warming_up" and "warming up 0/2 servers" in board.banner.value
    assert board.fleet.selected_server is None and len(board.server_view.trace("p50").y) == 0
    assert board.environment.warming_up and "0/2" in board.environment.warmup_label.value
    board.close()


# ---------------------------------------------------------------------- banner, environment, scenario


def test_live_banner_and_environment(dash):
    assert dash.state == "live" and "live" in dash.banner.value and "3 servers forecast" in dash.message
    assert "Incident probability (8 h): <b>42.0 %</b>" in dash.environment.p8h.value
    assert "Incident probability (30 min): <b>10.0 %</b>" in dash.environment.p30m.value
    assert "degraded" in dash.environment.health.value and not dash.environment.warming_up
    assert dash.environment.gauges[1].value == pytest.approx(42.0)


@pytest.mark.parametrize(
    ("p", "healthy", "style"),
    [
        (0.45, 0.40, "success"),  # a 12-server fleet on an ordinary day: high figure, normal for its size
        (0.60, 0.40, "warning"),  # a third of the room above the healthy figure
        (0.75, 0.40, "danger"),
        (0.15, 0.01, "success"),  # far above a small fleet's figure, still below the fixed elevated level
        (0.30, 0.01, "warning"),
        (0.60, None, "danger"),  # no healthy figure: the fixed levels alone
        (0.30, None, "warning"),
        (0.10, None, "success"),
    ],
)
def test_gauges_read_the_fleet_figure_against_a_healthy_fleet(p, healthy, style):
    assert gauge_style(p, healthy) == style


def test_environment_names_the_healthy_fleet_figure(dash, fake):
    fake.doc["environment"] = {
        **fake.doc["environment"],
        "incident_probability_8h": 0.45,
        "healthy_probability_8h": 0.4,
    }
    dash.refresh()
    assert "(healthy fleet: 40.0 %)" in dash.environment.p8h.value
    assert dash.environment.gauges[1].bar_style == "success"


def test_unreachable_daemon_keeps_the_last_data_greyed_and_recovers(dash, fake):
    colours = {n: t.style.button_color for n, t in dash.fleet.tiles.items()}
    fan = list(dash.server_view.trace("p50").y)
    fake.down = True
    dash.refresh()
    assert dash.state == "unreachable" and "unreachable" in dash.banner.value and fake.daemon_url in dash.message
    assert "wb-stale" in dash._dom_classes
    assert {n: t.style.button_color for n, t in dash.fleet.tiles.items()} == colours
    assert list(dash.server_view.trace("p50").y) == fan
    fake.down = False
    dash.refresh()
    assert dash.state == "live" and "wb-stale" not in dash._dom_classes


def test_scenario_buttons_call_the_generator(dash, fake):
    assert "healthy" in dash.scenario.label.value
    dash.scenario.buttons["critical"].click()
    assert fake.scenario_calls == ["critical"] and dash.scenario.active == "critical"
    assert "critical" in dash.scenario.label.value and dash.scenario.buttons["critical"].button_style == "danger"
    dash.scenario.buttons["degrading"].click()
    assert fake.scenario_calls == ["critical", "degrading"] and dash.scenario.buttons["critical"].button_style == ""
    dash.scenario.switch("broken")
    assert dash.scenario.active == "degrading" and "422" in dash.scenario.error


def test_dom_hooks_for_the_browser_test(dash):
    hooks = {"wb-dashboard", "wb-status", "wb-fleet", "wb-alerts", "wb-server-view", "wb-environment"}
    hooks |= {"wb-env-p8h", "wb-env-p30m", "wb-scenario-active"}
    hooks |= {f"wb-scenario-{name}" for name in ("healthy", "degrading", "critical")}
    assert hooks <= dom_classes(dash)


def test_refreshing_does_not_grow_traces_or_widgets(dash, fake):
    dash.refresh()
    traces, tree = len(dash.server_view.figure.data), widget_tree_size(dash)
    instances = len(w.widgets.widget._instances)
    for k in range(15):
        fake.doc = document({"ppdb001": 85.0 - k, "ppweb002": 20.0 + k, "ppweb003": 50.0}, alerts=[alert("ppdb001")])
        dash.refresh()
    assert len(dash.server_view.figure.data) == traces == len(TRACES)  # one trace each, never more
    assert widget_tree_size(dash) == tree and len(w.widgets.widget._instances) == instances


def test_the_live_loop_refreshes_without_blocking_and_stops():
    fake = FakeClient(document({"ppdb001": 85.0}))
    board = FleetDashboard(fake)

    async def scenario():
        board.start(0.02)
        assert board.running
        await asyncio.sleep(0.4)
        board.stop()
        done = board.refreshes
        await asyncio.sleep(0.1)
        return done

    done = asyncio.run(scenario())
    assert done >= 3 and board.refreshes == done and not board.running
    with pytest.raises(ConfigError, match="positive"):
        asyncio.run(_start(board, 0))
    with pytest.raises(RuntimeError):
        board.start(1.0)  # no running event loop here
    board.close()


async def _start(board, interval):
    board.start(interval)


# ---------------------------------------------------------------------- client


def _client(handler, **kwargs) -> DaemonClient:
    transport = httpx.MockTransport(handler)
    return DaemonClient(
        "http://daemon:1",
        "http://gen:2",
        daemon_http=httpx.Client(transport=transport),
        generator_http=httpx.Client(transport=transport),
        **kwargs,
    )


def test_client_names_the_url_when_the_daemon_is_down_or_refuses():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(DaemonUnreachable, match="http://daemon:1/predictions/current"):
        _client(refuse).predictions()

    def not_found(request):
        return httpx.Response(404, json={"detail": "unknown server 'x'"})

    with pytest.raises(DaemonError, match="404: unknown server") as info:
        _client(not_found).history("x", 3)
    assert info.value.status == 404 and not isinstance(info.value, DaemonUnreachable)


def test_client_requests_and_environment_defaults(monkeypatch):
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    client = _client(handler, api_key="k3y")
    client.history("ppdb:001", 12)
    client.set_scenario("critical")
    client.summary()
    client.predictions(servers=["ppdb001", "ppweb002"])
    client.predictions()
    assert seen[2].url.params["view"] == "summary" and "gzip" in seen[2].headers["accept-encoding"]
    assert seen[3].url.params.get_list("server") == ["ppdb001", "ppweb002"] and not seen[4].url.params
    assert seen[0].url.path == "/history/ppdb%3A001" or seen[0].url.raw_path.startswith(b"/history/ppdb%3A001")
    assert seen[0].url.params["steps"] == "12"
    assert seen[1].headers["X-API-Key"] == "k3y" and seen[1].url.host == "gen"
    monkeypatch.setenv(d.DAEMON_URL_ENV, "http://elsewhere:9000/")
    monkeypatch.setenv(d.API_KEY_ENV, "from-env")
    monkeypatch.delenv(d.GENERATOR_URL_ENV, raising=False)
    env_client = DaemonClient()
    assert env_client.daemon_url == "http://elsewhere:9000" and env_client.generator_url == d.GENERATOR_URL
    assert env_client.api_key == "from-env"


# ---------------------------------------------------------------------- launcher


def test_voila_command_line_and_environment(tmp_path):
    nb = tmp_path / "dash.ipynb"
    settings = launch.DashboardSettings(nb, port=9001, daemon_url="http://a:1", generator_url="http://b:2")
    command = launch.voila_command(settings, python="py")
    assert command[:4] == ["py", "-m", "voila", str(nb)]
    for option in ("--port=9001", "--Voila.ip=127.0.0.1", "--no-browser", "--theme=light", "--show_tracebacks=False"):
        assert option in command
    assert "--Voila.port_retries=0" in command
    assert any(o.startswith("--VoilaConfiguration.file_allowlist=") for o in command)
    assert "--no-browser" not in launch.voila_command(launch.DashboardSettings(nb, open_browser=True))
    env = launch.voila_environment(settings, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", d.DAEMON_URL_ENV: "http://a:1", d.GENERATOR_URL_ENV: "http://b:2"}
    assert settings.url == "http://127.0.0.1:9001/"
    with pytest.raises(ConfigError, match="port"):
        launch.DashboardSettings(nb, port=0)
    with pytest.raises(ConfigError, match="http://"):
        launch.DashboardSettings(nb, daemon_url="localhost:8000")


def test_dashboard_command_prints_the_url_and_runs_voila(monkeypatch, tmp_path):
    nb = tmp_path / "dash.ipynb"
    nb.write_text("{}")
    ran = []
    monkeypatch.setattr(launch, "run", lambda settings: ran.append(settings) or 0)
    monkeypatch.delenv(d.GENERATOR_URL_ENV, raising=False)
    args = ["dashboard", "--port", "8870", "--daemon", "http://d:1", "--notebook", str(nb)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8870/" in result.output
    assert ran[0].daemon_url == "http://d:1" and ran[0].generator_url == d.GENERATOR_URL and not ran[0].open_browser


def test_run_refuses_a_missing_notebook(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        launch.run(launch.DashboardSettings(tmp_path / "none.ipynb"))


# ---------------------------------------------------------------------- the real daemons, in process


@pytest.mark.slow
def test_the_dashboard_reads_what_the_real_daemons_serve(tiny_bundle_dir):
    import time

    from fastapi.testclient import TestClient

    from workbench.model import load_bundle
    from workbench.service.generator_app import create_generator_app
    from workbench.service.inference_app import create_app
    from workbench.service.settings import GeneratorSettings, InferenceSettings

    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    settings = InferenceSettings(
        bundle=tiny_bundle_dir, state_dir=None, device="cpu", poll_seconds=0.02, forecast_worker="thread"
    )
    servers, steps = 4, bundle.spec.min_encoder_length + 3

    def wait_for(predicate, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError("condition not met in time")

    with TestClient(create_app(settings, bundle=bundle)) as daemon:

        def forward(request: httpx.Request) -> httpx.Response:  # the generator's POSTs, into the daemon
            answer = daemon.post(request.url.path, content=request.content, headers=dict(request.headers))
            return httpx.Response(answer.status_code, content=answer.content)

        gen_settings = GeneratorSettings(
            target="http://daemon", servers=servers, tick=0.3, steps=steps, log_level="warning"
        )
        generator_app = create_generator_app(gen_settings, transport=httpx.MockTransport(forward))
        generator = TestClient(generator_app)
        client = DaemonClient("http://daemon", "http://generator", daemon_http=daemon, generator_http=generator)
        board = FleetDashboard(client)
        board.refresh()
        assert board.state == "warming_up" and "no data" in board.message
        with generator:
            wait_for(lambda: board.refresh() or (board.state == "warming_up" and board.fleet.servers))
            assert len(board.server_view.trace("p50").y) == 0 and "warming up" in board.banner.value
            wait_for(lambda: board.refresh() or board.state == "live")
            wait_for(lambda: generator_app.state.generator.steps_sent == steps)
            last = parse_time("2025-01-06T00:00:00Z") + timedelta(minutes=5 * (steps - 1))
            wait_for(lambda: client.predictions()["metadata"]["data_time"] == last.isoformat())
            board.refresh()
            doc = client.predictions()
            assert set(board.fleet.tiles) == set(doc["predictions"]) and len(board.fleet.tiles) == servers
            chosen = board.fleet.selected_server
            score = doc["server_risk"][chosen]["risk_score"]
            assert score == max(r["risk_score"] for r in doc["server_risk"].values())
            assert board.fleet.tiles[chosen].style.button_color == d.risk_colour(score)
            view = board.server_view
            assert list(view.trace("p50").y) == doc["predictions"][chosen][view.metric]["p50"]
            assert view.trace("p50").x[0] == plot_time(last + timedelta(minutes=5))
            assert view.trace("history").x[-1] == plot_time(last) and len(view.trace("history").y) == steps
            assert "Incident probability (8 h)" in board.environment.p8h.value and "%" in board.environment.p8h.value
            board.scenario.buttons["critical"].click()
            assert board.scenario.error == "" and board.scenario.active == "critical"
            assert client.scenario_status()["scenario"] == "critical"
        board.close()


def test_the_fan_is_sent_again_when_the_page_first_shows_it(dash, fake):
    figure, sent = dash.server_view.figure, []
    figure.observe(lambda change: sent.append(change["new"]), "_py2js_update")
    dash.refresh()  # nothing changed: plotly sends nothing
    assert [m for m in sent if m] == []
    figure._view_count = 1  # what the browser reports once Voilà's page shows the figure
    updates = [m for m in sent if m]
    p50 = TRACES.index("p50")
    assert (
        len(updates) == 2
        and list(updates[-1]["style_data"]["y"][p50]) == fake.doc["predictions"]["ppdb001"]["cpu_pct"]["p50"]
    )


def test_the_fan_chart_draws_the_levels_the_daemon_alerts_on(dash, fake):
    assert dash.server_view.thresholds.level("cpu_pct", "web_api").critical == 95.0
    doc = document({"ppdb001": 85.0, "ppweb002": 20.0})
    doc["metadata"]["thresholds"] = {"levels": {"cpu_pct": {"warning": 70.0, "critical": 90.0}}}
    fake.doc = doc
    dash.refresh()
    assert dash.server_view.thresholds.level("cpu_pct", "web_api").critical == 90.0
    doc["metadata"]["thresholds"] = {"levels": {"cpu_pct": {"warning": 99.0, "critical": 90.0}}}  # refused: kept
    dash.refresh()
    assert dash.server_view.thresholds.level("cpu_pct", "web_api").critical == 90.0


def test_alert_rows_speak_in_words_with_their_rule_and_a_legend(dash, fake):
    words = {**alert("ppdb001"), "rule": "calibrated", "summary": "cpu_pct likely to pass 95 % in ~35 min (p = 0.81)"}
    fake.doc = document({"ppdb001": 85.0}, alerts=[words])
    dash.refresh()
    assert "cpu_pct likely to pass 95 % in ~35 min (p = 0.81)" in dash.alerts.html
    assert "learned from ground truth" in dash.alerts.html  # the calibrated rule's legend


def test_the_environment_says_whether_probabilities_are_calibrated(dash, fake):
    for kind in ("calibrated", "uncalibrated"):
        doc = document({"ppdb001": 85.0})
        doc["environment"]["probabilities"] = kind
        fake.doc = doc
        dash.refresh()
        assert f"({kind})" in dash.environment.p30m.value
