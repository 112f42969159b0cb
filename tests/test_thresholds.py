import pytest

from workbench.errors import ConfigError
from workbench.thresholds import Level, Thresholds


def test_defaults_and_profile_overrides():
    t = Thresholds()
    assert t.level("cpu_pct") == Level(80.0, 95.0)
    assert t.level("latency_ms", "database") == Level(50.0, 150.0)
    assert t.level("latency_ms", "web_api") == Level(200.0, 500.0)
    assert t.level("net_in_mb_s") is None


def test_a_profile_override_keeps_that_profiles_other_defaults():
    t = Thresholds.from_dict({"profiles": {"database": {"cpu_pct": {"warning": 60, "critical": 70}}}})
    assert t.level("cpu_pct", "database") == Level(60.0, 70.0)
    assert t.level("latency_ms", "database") == Level(50.0, 150.0)
    assert Thresholds().level("cpu_pct", "database") == Level(80.0, 95.0)


def test_from_dict_round_trips_and_replaces_only_what_is_given():
    t = Thresholds.from_dict({"levels": {"cpu_pct": {"warning": 70, "critical": 90}}})
    assert t.level("cpu_pct") == Level(70.0, 90.0) and t.level("mem_pct") == Level(85.0, 95.0)
    assert Thresholds.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"levels": {"load": {"warning": 1, "critical": 2}}}, "unknown metric 'load'"),
        ({"levels": {"cpu_pct": {"warning": 90, "critical": 80}}}, "must be below critical"),
        ({"levels": {"cpu_pct": {"warning": 90, "critical": 180}}}, r"within \[0, 100\]"),
        ({"levels": {"cpu_pct": 90}}, "expected {warning: number, critical: number}"),
        ({"profiles": {"mainframe": {}}}, "unknown profile"),
        ({"limits": {}}, "unknown section"),
    ],
)
def test_bad_thresholds_name_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        Thresholds.from_dict(data)
