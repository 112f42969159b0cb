"""Request and response shapes of both daemons, for ``/openapi.json`` and for readers.

The ``POST /feed/data`` body is read by hand (see :mod:`workbench.service.ingest`) and checked
record by record against the contract, so that one bad record never sinks the batch and no
value is ever coerced (``"45"`` stays a string and is refused). Its JSON schema is derived from
the contract here, so the OpenAPI document states the same ranges, states and aliases as the
validation. Responses are pydantic models; handlers that serve pre-encoded documents return
them as they are and the models only describe them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workbench import contract as c
from workbench.service.ingest import MAX_UNBOUNDED

SEED_EXAMPLE = {
    "records": [
        {
            "timestamp": "2025-10-13T16:00:00Z",
            "server_name": "ppdb001",
            "cpu_pct": 45.2,
            "mem_pct": 67.8,
            "disk_io_mb_s": 123.4,
            "latency_ms": 12.5,
            "state": "healthy",
        },
        {
            "timestamp": "2025-10-12T21:40:00",
            "server_name": "ppml0001",
            "cpu_percent": 45.2,
            "memory_percent": 62.1,
            "disk_percent": 35.8,
            "load_average": 2.3,
            "status": "healthy",
            "profile": "ml_compute",
        },
    ]
}


def _metric_schema(metric: c.Metric) -> dict[str, Any]:
    high = metric.high if metric.high is not None else MAX_UNBOUNDED  # the daemon's limit where the contract has none
    return {
        "type": ["number", "null"],
        "minimum": metric.low,
        "maximum": high,
        "description": f"{metric.description} ({metric.unit})",
    }


def record_schema() -> dict[str, Any]:
    """Return the JSON schema of one feed record, derived from the contract."""
    props: dict[str, Any] = {
        c.TIMESTAMP: {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            "description": "ISO 8601 time (UTC when it has no offset) or epoch seconds, in [1990, 2100)",
        },
        c.SERVER: {"type": "string", "pattern": f"^{c.SERVER_NAME_PATTERN}$"},
        c.PROFILE: {"enum": [*c.PROFILES, None], "description": "inferred from the name prefix when absent"},
        c.STATE: {"enum": [*c.STATES, None]},
        **{m.name: _metric_schema(m) for m in c.METRICS},
    }
    for alias, name in c.ALIASES.items():
        props[alias] = {**props[name], "description": f"alias of {name} (both in one record must agree)"}
    return {
        "type": "object",
        "required": [c.TIMESTAMP, c.SERVER],
        "properties": props,
        "additionalProperties": True,
        "description": "One sample of one server; unknown fields are ignored and listed in ignored_fields",
    }


def feed_request_body(max_records: int) -> dict[str, Any]:
    """Return the OpenAPI ``requestBody`` of ``POST /feed/data``."""
    schema = {
        "type": "object",
        "required": ["records"],
        "properties": {"records": {"type": "array", "items": record_schema(), "maxItems": max_records}},
    }
    return {"required": True, "content": {"application/json": {"schema": schema, "example": SEED_EXAMPLE}}}


class RejectedRecord(BaseModel):
    """Why one record (or the body) was refused."""

    index: int | None = Field(description="position of the record in `records` (null: the body itself)")
    field: str
    error: str


class FeedResponse(BaseModel):
    """Answer of ``POST /feed/data`` (200 when every record was kept, 422 when any was refused)."""

    status: Literal["success", "partial", "rejected"]
    records_added: int
    records_rejected: int
    rejected: list[RejectedRecord]
    ignored_fields: list[str]
    too_old: int = Field(description="accepted samples older than the windows (logged, not forecast from)")
    window_size: int = Field(description="server-steps of history held (refreshed in the background)")
    tick: int = Field(description="batches accepted over the daemon's life")
    servers: int
    warming_up: int
    rejected_truncated: int | None = None


class ErrorResponse(BaseModel):
    """A refused request: a message and, for bodies, the issues found."""

    detail: str
    rejected: list[RejectedRecord] = []


class MetricForecast(BaseModel):
    """Forecast of one metric of one server (the arrays hold ``horizon_steps`` values)."""

    model_config = ConfigDict(extra="allow")
    source: Literal["tft", "warming_up", "missing_metrics"]
    p10: list[float] | None = None
    p50: list[float] | None = None
    p90: list[float] | None = None
    current: float | None = None
    trend: float | None = Field(None, description="p50 slope, units per hour")
    history_steps: int | None = None
    needed_steps: int | None = None
    missing: list[str] | None = None


class AlertModel(BaseModel):
    """A predictive alert (see ``workbench.alerts.Alert``)."""

    model_config = ConfigDict(extra="allow")
    server: str
    metric: str
    severity: Literal["warning", "critical"]
    predicted_value: float
    threshold: float
    minutes_ahead: int
    probability: float


class Environment(BaseModel):
    """Fleet-wide figures (see ``workbench.risk.RiskReport.environment``)."""

    model_config = ConfigDict(extra="allow")
    incident_probability_30m: float
    incident_probability_8h: float
    high_risk_servers: int
    total_servers: int
    fleet_health: Literal["healthy", "degraded", "critical", "unknown"]
    probabilities: Literal["calibrated", "uncalibrated"] = Field(
        description="calibrated: learned from ground truth (calibration.json); uncalibrated: band exceedances"
    )


class Metadata(BaseModel):
    """Where a prediction came from."""

    model_config = ConfigDict(extra="allow")
    model_type: str
    bundle: str | None
    contract_version: str
    prediction_time: str | None = Field(description="null before the first prediction")
    horizon_steps: int
    device: str
    status: Literal["ok", "warming_up", "no_data"]
    message: str | None


class ReadFilter(BaseModel):
    """What ``?server=`` and ``?profile=`` asked for and kept."""

    servers: list[str]
    profiles: list[str]
    matched: int = Field(description="servers kept")
    unknown_servers: list[str] = Field(description="servers asked for that the daemon holds no forecast entry for")


class PredictionsResponse(BaseModel):
    """``GET /predictions/current`` (and the WebSocket pushes)."""

    predictions: dict[str, dict[str, MetricForecast]]
    alerts: list[AlertModel]
    environment: Environment
    server_risk: dict[str, dict[str, Any]]
    metadata: Metadata
    filter: ReadFilter | None = Field(None, description="only with ?server= or ?profile=")


class MetricSummary(BaseModel):
    """A few figures of one metric's forecast (``?view=summary``)."""

    current: float | None
    p50: list[float | None] = Field(description="median at each of `lead_minutes`")
    p90: list[float | None] = Field(description="upper quantile at each of `lead_minutes`")
    p90_max: float | None = Field(description="highest upper quantile over the horizon")
    p90_max_minutes: int = Field(description="how far ahead it lies")


