"""The demo's supervisor, driven with trivial child processes, and the demo's settings and command lines."""

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.demo import DemoSettings, check_can_start, demo_children
from workbench.errors import BundleError, ConfigError, ServiceError
from workbench.service.supervisor import ChildSpec, Supervisor, free_port

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_child(name: str, p: int) -> ChildSpec:
    argv = [PY, "-m", "http.server", str(p), "--bind", "127.0.0.1"]
    return ChildSpec(name, argv, ready_url=f"http://127.0.0.1:{p}/")


def test_children_start_in_order_answer_and_all_stop_on_sigint(tmp_path):
    specs = [http_child("web", port()), ChildSpec("sleeper", SLEEPER)]
    supervisor = Supervisor(specs, tmp_path / "logs", grace=2)
    try:
        supervisor.start()
        pids = [c.process.pid for c in supervisor.children]
        assert [c.spec.name for c in supervisor.children] == ["web", "sleeper"] and all(map(alive, pids))
    finally:
        codes = supervisor.stop()
    assert list(codes) == ["sleeper", "web"]  # last started, first stopped
    assert codes["sleeper"] != 0 and all(wait_gone(pid) for pid in pids)
    assert (tmp_path / "logs" / "web.log").is_file() and supervisor.children == []


def test_a_child_that_exits_while_starting_is_named_with_its_log_tail(tmp_path):
    failing = ChildSpec("broken", [PY, "-c", "print('cannot bind: port taken'); raise SystemExit(3)"], ready_url=None)
    late = ChildSpec(
        "late", [PY, "-c", "print('boom', flush=True); raise SystemExit(4)"], ready_url=f"http://127.0.0.1:{port()}/"
    )
    supervisor = Supervisor([late], tmp_path, grace=2)
    with pytest.raises(ServiceError, match=r"late exited with code 4 while starting; log .*late\.log") as info:
        supervisor.start()
    assert "boom" in str(info.value)
    supervisor.stop()
    supervisor = Supervisor([failing, ChildSpec("sleeper", SLEEPER)], tmp_path, grace=2)
    try:
        supervisor.start()
        with pytest.raises(ServiceError, match="broken exited with code 3") as info:
            supervisor.watch()
        assert "cannot bind: port taken" in str(info.value)
    finally:
        supervisor.stop()


def test_a_child_that_never_answers_times_out_naming_the_url(tmp_path):
    spec = ChildSpec("mute", SLEEPER, ready_url=f"http://127.0.0.1:{port()}/health")
    supervisor = Supervisor([spec], tmp_path, start_timeout=0.5, grace=2)
    try:
        with pytest.raises(ServiceError, match=r"mute did not answer http://127\.0\.0\.1:\d+/health within 0\.5 s"):
            supervisor.start()
    finally:
        supervisor.stop()


def test_a_stop_requested_while_starting_ends_the_wait_at_once(tmp_path):
    spec = ChildSpec("slow", SLEEPER, ready_url=f"http://127.0.0.1:{port()}/")
    supervisor = Supervisor([spec, ChildSpec("never", SLEEPER)], tmp_path, start_timeout=60, grace=2)
    threading.Timer(0.5, supervisor.request_stop).start()
    began = time.monotonic()
    try:
        supervisor.start()
        assert time.monotonic() - began < 5 and [c.spec.name for c in supervisor.children] == ["slow"]
    finally:
        codes = supervisor.stop()
    assert list(codes) == ["slow"]


