"""Early warning scored against the simulator's ground truth (``incidents.parquet``).

Alarm rules are evaluated at origins ``first_step, first_step + stride, … <= last_step``; an
*alarm table* holds one row ``(rule, server_name, metric, step)`` per origin at which a rule's
alarm is active on that server and metric. The rules are those of :mod:`workbench.alert_rules`
(``calibrated``, ``band_edge``, ``predict_linear``, ``static``), each run through its own
:class:`workbench.alerts.AlertTracker` by the backtest, as the daemon runs them.

Scoring, per rule (steps are 5 minutes; ``min_lead`` = 30 min, ``max_lead`` = the horizon):

* **Scored incidents**: ground-truth incidents on the evaluated servers with an onset (the first
  step at the critical level of the incident type's primary metric) such that
  ``first_step <= onset - min_lead <= last_step``, i.e. a timely warning was possible.
* **Hit**: an alarm on the incident's server *and primary metric* is active at some evaluated
  step ``s`` with ``onset - max_lead <= s <= onset - min_lead``. Its **lead time** is
  ``onset - s`` for the earliest such ``s`` (so at most ``max_lead``). Otherwise the incident is
  **late** when an alarm on it is active at some step in ``(onset - min_lead, end]`` and
  **missed** when not. Recall = hits / scored incidents.
* **Episodes**: alarm rows of one rule, server and metric whose steps are at most
  ``merge_steps`` apart (default: the stride) form one episode, however many origins it spans.
* **True episode**: it overlaps ``[onset - max_lead, recovered]`` of some incident with the
  same server and primary metric (``[precursor_start, recovered]`` when the onset lies past the
  data). **False alarm**: any other episode on a primary metric. Precision = true episodes /
  (true + false episodes); F1 from recall and precision; false alarms per server-day divide
  the false episodes by ``servers × evaluated days``.
* **Unscored**: episodes on metrics that are no incident type's primary metric (disk and
  network throughput, which have no default thresholds); they are counted separately and are
  neither hits nor false alarms. Every metric with a default critical level, latency included,
  is the primary metric of some incident type and reaches that level only inside such
  incidents, so its episodes are scored like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.simulator.incidents import PRIMARY_METRICS

MIN_LEAD_STEPS = 30 * 60 // c.STEP_SECONDS
ALARM_SCHEMA: dict[str, pl.DataType] = {
    "rule": pl.String(),
    c.SERVER: pl.String(),
    "metric": pl.String(),
    "step": pl.Int64(),
}
OUTCOMES = ("hit", "late", "missed")


def empty_alarms() -> pl.DataFrame:
    """Return an alarm table without rows."""
    return pl.DataFrame(schema=ALARM_SCHEMA)


def episodes(alarms: pl.DataFrame, merge_steps: int) -> pl.DataFrame:
    """Group alarm rows into episodes: one per run of rows at most ``merge_steps`` apart.

    Returns:
        ``rule, server_name, metric, start_step, end_step, alarms`` per episode.
    """
    keys = ["rule", c.SERVER, "metric"]
    alarms = alarms.select(list(ALARM_SCHEMA)).cast(pl.Schema(ALARM_SCHEMA))
    ordered = alarms.sort(*keys, "step")
    gap = pl.col("step").diff().over(keys)
    return (
        ordered.with_columns((gap.is_null() | (gap > merge_steps)).cum_sum().alias("episode"))
        .group_by(*keys, "episode", maintain_order=True)
        .agg(pl.col("step").min().alias("start_step"), pl.col("step").max().alias("end_step"), pl.len().alias("alarms"))
        .drop("episode")
    )


@dataclass(frozen=True)
class Window:
    """Where the alarm rules were evaluated.

    Attributes:
        servers: Evaluated servers.
        first_step: First evaluated origin (global step index).
        last_step: Last evaluated origin.
        stride: Steps between evaluated origins.
        min_lead_steps: Least lead that counts as a timely warning.
        max_lead_steps: Most lead credited (the forecast horizon).
    """

    servers: tuple[str, ...]
    first_step: int
    last_step: int
    stride: int = 1
    min_lead_steps: int = MIN_LEAD_STEPS
    max_lead_steps: int = c.HORIZON_STEPS

    def __post_init__(self) -> None:
        if self.stride < 1 or self.last_step < self.first_step:
            raise ConfigError(f"need stride >= 1 and last_step >= first_step, got {self}")
        if not 0 <= self.min_lead_steps <= self.max_lead_steps:
            raise ConfigError(f"need 0 <= min_lead_steps <= max_lead_steps, got {self}")

    @property
    def server_days(self) -> float:
        """Servers × days covered by the evaluated origins."""
        span = self.last_step - self.first_step + self.stride
        return len(self.servers) * span * c.STEP_SECONDS / 86400


@dataclass(frozen=True)
class EarlyWarning:
    """Early-warning scores of every rule.

    Attributes:
        summary: One row per rule: incidents, hits, late, missed, recall, episodes, true and
            false episodes, precision, f1, lead-time quantiles in minutes, false alarms per
            server-day, unscored episodes.
        incidents: One row per rule and scored incident: outcome and lead_minutes.
        episodes: Every episode with its label (``true``, ``false`` or ``unscored``).
    """

    summary: pl.DataFrame
    incidents: pl.DataFrame
    episodes: pl.DataFrame

    def rule(self, name: str) -> dict[str, float | int | None]:
        """Return the summary row of one rule as a dict."""
        rows = self.summary.filter(pl.col("rule") == name).to_dicts()
        if not rows:
            raise ConfigError(f"no rule {name!r}; scored: {', '.join(self.summary['rule'].to_list())}")
        return rows[0]


def _steps(column: str) -> pl.Expr:
    return (pl.col(column).dt.epoch("s") // c.STEP_SECONDS).cast(pl.Int64)


def scored_incidents(incidents: pl.DataFrame, window: Window) -> pl.DataFrame:
    """Return the incidents a timely warning was possible for (see the module docstring)."""
    warn_at = pl.col("onset_step") - window.min_lead_steps
    return (
        incidents.filter(pl.col(c.SERVER).is_in(list(window.servers)) & pl.col("onset").is_not_null())
        .with_columns(_steps("onset").alias("onset_step"), _steps("end").alias("end_step_"))
        .filter((warn_at >= window.first_step) & (warn_at <= window.last_step))
        .select("incident_id", c.SERVER, "incident_type", "metric", "onset_step", "end_step_")
    )


def incident_outcomes(
    alarms: pl.DataFrame, incidents: pl.DataFrame, window: Window, rules: Sequence[str]
) -> pl.DataFrame:
    """Return one row per rule and scored incident with its ``outcome`` and ``lead_minutes``."""
    scored = scored_incidents(incidents, window)
    grid = pl.DataFrame({"rule": list(rules)}, schema={"rule": pl.String}).join(scored, how="cross")
    joined = grid.join(alarms, on=["rule", c.SERVER, "metric"], how="left")
    lo = pl.col("onset_step") - window.max_lead_steps
    hi = pl.col("onset_step") - window.min_lead_steps
    in_time = pl.col("step").is_between(lo, hi)
    late = (pl.col("step") > hi) & (pl.col("step") <= pl.col("end_step_"))
    per = joined.group_by("rule", "incident_id", maintain_order=True).agg(
        pl.col(c.SERVER, "incident_type", "metric", "onset_step").first(),
        pl.col("step").filter(in_time).min().alias("warned_step"),
        late.any().alias("late"),
    )
    minutes = (pl.col("onset_step") - pl.col("warned_step")) * (c.STEP_SECONDS / 60)
    outcome = pl.when(pl.col("warned_step").is_not_null()).then(pl.lit("hit"))
    return per.with_columns(
        outcome.when(pl.col("late")).then(pl.lit("late")).otherwise(pl.lit("missed")).alias("outcome"),
        minutes.alias("lead_minutes"),
    ).drop("late", "warned_step")


def label_episodes(alarms: pl.DataFrame, incidents: pl.DataFrame, window: Window) -> pl.DataFrame:
    """Return :func:`episodes` of ``alarms`` with ``label``: ``true``, ``false`` or ``unscored``."""
    eps = episodes(alarms, window.stride).with_row_index("episode_id")
    onset = _steps("onset") - window.max_lead_steps
    spans = incidents.select(
        c.SERVER,
        "metric",
        pl.when(pl.col("onset").is_not_null()).then(onset).otherwise(_steps("precursor_start")).alias("lo"),
        _steps("recovered").alias("hi"),
    )
    overlapping = (
        eps.join(spans, on=[c.SERVER, "metric"], how="inner")
        .filter((pl.col("start_step") <= pl.col("hi")) & (pl.col("end_step") >= pl.col("lo")))
        .select("episode_id")
        .unique()
    )
    label = (
        pl.when(~pl.col("metric").is_in(list(PRIMARY_METRICS)))
        .then(pl.lit("unscored"))
        .when(pl.col("episode_id").is_in(overlapping["episode_id"].implode()))
        .then(pl.lit("true"))
        .otherwise(pl.lit("false"))
    )
    return eps.with_columns(label.alias("label"))


def early_warning(
    alarms: pl.DataFrame, incidents: pl.DataFrame, window: Window, rules: Sequence[str] | None = None
) -> EarlyWarning:
    """Score the alarm rules against the incidents' ground truth (see the module docstring).

    Args:
        alarms: Alarm table (:data:`ALARM_SCHEMA`) of the evaluated origins.
        incidents: Ground truth (:func:`workbench.data.read_incidents`).
        window: Evaluated servers, origins and lead limits.
        rules: Rules to score (default: those in ``alarms``); a rule without alarms scores zero.
    """
    alarms = alarms.select(list(ALARM_SCHEMA)).cast(pl.Schema(ALARM_SCHEMA))
    rules = list(dict.fromkeys(alarms["rule"].to_list())) if rules is None else list(rules)
    alarms = alarms.filter(pl.col(c.SERVER).is_in(list(window.servers)))
    outcomes = incident_outcomes(alarms, incidents, window, rules)
    eps = label_episodes(alarms, incidents, window)
    rows = [_summary_row(rule, outcomes, eps, window) for rule in rules]
    return EarlyWarning(pl.DataFrame(rows), outcomes, eps)


def _summary_row(rule: str, outcomes: pl.DataFrame, eps: pl.DataFrame, window: Window) -> dict[str, object]:
    mine = outcomes.filter(pl.col("rule") == rule)
    counts = {o: mine.filter(pl.col("outcome") == o).height for o in OUTCOMES}
    labels = eps.filter(pl.col("rule") == rule)["label"].value_counts()
    label_count = dict(zip(labels["label"].to_list(), labels["count"].to_list(), strict=True))
    true, false = label_count.get("true", 0), label_count.get("false", 0)
    recall = counts["hit"] / mine.height if mine.height else None
    precision = true / (true + false) if true + false else None
    f1 = 2 * recall * precision / (recall + precision) if recall and precision else 0.0
    leads = mine["lead_minutes"].drop_nulls().to_numpy()
    quant = np.quantile(leads, [0.25, 0.5, 0.75]) if len(leads) else [None] * 3
    return {
        "rule": rule,
        "incidents": mine.height,
        **counts,
        "recall": recall,
        "episodes": true + false,
        "true_episodes": true,
        "false_alarms": false,
        "precision": precision,
        "f1": f1,
        "median_lead_minutes": None if quant[1] is None else float(quant[1]),
        "p25_lead_minutes": None if quant[0] is None else float(quant[0]),
        "p75_lead_minutes": None if quant[2] is None else float(quant[2]),
        "false_alarms_per_server_day": false / window.server_days if window.server_days else None,
        "unscored_episodes": label_count.get("unscored", 0),
    }
