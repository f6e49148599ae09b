"""What the tests share besides fixtures: paths, the flow launchers, the service under gunicorn
and the tolerances."""

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

# Metaflow reads its settings once, at import: a user name must exist before that.
os.environ.setdefault("METAFLOW_USER", "tests")
from metaflow import Run, Runner
from metaflow.plugins.datastores.local_storage import LocalStorage

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "train_flow.py"
MULTINODE_FLOW = ROOT / "flows" / "train_multinode_flow.py"
MONITOR_FLOW = ROOT / "flows" / "monitor_flow.py"
SMOKE = ROOT / "flows" / "configs" / "smoke.json"

# Model outputs computed in different batches, batch positions or thread counts differ in the
# last bits of float32: matrix kernels reduce in an order that depends on the CPU (AVX2 kernels
# order a batch's rows differently from AVX-512 ones). Seen: 6e-8 between batch positions on an
# AMD EPYC. Probabilities from different computations agree to this; bitwise equality is kept
# for identical computations only (uint8 pixels, the same call twice).
PROBABILITY_ATOL = 1e-5


def assert_same_probabilities(a: dict[str, float], b: dict[str, float]) -> None:
    """Two answers' `attributes` (name -> probability) name the same attributes in the same
    order, with probabilities equal to PROBABILITY_ATOL."""
    assert list(a) == list(b)
    np.testing.assert_allclose(list(a.values()), list(b.values()), atol=PROBABILITY_ATOL, rtol=0)


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Point Metaflow's datastore, the data cache and W&B at folders under `home`."""
    datastore = home / "datastore"
    datastore.mkdir(exist_ok=True)
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(datastore))
    monkeypatch.setenv("FACET_CACHE", str(home / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    # Metaflow read the sysroot at import: point this process's client there too.
    monkeypatch.setattr(LocalStorage, "SYSROOT_VAR", str(datastore))
    monkeypatch.setattr(LocalStorage, "datastore_root", None)
    return home


def smoke_config() -> dict:
    return json.loads(SMOKE.read_text())


def learning_config() -> dict:
    """The smoke run made long enough (~30 s on 2 cores) to learn the drawn attributes."""
    smoke = smoke_config()
    return {
        **smoke,
        # One shard: the smoke config's small shards are there to test the fan-out.
        "data": {**smoke["data"], "synthetic": {"n": 3000, "seed": 1}, "shard_size": 5000},
        "model": {
            "image_size": 32,
            "patch_size": 4,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
        },
        "train": {
            **smoke["train"],
            "epochs": 10,
            "batch_size": 64,
            "learning_rate": 0.003,
            "gradient_accumulation_steps": 1,
            "max_shift": 1,
            "num_workers": 0,
            "log_every": 20,
            "checkpoint_every": 10_000,
            "wandb": False,
        },
        "require_beats_baseline": True,
    }


def run_python(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """This interpreter with `args` in a fresh process (this test's environment); it must
    succeed."""
    done = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def run_flow(config: dict, expect: str = "successful", flow: Path = FLOW, **parameters) -> Run:
    """Run TrainFlow (or `flow`) as a user would and check how it ended: Runner does not
    raise."""
    return _launch(flow, "run", [("config", config)], expect, **parameters)


def resume_flow(origin: Run, expect: str = "successful") -> Run:
    """`resume --origin-run-id`: Metaflow reuses the origin's config and refuses a new one."""
    return _launch(FLOW, "resume", None, expect, origin_run_id=origin.id)


def run_monitor(expect: str = "successful", **parameters) -> Run:
    """Run MonitorFlow as a user would (model_run=, log=, window_hours=, min_rows=)."""
    return _launch(MONITOR_FLOW, "run", None, expect, **parameters)


def _launch(flow: Path, command: str, config_value, expect: str, **options) -> Run:
    # Cards are written under the working directory's .metaflow, whatever the sysroot says:
    # run from the datastore folder so that they land where the client reads them.
    cwd = os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]
    settings = {"config_value": config_value} if config_value else {}
    with Runner(str(flow), show_output=False, cwd=cwd, **settings) as runner:
        result = getattr(runner, command)(**options)
        assert result.status == expect, result.stderr[-3000:] + failed_tasks(result.run)
        return result.run


def failed_tasks(run: Run) -> str:
    """The end of each failed task's stderr: the traceback Runner's own output leaves out."""
    return "".join(
        f"\n--- {task.pathspec}:\n{task.stderr[-3000:]}"
        for step in run
        for task in step
        if not task.successful
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_gs_datastore(monkeypatch: pytest.MonkeyPatch, sysroot: str) -> None:
    """Make Metaflow's datastore GCS under `sysroot`: for the flows and processes this test
    starts (METAFLOW_* variables) and for this process, whose Metaflow read its settings at
    import."""
    from metaflow import metaflow_config

    monkeypatch.setenv("METAFLOW_DEFAULT_DATASTORE", "gs")
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_GS", sysroot)
    monkeypatch.setattr(metaflow_config, "DEFAULT_DATASTORE", "gs")
    monkeypatch.setattr(metaflow_config, "DATASTORE_SYSROOT_GS", sysroot)


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_jpeg(url: str, image: bytes, request_id: str | None = None, timeout: float = 60):
    """POST one JPEG as the body: (status, the JSON answer; {} for an error status). Connection
    errors (refused, reset, cut off mid-answer) are raised."""
    headers = {"Content-Type": "image/jpeg", **({"X-Request-ID": request_id} if request_id else {})}
    request = urllib.request.Request(url, data=image, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


@contextmanager
def serving(tmp_path: Path, **environment: str) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """gunicorn with serving/gunicorn.conf.py and 2 workers on a free port: (server, base URL,
    its stderr's file), once every worker answers."""
    port = free_port()
    env = {
        **os.environ,
        "PREDICTION_LOG": str(tmp_path / "predictions.db"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **environment,
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "serving/gunicorn.conf.py"]
    errors = tmp_path / "err"
    with errors.open("w") as stderr:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: a test can kill the whole replica
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base, lambda: errors.read_text()[-3000:])
            yield server, base, errors
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)  # a worker still booting finishes loading first


@contextmanager
def locked(database: str | Path) -> Iterator[None]:
    """Another connection holds the SQLite file's exclusive lock while the block runs."""
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.close()


def wait_until_ready(base: str, explain: Callable[[], str], seconds: float = 120) -> None:
    """Several readiness checks in a row answered: every worker is up. If they are not within
    `seconds`, fails with what `explain` returns (the server's log)."""
    deadline = time.monotonic() + seconds
    ready = 0
    while ready < 10:
        if time.monotonic() > deadline:
            raise AssertionError(explain())
        try:
            ready = ready + 1 if get(f"{base}/readyz")[0] == 200 else 0
        except OSError:  # refused, or queued while the workers boot
            ready = 0
        time.sleep(0.1)


def wait_for(
    condition: Callable[[], bool], seconds: float, errors: Path | None = None, poll_s: float = 0.2
) -> None:
    """Check `condition` every `poll_s` until it holds; fail after `seconds`, with the end of
    `errors` (a server's log) if given."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, errors.read_text()[-3000:] if errors else "timed out"
        time.sleep(poll_s)


class FlakyProxy(ThreadingHTTPServer):
    """A real HTTP server in front of the emulator that answers 503 to the first `failures`
    requests whose path contains `failing` (object downloads by default; uploads with
    "uploadType=") and forwards everything else. Listings carry each object's mediaLink,
    which names the emulator, so the proxy rewrites it to itself; `rewrites` are replaced in
    every answer too (an object name the emulator would refuse to store)."""

    def __init__(self, target: str, failures: int, failing: str = "alt=media", rewrites=()):
        self.target, self.remaining, self.failed = target, failures, 0
        self.failing = failing
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _Forward)
        self.address = f"127.0.0.1:{self.server_port}"
        self.rewrites = [(target.encode(), self.address.encode()), *rewrites]


class _Forward(BaseHTTPRequestHandler):
    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        with self.server.lock:
            fail = self.server.failing in self.path and self.server.remaining > 0
            if fail:
                self.server.remaining -= 1
                self.server.failed += 1
        if fail:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = http.client.HTTPConnection(self.server.target)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        reply = upstream.getresponse()
        payload = reply.read()
        for old, new in self.server.rewrites:
            payload = payload.replace(old, new)
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, *args):
        pass


@contextmanager
def flaky(
    monkeypatch, failures: int, failing: str = "alt=media", rewrites=()
) -> Iterator[FlakyProxy]:
    """Every request of the block goes through a FlakyProxy in front of the emulator."""
    emulator = os.environ["STORAGE_EMULATOR_HOST"].removeprefix("http://")
    proxy = FlakyProxy(emulator, failures, failing, rewrites)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with monkeypatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", f"http://{proxy.address}")
            yield proxy
    finally:
        proxy.shutdown()
