"""Cheap reads of /predictions/current: gzip, filters by server and profile, the summary view."""

import gzip
import json
import socket
from multiprocessing.connection import Connection

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_service_app import SERVERS, feed, step_time, steps, wait_for

from workbench import contract as c
from workbench.alert_rules import make_rule
from workbench.alerts import AlertTracker
from workbench.forecast import Forecast
from workbench.model import load_bundle
from workbench.risk import risk
from workbench.service.compression import accepts_gzip
from workbench.service.documents import Documents
from workbench.service.inference_app import create_app
from workbench.service.reads import SUMMARY_STEPS, ReadQuery, reads_from_frames, reads_to_frames, significant
from workbench.service.settings import InferenceSettings
from workbench.service.worker import recv_frames, send_frames
from workbench.thresholds import Thresholds

NEWCOMER = "ppdb900"  # warming up, and fed with a profile its name does not imply
PLAIN = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture(scope="module")
def served(tiny_bundle_dir, tmp_path_factory):
    """A daemon that has forecast the stream's servers once, with one newcomer still warming up."""
    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    settings = InferenceSettings(
        bundle=tiny_bundle_dir,
        state_dir=tmp_path_factory.mktemp("reads") / "state",
        device="cpu",
        poll_seconds=0.02,
        forecast_worker="thread",
    )
    need = bundle.spec.min_encoder_length
    bodies = steps(need)
    last = json.loads(bodies[-1])
    newcomer = {**last["records"][0], "server_name": NEWCOMER, "profile": "ml_compute"}
    bodies[-1] = json.dumps({"records": [*last["records"], newcomer]}).encode()
    with TestClient(create_app(settings, bundle=bundle)) as client:
        feed(client, bodies)
        wait_for(lambda: _plain(client).get("metadata", {}).get("data_time") == step_time(need - 1))
        yield client


def _plain(client: TestClient, **params) -> dict:
    return client.get("/predictions/current", params=params, headers=PLAIN).json()


@pytest.fixture(scope="module")
def full(served) -> dict:
    doc = _plain(served)
    sources = {name: next(iter(entry.values()))["source"] for name, entry in doc["predictions"].items()}
    assert sources.pop(NEWCOMER) == "warming_up" and set(sources.values()) == {"tft"} and len(sources) == SERVERS
    return doc


# ---------------------------------------------------------------------- gzip


def test_a_gzip_answer_decodes_to_exactly_the_plain_document(served, full):
    plain = served.get("/predictions/current", headers=PLAIN)
    with served.stream("GET", "/predictions/current", headers=GZIP) as answer:
        raw = b"".join(answer.iter_raw())
        headers = answer.headers
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == plain.content  # compressed once, not twice
    assert len(raw) < len(plain.content) / 2
    assert served.get("/predictions/current", headers=GZIP).json() == full  # httpx decodes it