def test_stubborn_children_get_sigterm_then_sigkill_and_grandchildren_go_too(tmp_path):
    ignores_int = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); "
    ignores_both = ignores_int + "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    # A shell's background job starts with SIGINT ignored, and children inherit that: restore it.
    parent = (
        "import signal, subprocess, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"p = subprocess.Popen({SLEEPER!r}); print(p.pid, flush=True); time.sleep(60)"
    )
    specs = [
        ChildSpec("no-int", [PY, "-c", ignores_int + "time.sleep(60)"]),
        ChildSpec("no-term", [PY, "-c", ignores_both + "time.sleep(60)"]),
        ChildSpec("parent", [PY, "-c", parent]),
    ]
    supervisor = Supervisor(specs, tmp_path, grace=0.5)
    supervisor.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(c.tail() for c in supervisor.children):
        time.sleep(0.05)  # the handlers are installed once each child has printed
    grandchild = int(supervisor.children[2].tail())
    began = time.monotonic()
    codes = supervisor.stop()
    assert codes == {"parent": -signal.SIGINT, "no-term": -signal.SIGKILL, "no-int": -signal.SIGTERM}
    assert time.monotonic() - began < 5 and wait_gone(grandchild)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_supervisor_stops_every_child_and_exits_zero(tmp_path, sig):
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from workbench.service.supervisor import ChildSpec, Supervisor
        sup = Supervisor([ChildSpec("a", {SLEEPER!r}), ChildSpec("b", {SLEEPER!r})], Path(sys.argv[1]), grace=2)
        with sup.signals_stop():
            try:
                sup.start()
                print(*[c.process.pid for c in sup.children], flush=True)
                sup.watch()
            finally:
                print(sup.stop(), flush=True)
    """)
    proc = subprocess.Popen([PY, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(map(alive, pids))
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "'a':" in out and "'b':" in out
    assert all(wait_gone(pid) for pid in pids)


def test_supervisor_and_spec_settings_name_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match="child names must be unique"):
        Supervisor([ChildSpec("a", SLEEPER), ChildSpec("a", SLEEPER)], tmp_path)
    with pytest.raises(ConfigError, match="grace=0 must be a number > 0"):
        Supervisor([], tmp_path, grace=0)
    with pytest.raises(ConfigError, match="ready_method='POST'; allowed: GET, HEAD"):
        ChildSpec("a", SLEEPER, ready_method="POST")
    with pytest.raises(ConfigError, match="argv must not be empty"):
        ChildSpec("a", [])


def test_demo_children_wire_the_three_services_together():
    s = DemoSettings(daemon_port=9100, generator_port=9101, dashboard_port=9102, tick=0.5, history=48, servers=4)
    daemon, stream, board = demo_children(s)
    assert (daemon.name, stream.name, board.name) == ("daemon", "stream", "dashboard")
    assert daemon.ready_url == "http://127.0.0.1:9100/health" and "--no-state" in daemon.argv
    assert " ".join(daemon.argv).endswith(f"--history-dir {s.log_dir.parent / 'history'} --log-level info")
    assert stream.ready_url == "http://127.0.0.1:9101/scenario/status"
    argv = " ".join(stream.argv)
    assert "--target http://127.0.0.1:9100" in argv and "--history 48" in argv and "--tick 0.5" in argv
    assert "--servers 4" in argv and "--port 9101" in argv
    board_argv = " ".join(board.argv)
    assert "--daemon http://127.0.0.1:9100" in board_argv and "--generator http://127.0.0.1:9101" in board_argv
    assert "--port 9102" in board_argv and board.ready_method == "HEAD" and "--notebook" not in board_argv
    nb = demo_children(DemoSettings(notebook=Path("x.ipynb")))[2]
    assert list(nb.argv[-2:]) == ["--notebook", "x.ipynb"]
    # by default the history is the bundle's window: older steps would only be refused as too old
    window = json.loads((Path("models/demo") / "dataset.json").read_text())["max_encoder_length"]
    assert f"--history {window} " in " ".join(demo_children(DemoSettings())[1].argv)


def test_demo_settings_refuse_bad_values_naming_them():
    with pytest.raises(ConfigError, match=r"the three ports must differ, got \[8000, 8000, 8866\]"):
        DemoSettings(generator_port=8000)
    with pytest.raises(ConfigError, match="scenario='doom'; allowed: healthy, degrading, critical"):
        DemoSettings(scenario="doom")
    with pytest.raises(ConfigError, match=r"history=-1 must be an integer in \[0, 100000\]"):
        DemoSettings(history=-1)


def test_the_demo_refuses_a_missing_bundle_or_a_taken_port(tmp_path):
    with pytest.raises(BundleError, match="make demo-model"):
        check_can_start(DemoSettings(bundle=tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not free_port("127.0.0.1", taken)
        with pytest.raises(ServiceError, match=f"daemon_port={taken}"):
            check_can_start(DemoSettings(bundle=tmp_path, daemon_port=taken))
    result = CliRunner().invoke(main, ["demo", "--bundle", str(tmp_path / "none")])
    assert result.exit_code == 1 and "BundleError" in result.output and "Traceback" not in result.output
