"""The ``serve`` and ``stream`` commands: help, and one clear line for a bad start (no server is started)."""

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.errors import ConfigError
from workbench.service.settings import InferenceSettings, api_key_from_env


@pytest.mark.parametrize(("command", "words"), [("serve", ["/feed/data", "--state-dir"]), ("stream", ["--tick"])])
def test_help_names_the_endpoints_and_options(command, words):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert all(word in result.output for word in words)


def test_a_missing_bundle_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--bundle", str(tmp_path / "nope"), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code != 0
    assert "BundleError" in result.output and "not a model bundle" in result.output
    assert "Traceback" not in result.output


def test_an_unset_api_key_variable_refuses_to_start_open(tmp_path, monkeypatch):
    monkeypatch.delenv("WB_NO_SUCH_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve", "--bundle", str(tmp_path), "--api-key-env", "WB_NO_SUCH_KEY"])
    assert result.exit_code != 0 and "WB_NO_SUCH_KEY: the environment variable is unset or empty" in result.output
    monkeypatch.setenv("WB_KEY", " k1 ")
    assert api_key_from_env("WB_KEY") == "k1" and api_key_from_env(None) is None


def test_settings_refuse_bad_values_naming_them(tmp_path):
    with pytest.raises(ConfigError, match=r"port=70000 must be an integer in \[0, 65535\]"):
        InferenceSettings(bundle=tmp_path, port=70000)
    with pytest.raises(ConfigError, match="device='tpu'; allowed: cpu, cuda"):
        InferenceSettings(bundle=tmp_path, device="tpu")
    with pytest.raises(ConfigError, match="max_records=0 must be an integer >= 1"):
        InferenceSettings(bundle=tmp_path, max_records=0)
    assert InferenceSettings(bundle=tmp_path).host == "127.0.0.1"  # loopback unless told otherwise
