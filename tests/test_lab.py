"""``make lab``: JupyterLab on the notebooks, their kernels started in the repo root as papermill runs them.

The fast test reads the recipe with ``make -n lab`` (which starts nothing). The slow one starts that very
command headless on a free loopback port with a token (runtime and config dirs under ``tmp_path``; the
extensions stay in the venv's ``share/jupyter``), checks the contents API, the Lab page (with the widgets
and plotly extensions), the ``python3`` kernel spec, opens a notebook's kernel and checks that it runs in
the repo root (the notebooks' parameters say ``data/...``, ``models/...``) and imports this checkout's
``workbench``, then stops the server with SIGTERM and checks that the server and the kernel are gone.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "workbench-lab-test-" + uuid.uuid4().hex
START_TIMEOUT = 90  # until /api/status answers
STOP_TIMEOUT = 20  # from SIGTERM to exit
KERNEL_TIMEOUT = 120  # a kernel start and `import workbench` on two busy cores
NOTEBOOK = "01_generate_data.ipynb"
LAB_EXTENSIONS = ("@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly")


def lab_command(env: dict[str, str], *make_vars: str) -> list[str]:
    """The ``jupyter lab`` command line of ``make lab``, read with ``make -n`` (which runs nothing)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "lab", *make_vars],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"make -n lab failed:\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.replace("\\\n", " ").splitlines()
    labs = [shlex.split(line) for line in lines if "jupyter lab" in line and not line.lstrip().startswith("#")]
    assert len(labs) == 1, f"expected one `jupyter lab` command in `make -n lab`:\n{done.stdout}"
    return labs[0]


def options(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def without_display() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "DISPLAY"}


def test_make_lab_runs_jupyter_lab_on_the_notebooks_with_kernels_in_the_repo_root() -> None:
    command = lab_command(without_display(), "LAB_PORT=9123")
    assert command[:2] == [".venv/bin/jupyter", "lab"]
    opts = options(command)
    assert opts["--ServerApp.ip"] == "127.0.0.1"
    assert opts["--ServerApp.port"] == "9123"
    assert opts["--ServerApp.root_dir"] == "notebooks"
    assert Path(opts["--MappingKernelManager.root_dir"]) == ROOT
    assert "--no-browser" in command  # no display, no browser
    assert ("--allow-root" in command) == (os.geteuid() == 0)  # Lab refuses to run as root without it
    assert "--no-browser" not in lab_command({**without_display(), "DISPLAY": ":0"})
    assert options(lab_command(without_display()))["--ServerApp.port"] == "8888"

    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "lab" in phony.split()
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True)
    assert any(line.split()[:1] == ["lab"] for line in listed.stdout.splitlines()), listed.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Lab:
    """A ``jupyter lab`` subprocess with its log in a file; killed on exit if still running."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.command, self.env, self.port, self.log_path = command, env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {TOKEN}"}, timeout=30, trust_env=False
        )
        self.kernel_pids: list[int] = []

    def __enter__(self) -> Lab:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for pid in self.kernel_pids:  # a kernel the server left behind (the test has failed already)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- {' '.join(self.command)}\n--- log (last 6000 characters):\n{text[-6000:]}"

    def wait_ready(self) -> float:
        began = time.monotonic()
        while time.monotonic() - began < START_TIMEOUT:
            if self.process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.process.returncode} before answering\n{self.log()}")
            try:
                if self.client.get("/api/status", timeout=5).status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"jupyter lab did not answer /api/status within {START_TIMEOUT} s\n{self.log()}")

    def run_code(self, kernel_id: str, code: str) -> str:
        """Execute ``code`` in a kernel over its websocket; its stdout (a kernel error fails the test)."""
        session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
        request = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": session,
                "username": "test",
                "version": "5.3",
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
            "channel": "shell",
            "buffers": [],
        }
        url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?session_id={session}&token={TOKEN}"
        stdout: list[str] = []
        deadline = time.monotonic() + KERNEL_TIMEOUT
        with connect(url, proxy=None, open_timeout=KERNEL_TIMEOUT, max_size=None) as ws:
            ws.send(json.dumps(request))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"the kernel did not finish {code!r} within {KERNEL_TIMEOUT} s\n{self.log()}")
                try:
                    message = json.loads(ws.recv(timeout=remaining))
                except TimeoutError:
                    continue
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "stream" and content["name"] == "stdout":
                    stdout.append(content["text"])
                elif kind == "error":
                    pytest.fail(f"the kernel raised {content['ename']}: {content['evalue']}\n{self.log()}")
                elif kind == "status" and content["execution_state"] == "idle":
                    return "".join(stdout)

    def stop(self) -> float:
        """SIGTERM, as a service manager stops it (on SIGINT in a terminal the server asks first)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jupyter lab was still running {STOP_TIMEOUT} s after SIGTERM\n{self.log()}")
        return time.monotonic() - began


@pytest.mark.slow
def test_lab_serves_the_notebooks_and_runs_their_kernels_in_the_repo_root(tmp_path: Path) -> None:
    port = free_port()
    env = without_display()
    env.update(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        IPYTHONDIR=str(tmp_path / "ipython"),  # the kernel's history database, not the user's
    )
    command = [arg for arg in lab_command(env) if not arg.startswith("--ServerApp.port=")]
    command[0] = str(ROOT / command[0])
    command += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}"]
    assert "--no-browser" in command

    with Lab(command, env, port, tmp_path / "lab.log") as lab:
        lab.wait_ready()
        assert httpx.get(f"{lab.url}/api/contents", trust_env=False, timeout=30).status_code == 403, "no token"

        contents = lab.client.get("/api/contents")
        assert contents.status_code == 200, contents.text
        listed = {item["name"] for item in contents.json()["content"] if item["type"] == "notebook"}
        expected = {path.name for path in (ROOT / "notebooks").glob("*.ipynb")}
        assert expected and expected <= listed, f"missing from Lab's root: {sorted(expected - listed)}"

        page = lab.client.get("/lab")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:500]
        assert "jupyter-config-data" in page.text
        for extension in LAB_EXTENSIONS:  # prebuilt front-ends from ipywidgets 8 and plotly, no lab build
            assert f'"{extension}"' in page.text or f"&#34;{extension}&#34;" in page.text, extension

        specs = lab.client.get("/api/kernelspecs").json()
        assert "python3" in specs["kernelspecs"], sorted(specs["kernelspecs"])

        session = lab.client.post(
            "/api/sessions",
            json={"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}},
        )
        assert session.status_code == 201, session.text
        code = "import json, os, workbench; print(json.dumps([os.getcwd(), os.getpid(), workbench.__file__]))"
        cwd, pid, workbench_file = json.loads(lab.run_code(session.json()["kernel"]["id"], code))
        lab.kernel_pids.append(pid)
        assert Path(cwd) == ROOT, "the kernel must start where papermill runs the notebooks: the repo root"
        assert Path(workbench_file).is_relative_to(ROOT / "workbench")

        lab.stop()
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), f"the kernel {pid} outlived the server\n{lab.log()}"