class ServerSummary(BaseModel):
    """One server in ``?view=summary``: figures per metric, or why it has none."""

    model_config = ConfigDict(extra="allow")
    profile: str
    source: Literal["tft", "warming_up", "missing_metrics"]
    metrics: dict[str, MetricSummary] | None = None
    history_steps: int | None = None
    needed_steps: int | None = None
    missing: list[str] | None = None


class PredictionsSummaryResponse(BaseModel):
    """``GET /predictions/current?view=summary``: the document without the per-step quantile arrays."""

    servers: dict[str, ServerSummary]
    alerts: list[AlertModel]
    environment: Environment
    server_risk: dict[str, dict[str, Any]]
    metadata: Metadata
    view: Literal["summary"]
    lead_minutes: list[int] = Field(description="lead times of the `p50` and `p90` lists (30 min, 2 h, 8 h)")
    filter: ReadFilter | None = Field(None, description="only with ?server= or ?profile=")


class AlertsResponse(BaseModel):
    """``GET /alerts/active``."""

    timestamp: str | None
    count: int
    alerts: list[AlertModel]


class HistoryResponse(BaseModel):
    """``GET /history/{server}``: the recent history the daemon holds for one server."""

    server: str
    profile: str
    timestamps: list[str] = Field(description="UTC step times, oldest first (ISO 8601)")
    metrics: dict[str, list[float | None]] = Field(
        description="one value per timestamp for each metric held; gaps carried forward, null when never seen"
    )
    forecast_start: str = Field(description="UTC time of the first forecast step (one step after the last)")


