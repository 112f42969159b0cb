"""Fuzz ``POST /feed/data`` from its own OpenAPI schema: never a 5xx, never a bad value stored.

Records are generated from the request-body schema in ``/openapi.json`` (so the document and
the validation are exercised together), then mutated: values replaced by arbitrary JSON (NaN,
infinities, strings that look like numbers, nested objects), required keys dropped, unknown
keys added; bodies are sometimes raw bytes or JSON of the wrong shape.
"""

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import contract as c
from workbench.model import load_bundle
from workbench.records import validate_records
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["45", "NaN", "1e400", "", "healthy", "2025-10-13T16:00:00Z", "9999-99-99"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
)


@pytest.fixture(scope="module")
def client(tiny_bundle_dir, tmp_path_factory):
    settings_ = InferenceSettings(
        bundle=tiny_bundle_dir,
        state_dir=tmp_path_factory.mktemp("fuzz-state"),
        device="cpu",
        fsync=False,
        max_records=40,
        max_body_bytes=64 * 1024,
        max_servers=64,  # random names come and go; a small store keeps each check cheap
        forecast_worker="thread",
    )
    app = create_app(settings_, bundle=load_bundle(tiny_bundle_dir, device="cpu"))
    with TestClient(app) as test_client:
        test_client.app_state = app.state
        yield test_client


@pytest.fixture(scope="module")
def record_schema(client) -> dict[str, Any]:
    body = client.get("/openapi.json").json()["paths"]["/feed/data"]["post"]["requestBody"]
    return body["content"]["application/json"]["schema"]["properties"]["records"]["items"]


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for the JSON-schema subset the feed schema uses."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kinds = schema.get("type", "object")
    if isinstance(kinds, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kinds])
    if kinds == "null":
        return st.none()
    if kinds == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kinds == "string" and schema.get("format") == "date-time":
        return st.datetimes(min_value=__import__("datetime").datetime(1985, 1, 1)).map(lambda t: t.isoformat() + "Z")
    if kinds == "string":
        return st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text(max_size=20)
    if kinds == "array":
        return st.lists(from_schema(schema["items"]), max_size=min(schema.get("maxItems", 10), 12))
    props = schema.get("properties", {})
    required = {k: from_schema(props[k]) for k in schema.get("required", [])}
    optional = {k: from_schema(v) for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(required, optional=optional)


def mutate(record: st.SearchStrategy[dict]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(["timestamp", "server_name", "cpu_pct", "mem_pct", "state", "profile", "status", "x"])
    replaced = st.tuples(record, keys, JSON_VALUES).map(lambda t: {**t[0], t[1]: t[2]})
    dropped = st.tuples(record, keys).map(lambda t: {k: v for k, v in t[0].items() if k != t[1]})
    return st.one_of(record, record, replaced, dropped, JSON_VALUES)


def bodies(record_schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
    records = st.lists(mutate(from_schema(record_schema)), max_size=12)
    documents = st.fixed_dictionaries({"records": records}) | st.fixed_dictionaries({"records": JSON_VALUES})
    as_json = documents.map(lambda d: json.dumps(d, allow_nan=True).encode())
    junk = JSON_VALUES.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=80)
    return st.one_of(as_json, as_json, as_json, junk)


def assert_nothing_bad_stored(store) -> None:
    state = store.state()
    cnt, total, peak = state["cnt"], state["sum"], state["max"]
    assert (cnt >= 0).all() and np.isfinite(total).all()
    for j, name in enumerate(store.metrics):
        metric = c.METRIC_BY_NAME[name]
        has = cnt[..., j] > 0
        mean = total[..., j][has] / cnt[..., j][has]
        high = metric.high if metric.high is not None else np.inf
        assert ((mean >= metric.low - 1e-9) & (mean <= high + 1e-9)).all(), name
        assert ((peak[..., j][has] >= metric.low) & (peak[..., j][has] <= high)).all(), name


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_records_valid_by_the_openapi_schema_are_valid_by_the_contract(record_schema, data):
    assert record_schema["required"] == ["timestamp", "server_name"]
    record = data.draw(from_schema(record_schema))
    stamp = record["timestamp"]
    agree = all(record[a] == record[n] for a, n in c.ALIASES.items() if a in record and n in record)
    if agree and isinstance(stamp, str) and "1990" <= stamp < "2100":  # nor the range, nor that aliases agree
        assert validate_records([record]).rejected == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_feeds_never_get_a_5xx_nor_store_a_bad_value(client, record_schema, data):
    body = data.draw(bodies(record_schema))
    response = client.post("/feed/data", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.text
    answer = response.json()
    if "status" in answer:  # a feed answer: every record is either added or named
        records = json.loads(body)["records"]
        assert answer["records_added"] + answer["records_rejected"] == len(records)
        assert all(set(r) == {"index", "field", "error"} and r["error"] for r in answer["rejected"])
        assert {r["index"] for r in answer["rejected"]} <= set(range(len(records)))
        assert (response.status_code == 200) == (answer["records_rejected"] == 0)
    else:
        assert answer["detail"]
    assert_nothing_bad_stored(client.app_state.daemon.ingestor.store)
