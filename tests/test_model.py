import json
import shutil
import subprocess
import sys
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch

from workbench import contract as c
from workbench.errors import BundleError, ConfigError, ContractError
from workbench.forecast import SOURCE_TFT, SOURCE_WARMING_UP
from workbench.inference.reference import reference_forecast
from workbench.model import TrainConfig, load_bundle


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir, device="cpu")


def tampered(src, tmp_path, file, change):
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    data = json.loads((dst / file).read_text())
    change(data)
    (dst / file).write_text(json.dumps(data))
    return dst


def test_bundle_is_safetensors_and_json_only(tiny_bundle_dir):
    names = sorted(p.name for p in tiny_bundle_dir.iterdir())
    assert names == sorted(["config.json", "contract.json", "dataset.json", "model.safetensors", "training.json"])
    training = json.loads((tiny_bundle_dir / "training.json").read_text())
    assert training["servers"] == 8 and training["epochs"] >= 1
    assert len(training["data_fingerprint"]) >= 12 and "pytorch-forecasting" in training["library_versions"]


def test_fresh_process_gives_the_same_forecast(tiny_bundle_dir, tiny_fleet_dir, tiny_fleet, tmp_path):
    from workbench.model.train import train

    in_memory = train(tiny_fleet, TrainConfig.preset("tiny"), progress=False)
    expected = reference_forecast(in_memory, tiny_fleet)
    from workbench.model import save_bundle

    path = save_bundle(in_memory, tmp_path / "b")
    script = (
        "import sys, numpy as np\n"
        "from workbench.data import read_frame\n"
        "from workbench.model import load_bundle\n"
        "from workbench.inference.reference import reference_forecast\n"
        "f = reference_forecast(load_bundle(sys.argv[1], device='cpu'), read_frame(sys.argv[2]))\n"
        "np.save(sys.argv[3], f.quantiles)\n"
        "print(','.join(f.servers))\n"
    )
    out = tmp_path / "q.npy"
    run = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tiny_fleet_dir), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip().split(",") == expected.servers
    assert np.abs(np.load(out) - expected.quantiles).max() < 1e-5


def test_tampered_contract_is_refused_with_the_difference(tiny_bundle_dir, tmp_path):
    def change(data):
        data["step_seconds"] = 5

    with pytest.raises(BundleError, match=r"different data contract:\n  step_seconds: stored 5 != running 300"):
        load_bundle(tampered(tiny_bundle_dir, tmp_path, "contract.json", change))


def test_tampered_target_list_is_refused(tiny_bundle_dir, tmp_path):
    def change(data):
        data["targets"] = data["targets"][:-1]

    with pytest.raises(BundleError, match="config.json targets .* != dataset.json targets"):
        load_bundle(tampered(tiny_bundle_dir, tmp_path, "dataset.json", change))


def test_unexpected_targets_are_refused_naming_the_difference(tiny_bundle_dir):
    with pytest.raises(BundleError, match=r"model only: \['disk_io_mb_s'.*expected only: \[\]"):
        load_bundle(tiny_bundle_dir, targets=["cpu_pct", "mem_pct", "disk_pct"])


