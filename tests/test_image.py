"""The container image (Dockerfile), built once for the module with `make image` and run with
podman or docker, whichever works here: the smoke TrainFlow inside it, read back from the host
through the Metaflow client; then the service, read-only and non-root, serving that run's
export mounted read-only, answering as the in-process Predictor does, and draining on SIGTERM.

Where no registry is reachable the base comes from Debian's packages (`make base-image`, when
debootstrap is on PATH). Skipped, saying why, where neither engine works (.ci/run installs
podman)."""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    SMOKE,
    assert_same_probabilities,
    free_port,
    post_jpeg,
    use_home,
    wait_until_ready,
)
from metaflow import Flow, Run

from lib import synthetic
from lib.export import export
from lib.inference import Predictor
from lib.predlog import PredictionLog

pytestmark = pytest.mark.image

IMAGE = "facet:latest"  # what `make image` builds: the test reuses its layers, and leaves it
LOCAL_BASE = "facet-base:bookworm"
CONTAINERS_CONF = ROOT / "deploy" / "image" / "containers.conf"


def engine_environment() -> dict[str, str]:
    """podman reads the project's settings (runc, cgroupfs, host network) unless the caller
    named others."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def working_engine() -> tuple[str | None, str]:
    """docker if its engine answers, else podman if it runs a container: (engine, why not)."""
    quiet = {"capture_output": True, "timeout": 60, "env": engine_environment()}
    if shutil.which("docker") and subprocess.run(["docker", "info"], **quiet).returncode == 0:
        return "docker", ""
    if not shutil.which("podman"):
        return None, "neither a docker engine (`docker info` fails) nor podman on PATH"
    done = subprocess.run(["podman", "info"], **quiet)
    if done.returncode != 0:
        return None, f"podman does not work here: {done.stderr.decode()[-500:]}"
    return "podman", ""


ENGINE, WHY_NOT = working_engine()
if ENGINE is None:
    pytestmark = [pytest.mark.image, pytest.mark.skip(reason=f"no container engine: {WHY_NOT}")]


def engine(*args, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [ENGINE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=engine_environment(),
    )
    assert done.returncode == 0 or not check, f"{ENGINE} {args[0]}: {done.stderr[-3000:]}"
    return done


def make(target: str) -> float:
    """`make TARGET ENGINE=...` as a user types it; its time in seconds."""
    started = time.monotonic()
    done = subprocess.run(
        ["make", target, f"ENGINE={ENGINE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env=engine_environment(),
    )
    assert done.returncode == 0, f"make {target}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def image() -> str:
    """facet:latest, built once for the module (layers cached: a change to lib/ rebuilds only
    the source layers)."""
    base_missing = engine("image", "inspect", LOCAL_BASE, check=False).returncode != 0
    if base_missing and shutil.which("debootstrap"):
        make("base-image")
    seconds = make("image")
    # A rebuild after the dependencies changed leaves the old 2 GB layers untagged: drop them.
    engine("image", "prune", "--force")
    size = int(engine("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\n{IMAGE}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture(scope="module")
def trained_home(image, tmp_path_factory) -> tuple[Path, str]:
    """The smoke TrainFlow run inside the image, into a datastore on a host volume:
    (home, pathspec as the host's client finds it)."""
    home = tmp_path_factory.mktemp("image-home")
    (home / "datastore").mkdir()
    for folder in (home, home / "datastore"):
        folder.chmod(0o777)  # the image's user (10001) writes here
    engine(
        "run",
        "--rm",
        "--network=host",
        # The same path inside and out: the host's client finds what the container wrote.
        "-v",
        f"{home}:{home}",
        "-w",
        f"{home}/datastore",  # Metaflow writes cards under the working directory
        "-e",
        f"METAFLOW_DATASTORE_SYSROOT_LOCAL={home}/datastore",
        "-e",
        "METAFLOW_USER=tests",
        "-e",
        f"FACET_CACHE={home}/cache",
        "-e",
        "WANDB_MODE=offline",
        "-e",
        "WANDB_DIR=/tmp",
        image,
        "python",
        "/app/flows/train_flow.py",
        "--config",
        "config",
        f"/app/flows/configs/{SMOKE.name}",
        "run",
        timeout=600,
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_home(monkeypatch, home)
        return home, Flow("TrainFlow").latest_run.pathspec


@pytest.fixture
def trained_run(trained_home, monkeypatch):
    home, pathspec = trained_home
    use_home(monkeypatch, home)
    return Run(pathspec)


def test_the_image_runs_as_a_non_root_user_with_python_and_the_pinned_packages(image):
    config = json.loads(engine("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    done = engine(
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "id -u; python --version; command -v download-gcp-object; "
        "test -w . && echo writable; python -c 'import torch; print(torch.__version__)'",
    )
    uid, version, downloader, writable, torch_version = done.stdout.splitlines()
    assert uid == "10001" and version.startswith("Python 3.11")
    assert downloader.endswith("download-gcp-object")  # Metaflow's GCS code-package fetch
    assert writable == "writable"  # Metaflow unpacks its code package in the working dir
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert torch_version.split("+")[0] == pinned.group(1)
    # The source, and no tests.
    assert engine("run", "--rm", image, "ls", "/app").stdout.split() == ["flows", "lib", "serving"]


def test_trainflow_runs_inside_the_image_and_the_host_reads_the_run_back(trained_run):
    assert trained_run.successful
    assert "model.safetensors" in trained_run.data.model
    assert 0 < trained_run.data.metrics["mean_accuracy"] <= 1
    steps = {step.id for step in trained_run}
    assert {"start", "prepare_shard", "prepare_data", "train", "evaluate", "end"} <= steps


@pytest.fixture
def faces(tmp_path) -> list[bytes]:
    root = synthetic.generate(tmp_path / "faces", synthetic.make_spec(8, seed=5))
    return [p.read_bytes() for p in sorted(Path(root, "img_align_celeba").iterdir())]


def answered(url: str, image: bytes, request_id: str) -> bool:
    """The request got its 200; False when refused, reset or cut off by the shutdown."""
    try:
        status, body = post_jpeg(url, image, request_id)
    except OSError:
        return False
    return status == 200 and body["request_id"] == request_id


def test_the_service_serves_read_only_matches_the_predictor_and_drains_on_sigterm(
    image, trained_run, faces, tmp_path
):
    model = export(trained_run.pathspec, tmp_path / "exported")
    log_folder = tmp_path / "log"
    log_folder.mkdir()
    log_folder.chmod(0o777)  # the image's user writes the prediction log here
    port = free_port()
    name = f"facet-test-{uuid.uuid4().hex[:8]}"
    engine(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--network=host",
        "-v",
        f"{model}:/model:ro",
        "-v",
        f"{log_folder}:/var/lib/facet",
        "-e",
        "MODEL_DIR=/model",
        "-e",
        f"PORT={port}",
        image,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, lambda: engine("logs", name, check=False).stderr[-3000:], 180)
        inspected = json.loads(engine("inspect", name).stdout)[0]
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
        assert engine("exec", name, "touch", "/app/x", check=False).returncode != 0

        # The same JPEG through the container and through the Predictor in this process.
        status, body = post_jpeg(f"{base}/predict", faces[0], "same-1")
        assert status == 200
        assert body["model"] == trained_run.pathspec
        predictor = Predictor.from_dir(model)
        probs = predictor.predict(predictor.pixels(faces[0])[None]).probs[0]
        ours = dict(zip(predictor.attributes, map(float, probs), strict=True))
        assert_same_probabilities(body["predictions"][0]["attributes"], ours)

        # SIGTERM while 8 clients keep posting: gunicorn finishes what it took and exits 0.
        results, stop, sent = {}, threading.Event(), iter(range(10**6))

        def client() -> None:
            while not stop.is_set():
                request_id = f"load-{next(sent)}"
                results[request_id] = answered(f"{base}/predict", faces[1], request_id)

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(client)
            time.sleep(3)
            engine("kill", "--signal", "TERM", name)
            code = int(engine("wait", name, timeout=60).stdout.strip().splitlines()[-1])
            stop.set()
        assert code == 0, engine("logs", name).stderr[-3000:]
    finally:
        engine("rm", "--force", name, check=False)

    done = {request_id for request_id, ok in results.items() if ok}
    assert len(done) >= 8, f"only {len(done)} predictions answered under load"
    logged = set(PredictionLog(log_folder / "predictions.db").read()["request_id"])
    assert done <= logged  # every answered prediction is in the log on the volume
    assert "same-1" in logged