class ArchiveResponse(BaseModel):
    """``GET /history``: rows of the history archive (``format=json``)."""

    kind: Literal["metrics", "forecasts", "alerts"]
    servers: list[str] | None = Field(description="the servers asked for (null: every server)")
    start: str | None = Field(description="UTC start of the range, inclusive (null: the table is empty)")
    end: str | None = Field(description="UTC end of the range, inclusive")
    count: int = Field(description="rows returned")
    limit: int
    truncated: bool = Field(description="more rows matched than limit; narrow the range or the servers")
    columns: list[str]
    rows: list[dict[str, Any]] = Field(
        description="oldest first. metrics: the accepted records; forecasts: per origin (timestamp), server, "
        "metric and step ahead, target_time and the quantiles; alerts: transitions raised, escalated, "
        "deescalated, resolved"
    )


class HealthResponse(BaseModel):
    """``GET /health``."""

    status: Literal["healthy", "unhealthy"]
    service: str
    running: bool
    problems: list[str] = []


class StatusResponse(BaseModel):
    """``GET /status``."""

    model_config = ConfigDict(extra="allow")
    running: bool
    tick_count: int
    window_size: int
    warmup: dict[str, Any]
    fleet: dict[str, Any]
    predictor: dict[str, Any]
    ingest: dict[str, Any]
    state: dict[str, Any]


class DriftResponse(BaseModel):
    """``GET /drift/status``: whether the model still fits the fleet."""

    model_config = ConfigDict(extra="allow")
    state: Literal["warming_up", "fits", "inputs_shifted", "no_longer_fits"]
    reasons: list[str]
    rule: str
    inputs: dict[str, Any] = {}
    accuracy: dict[str, Any] = {}
    servers: list[dict[str, Any]] = []


class ReloadRequest(BaseModel):
    """``POST /admin/reload`` body."""

    bundle: str = Field(description="path of the bundle folder, as the daemon's process sees it", min_length=1)


class ReloadResponse(BaseModel):
    """Answer of a reload that swapped the model."""

    status: Literal["reloaded"]
    reload: dict[str, Any]
    bundle: dict[str, Any]


class ReloadRefusedResponse(BaseModel):
    """A reload that did not happen: the running model keeps serving."""

    detail: str
    differences: list[str] = []


class ScenarioRequest(BaseModel):
    """``POST /scenario/set`` body."""

    scenario: str = Field(description="one of the simulator's scenarios (see SCENARIO_NAMES)")


class ScenarioSetResponse(BaseModel):
    """Answer of ``POST /scenario/set``."""

    status: Literal["success"]
    old_scenario: str
    new_scenario: str
    affected_servers: int
    message: str


class ScenarioStatusResponse(BaseModel):
    """``GET /scenario/status``."""

    model_config = ConfigDict(extra="allow")
    scenario: str
    multiplier: float
    affected_servers: list[str]
    uptime_seconds: float
    steps_sent: int
    incidents_in_progress: list[dict[str, str]] = Field(
        default_factory=list,
        description="Ground truth: incidents running at the last step sent (server, incident_type, "
        "phase precursor|critical)",
    )
    recent_incidents: list[dict[str, str | None]] = Field(
        default_factory=list,
        description="Ground truth: incidents not recovered 24 h before the last step sent, with their "
        "precursor_start, onset, end and recovered times (ISO 8601)",
    )