def test_a_client_without_accept_encoding_gets_plain_json(served, full):
    del served.headers["accept-encoding"]  # httpx sends gzip by default
    try:
        answer = served.get("/predictions/current")
    finally:
        served.headers["accept-encoding"] = "gzip, deflate"
    assert "content-encoding" not in answer.headers and answer.json() == full
    refused = served.get("/predictions/current", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.json() == full


def test_other_large_answers_are_compressed_small_ones_and_the_websocket_are_not(served):
    with served.stream("GET", "/openapi.json", headers=GZIP) as answer:
        raw = b"".join(answer.iter_raw())
        assert answer.headers["content-encoding"] == "gzip" and answer.headers["vary"] == "Accept-Encoding"
    assert json.loads(gzip.decompress(raw))["paths"]
    small = served.get("/health", headers=GZIP)
    assert "content-encoding" not in small.headers and small.json()["status"] == "healthy"
    with served.websocket_connect("/ws/predictions") as ws:
        assert set(json.loads(ws.receive_text())) == {"predictions", "alerts", "environment", "server_risk", "metadata"}


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*;q=0", False),
        ("identity", False),
        ("deflate", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    assert accepts_gzip(header) is accepted


# ---------------------------------------------------------------------- filters


def test_filter_by_server_keeps_those_servers_and_lists_unknown_ones(served, full):
    names = sorted(full["predictions"])[:2]
    doc = _plain(served, server=[*names, "nosuch01", names[0]])
    assert list(doc["predictions"]) == [n for n in full["predictions"] if n in names]
    assert doc["predictions"] == {n: full["predictions"][n] for n in names}
    assert doc["server_risk"] == {n: full["server_risk"][n] for n in names}
    assert doc["alerts"] == [a for a in full["alerts"] if a["server"] in names]
    assert doc["environment"] == full["environment"] and doc["metadata"] == full["metadata"]
    assert doc["filter"]["unknown_servers"] == ["nosuch01"] and doc["filter"]["matched"] == 2
    nobody = _plain(served, server="nosuch01")
    assert nobody["predictions"] == {} and nobody["server_risk"] == {} and nobody["alerts"] == []
    assert nobody["filter"]["unknown_servers"] == ["nosuch01"]


def test_filter_by_profile_uses_each_servers_own_profile(served, full):
    profile_of = {n: r["profile"] for n, r in full["server_risk"].items() if "profile" in r}
    chosen = profile_of[sorted(profile_of)[0]]
    doc = _plain(served, profile=[chosen, "ml_compute"])
    expected = {n for n, p in profile_of.items() if p in (chosen, "ml_compute")} | {NEWCOMER}  # fed as ml_compute
    assert set(doc["predictions"]) == expected and set(doc["server_risk"]) == expected
    assert doc["filter"] == {
        "servers": [],
        "profiles": [chosen, "ml_compute"],
        "matched": len(expected),
        "unknown_servers": [],
    }
    both = _plain(served, profile="ml_compute", server=[NEWCOMER, sorted(profile_of)[0]])
    assert set(both["predictions"]) == {NEWCOMER} | ({sorted(profile_of)[0]} if chosen == "ml_compute" else set())


def test_an_unknown_profile_or_view_is_refused_with_the_allowed_values(served):
    answer = served.get("/predictions/current", params={"profile": "mainframe"})
    assert answer.status_code == 422 and "web_api" in answer.json()["detail"]
    answer = served.get("/predictions/current", params={"view": "tiny"})
    assert answer.status_code == 422 and "summary" in answer.json()["detail"]


def test_filters_cut_alerts_of_other_servers():
    published = _published_with_alerts()
    reads, everything = published.reads, json.loads(published.body)
    alerted = {a["server"] for a in everything["alerts"]}
    assert alerted == {"ppweb001"} and len(everything["predictions"]) == 4
    doc = json.loads(reads.render(ReadQuery(servers=("ppdb002",))))
    assert doc["alerts"] == [] and list(doc["predictions"]) == ["ppdb002"]
    doc = json.loads(reads.render(ReadQuery(profiles=("web_api",))))
    assert doc["alerts"] == everything["alerts"] and list(doc["predictions"]) == ["ppweb001"]


# ---------------------------------------------------------------------- summary


def test_the_summary_is_small_and_holds_the_full_documents_figures(served, full):
    answer = served.get("/predictions/current", params={"view": "summary"}, headers=PLAIN)
    doc = answer.json()
    assert len(answer.content) < 0.1 * len(json.dumps(full, separators=(",", ":")))
    assert doc["view"] == "summary" and doc["lead_minutes"] == [30, 120, 480]
    assert set(doc["servers"]) == set(full["predictions"]) and "predictions" not in doc
    for key in ("alerts", "environment", "server_risk", "metadata"):
        assert doc[key] == full[key]
    for name, entry in full["predictions"].items():
        summary = doc["servers"][name]
        if name == NEWCOMER:
            assert summary == {"profile": "ml_compute", **entry["cpu_pct"]}
            continue
        assert summary["profile"] == full["server_risk"][name]["profile"] and summary["source"] == "tft"
        for metric, forecast in entry.items():
            figures = summary["metrics"][metric]
            for q in ("p50", "p90"):
                expected = [forecast[q][s - 1] for s in SUMMARY_STEPS]
                assert figures[q] == pytest.approx(expected, rel=1e-3, abs=1e-6)
            assert figures["p90_max"] == pytest.approx(max(forecast["p90"]), rel=1e-3, abs=1e-6)
            at = figures["p90_max_minutes"] * 60 // c.STEP_SECONDS - 1  # steps tied after rounding: any of them
            assert forecast["p90"][at] == max(forecast["p90"])
            assert figures["current"] == pytest.approx(forecast["current"], rel=1e-3)


def test_the_summary_filters_and_compresses_too(served, full):
    name = sorted(n for n in full["predictions"] if n != NEWCOMER)[0]
    doc = served.get("/predictions/current", params={"view": "summary", "server": name}, headers=GZIP)
    assert doc.headers.get("content-encoding") in (None, "gzip")  # small answers stay plain
    body = doc.json()
    assert list(body["servers"]) == [name] and list(body["server_risk"]) == [name]
    assert body["filter"]["matched"] == 1
    whole = served.get("/predictions/current", params={"view": "summary"}, headers=GZIP)
    assert whole.headers["content-encoding"] == "gzip" and set(whole.json()["servers"]) == set(full["predictions"])


def test_significant_keeps_four_digits():
    values = np.array([52.772126549, 0.0312345, -1.42211, 123456.7, 0.0, np.nan])
    assert significant(values)[:5].tolist() == [52.77, 0.03123, -1.422, 123457.0, 0.0]
    assert np.isnan(significant(values)[5])


# ---------------------------------------------------------------------- the worker's pipe, OpenAPI


def test_the_server_index_crosses_the_worker_pipe_intact():
    published = _published_with_alerts()
    header, blobs = reads_to_frames(published.reads)
    mine, theirs = socket.socketpair()
    with Connection(mine.detach()) as a, Connection(theirs.detach()) as b:
        send_frames(a, {"reads": header}, {"body": published.body, **blobs})
        got_header, got_blobs = recv_frames(b)
    rebuilt = reads_from_frames(got_header["reads"], got_blobs, got_blobs["body"])
    for query in (
        ReadQuery(),
        ReadQuery("summary"),
        ReadQuery(servers=("ppdb002", "x")),
        ReadQuery(profiles=("web_api",)),
    ):
        assert rebuilt.render(query) == published.reads.render(query)
    assert reads_from_frames({}, {}, b"{}") is None


def test_openapi_documents_the_query_parameters_and_the_summary(served):
    doc = served.get("/openapi.json").json()
    operation = doc["paths"]["/predictions/current"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"view", "server", "profile"}
    assert params["view"]["schema"]["enum"] == ["full", "summary"]
    assert "web_api" in params["profile"]["schema"]["items"]["enum"]
    schema = json.dumps(operation["responses"]["200"])
    assert "PredictionsResponse" in schema and "PredictionsSummaryResponse" in schema
    assert {"ServerSummary", "MetricSummary", "ReadFilter"} <= set(doc["components"]["schemas"])


def _published_with_alerts():
    """Three servers, one of them (ppweb001) forecast past its CPU threshold, plus one warming up."""
    targets, horizon = c.METRIC_NAMES, c.HORIZON_STEPS
    level = np.array([[97.0, *[10.0] * (len(targets) - 1)], [20.0] * len(targets), [30.0] * len(targets)])
    level[:, targets.index("error_rate")] = 0.001
    quantiles = np.repeat(level[:, :, None, None], horizon, axis=2) * np.array([0.98, 1.0, 1.02])
    quantiles = np.minimum(quantiles, 100.0)
    forecast = Forecast(
        servers=["ppweb001", "ppdb002", "ppdb003"],
        profiles=["web_api", "database", "database"],
        targets=targets,
        last_step=np.full(3, 5000, dtype=np.int64),
        quantiles=quantiles,
        current=level,
        warming_up={"ppml004": 3},
        min_history=12,
    )
    thresholds = Thresholds()
    documents = Documents(targets, horizon, thresholds, {"model_type": "TFT"})
    alerts = AlertTracker(make_rule("band_edge", None)).update(forecast, thresholds).active
    return documents.publish(forecast, alerts, risk(forecast, thresholds), version=1)
