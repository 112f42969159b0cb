"""The Forecast type's tables keep their column types whatever was forecast (no torch needed)."""

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.forecast import SOURCE_MISSING, SOURCE_TFT, SOURCE_WARMING_UP, Forecast

TARGETS = ("cpu_pct", "mem_pct")


def _forecast(servers: list[str], warming_up=None, missing=None) -> Forecast:
    n, m = len(servers), len(TARGETS)
    return Forecast(
        servers=servers,
        profiles=[c.DEFAULT_PROFILE] * n,
        targets=TARGETS,
        last_step=np.arange(n, dtype=np.int64) + 1_000,
        quantiles=np.sort(np.random.default_rng(0).random((n, m, 96, 3)), axis=-1),
        current=np.ones((n, m)),
        warming_up=warming_up or {},
        missing=missing or {},
        min_history=24,
    )


CASES = {
    "nothing": _forecast([]),
    "only warming up": _forecast([], {"a": 20, "b": 3}),  # polars failed to vstack column 'server_name' here
    "only missing": _forecast([], missing={"m": ["cpu_pct"]}),
    "mixed": _forecast(["s1", "s2"], {"a": 20}, {"m": ["mem_pct"]}),
}


@pytest.mark.parametrize("case", CASES)
def test_tables_have_the_same_schema_whatever_was_forecast(case):
    fc = CASES[case]
    assert fc.to_frame().schema == CASES["mixed"].to_frame().schema
    assert fc.to_frame().schema[c.SERVER] == pl.String and fc.to_frame().height == len(fc.servers) * 2 * 96
    summary = fc.summary()
    assert summary.schema == CASES["mixed"].summary().schema
    others = [*fc.warming_up, *fc.missing]
    assert summary[c.SERVER].to_list() == [s for s in [*fc.servers, *others] for _ in TARGETS]
    sources = [SOURCE_TFT] * len(fc.servers) + [SOURCE_WARMING_UP] * len(fc.warming_up)
    assert summary["source"].to_list() == [s for s in sources + [SOURCE_MISSING] * len(fc.missing) for _ in TARGETS]
    assert summary.filter(pl.col("source") != SOURCE_TFT)["p50_8h"].null_count() == len(others) * len(TARGETS)
    pl.concat([summary, CASES["mixed"].summary()])  # stacks with any other summary


def test_to_frame_rows_follow_servers_metrics_and_steps():
    fc = CASES["mixed"]
    frame = fc.to_frame()
    row = frame.filter((pl.col(c.SERVER) == "s2") & (pl.col("metric") == "mem_pct") & (pl.col("step") == 7))
    assert row["p50"].item() == pytest.approx(fc.quantiles[1, 1, 6, 1])
    assert row[c.TIMESTAMP].item() == fc.timestamps(1)[6]