def test_missing_or_damaged_files_are_refused(tiny_bundle_dir, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle_dir, dst)
    (dst / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(BundleError, match="unreadable weights"):
        load_bundle(dst)
    (dst / "dataset.json").unlink()
    with pytest.raises(BundleError, match="missing dataset.json"):
        load_bundle(dst)


def test_weights_of_another_shape_are_refused(tiny_bundle_dir, tmp_path):
    def change(data):
        data["network"]["hidden_size"] = 12

    with pytest.raises(BundleError, match="weights do not fit"):
        load_bundle(tampered(tiny_bundle_dir, tmp_path, "config.json", change))


def test_server_name_is_not_a_model_input(bundle):
    assert bundle.hparams["x_categoricals"] == ["profile"]
    assert not any("server" in name for name in bundle.network.state_dict())


def test_forecast_starts_one_step_after_the_last_observation(bundle, tiny_fleet):
    captured = {}
    hook = bundle.network.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    try:
        result = reference_forecast(bundle, tiny_fleet)
    finally:
        hook.remove()
    last = tiny_fleet.group_by(c.SERVER).agg(pl.all().sort_by(c.TIMESTAMP).last()).sort(c.SERVER)
    assert result.servers == last[c.SERVER].to_list()
    for i, row in enumerate(last.iter_rows(named=True)):
        assert result.timestamps(i)[0] == row[c.TIMESTAMP] + timedelta(seconds=c.STEP_SECONDS)
        assert result.horizon == 96 and len(result.timestamps(i)) == 96
    x = captured["x"]
    lengths = x["encoder_lengths"]
    assert int(lengths.min()) == bundle.spec.max_encoder_length
    # The network's encoder ends with the last observed value of every target.
    for j, target in enumerate(bundle.targets):
        seen = x["encoder_target"][j][torch.arange(len(lengths)), lengths - 1].numpy()
        np.testing.assert_allclose(seen, last[target].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(x["decoder_time_idx"][:, 0].numpy(), result.last_step + 1)


def test_quantiles_are_ordered_and_within_contract_ranges(bundle, tiny_fleet):
    q = reference_forecast(bundle, tiny_fleet).quantiles
    assert q.shape == (8, 8, 96, 3)
    assert (np.diff(q, axis=-1) >= 0).all()
    for j, name in enumerate(bundle.targets):
        metric = c.METRIC_BY_NAME[name]
        assert q[:, j].min() >= metric.low
        assert metric.high is None or q[:, j].max() <= metric.high


def test_a_server_never_seen_in_training_is_forecast(bundle, tiny_fleet):
    newcomer = tiny_fleet.filter(pl.col(c.SERVER) == "ppdb001").with_columns(pl.lit("brand-new-db").alias(c.SERVER))
    result = reference_forecast(bundle, pl.concat([tiny_fleet, newcomer]))
    assert "brand-new-db" in result.servers
    payload = result.to_json()["brand-new-db"]["cpu_pct"]
    assert payload["source"] == SOURCE_TFT and len(payload["p50"]) == 96
    # Same history, same profile => same forecast: nothing server-specific is learnt.
    i, k = result.servers.index("brand-new-db"), result.servers.index("ppdb001")
    np.testing.assert_allclose(result.quantiles[i], result.quantiles[k], atol=1e-6)


def test_servers_with_too_little_history_are_warming_up(bundle, tiny_fleet):
    short = tiny_fleet.filter(pl.col(c.SERVER) == "ppweb001").tail(bundle.spec.min_encoder_length - 1)
    short = short.with_columns(pl.lit("ppweb999").alias(c.SERVER))
    result = reference_forecast(bundle, pl.concat([tiny_fleet, short]))
    assert "ppweb999" not in result.servers
    assert result.warming_up == {"ppweb999": bundle.spec.min_encoder_length - 1}
    entry = result.to_json()["ppweb999"]["cpu_pct"]
    assert entry["source"] == SOURCE_WARMING_UP and "p50" not in entry
    table = result.summary()
    assert table.filter(pl.col(c.SERVER) == "ppweb999")["p50_8h"].null_count() == len(bundle.targets)


def test_only_warming_servers_give_an_empty_forecast(bundle, tiny_fleet):
    result = reference_forecast(bundle, tiny_fleet.group_by(c.SERVER).head(3))
    assert result.servers == [] and len(result.warming_up) == 8
    assert result.to_frame().height == 0


def test_to_frame_is_long_and_consistent(bundle, tiny_fleet):
    result = reference_forecast(bundle, tiny_fleet.filter(pl.col(c.SERVER).is_in(["ppdb001", "ppml0001"])))
    frame = result.to_frame()
    assert frame.height == 2 * 8 * 96
    row = frame.filter((pl.col(c.SERVER) == "ppml0001") & (pl.col("metric") == "mem_pct") & (pl.col("step") == 7))
    i, j = result.servers.index("ppml0001"), result.targets.index("mem_pct")
    assert row["p50"].item() == pytest.approx(result.quantiles[i, j, 6, 1])
    assert row[c.TIMESTAMP].item() == result.timestamps(i)[6]


def test_training_refuses_too_short_data(tiny_fleet):
    from workbench.model.train import train

    with pytest.raises(ConfigError, match="training needs at least"):
        train(tiny_fleet.group_by(c.SERVER).head(100), TrainConfig.preset("tiny"), progress=False)


def test_training_refuses_a_target_without_values(tiny_fleet):
    from workbench.model.train import train

    with pytest.raises(ContractError, match="has no latency_ms value"):
        train(tiny_fleet.with_columns(pl.lit(None, pl.Float64).alias("latency_ms")), TrainConfig.preset("tiny"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"targets": ["cpu_pct", "load_average"]}, "unknown metric"),
        ({"targets": []}, "at least one metric"),
        ({"hidden_sise": 8}, r"unknown setting\(s\) \['hidden_sise'\]; allowed: targets"),
        ({"precision": "8-bit"}, "precision: allowed auto, 32-true"),
        ({"horizon": 48}, "fixes it at 96"),
        ({"min_encoder_length": 300}, "min_encoder_length <= max_encoder_length"),
        ({"quantiles": [0.1, 0.9]}, "three with 0.5"),
        ({"dropout": 1.5}, r"dropout: allowed \[0, 1\)"),
        ({"hidden_size": "big"}, "hidden_size: expected int, got 'big'"),
        ({"randomize_length": 1}, "randomize_length: expected bool"),
        ({"batch_size": True}, "batch_size: expected int"),
        ({"min_delta": -1e-4}, "min_delta must be >= 0"),
    ],
)
def test_config_errors_name_the_setting_and_what_is_allowed(values, message):
    with pytest.raises((ConfigError, ContractError), match=message):
        TrainConfig.from_dict(values)


def test_config_round_trips_through_dict_and_yaml(tmp_path):
    config = TrainConfig.preset("demo", targets=["cpu_pct", "latency_ms"])
    assert TrainConfig.from_dict(config.to_dict()) == config
    (tmp_path / "c.yaml").write_text("targets: [cpu_pct]\nhidden_size: 4\n")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml").hidden_size == 4
    with pytest.raises(ConfigError, match="preset: allowed tiny, demo, reference"):
        TrainConfig.preset("huge")
