"""How fast does the service answer? gunicorn + serving/ against two servers built like the
predecessor's (FastAPI + uvicorn, and Flask), side by side in one run, and against the
machine's own measured peak.

    python bench/serve_bench.py                                  # both models, about 9 minutes
    python bench/serve_bench.py --models tiny --duration 4       # a quick look
    python bench/serve_bench.py --model-run TrainFlow/1234 --precision vitb=int8
    python bench/serve_bench.py --workers 1 --threads 4          # other gunicorn settings
    BATCH_MAX_SIZE=64 python bench/serve_bench.py --models vitb --precision vitb=bf16 \
        --workers 1 --threads 64 --concurrency 1,64 --baselines '' --batch-one   # on a GPU

First the machine: the CPU's model and its matrix-multiply extensions (avx2, avx512f,
avx512_vnni / avx_vnni, amx_tile, ...: read from /proc/cpuinfo) and the peak it reaches with
all cores, timed here: fp32 and bf16 GFLOP/s of a square torch.mm, and int8 GOP/s of a
dynamically quantised square nn.Linear (what PRECISION=int8 runs), counting 2*M*N*K; the
fastest of three timings at 1024 and at 2048.

Two models: `tiny`, a trained TrainFlow run (the champion unless --model-run) exported with
lib.export, and `vitb`, a ViT-B/16-sized model (224 px, 86M parameters) with random weights
in the same folder format. For each:

1. In this process: Predictor.predict images/s in fp32, bf16 and int8 at batch 1 and 8, with
   the torch threads one gunicorn worker gets; for the trained model also the test split's
   mean accuracy in each precision (the run's thresholds) and the share of decisions changed.
2. Servers (--baselines chooses which of the two others): ours = gunicorn with
   serving/gunicorn.conf.py as production runs it (MODEL_DIR; workers, threads and
   TORCH_THREADS as lib.settings.ServingSettings.layout gives them for this environment and
   machine, unless --workers / --threads / --torch-threads; the layout used is printed), at
   whichever of fp32 and bf16 was faster at batch 1 (int8 changes answers, so only --precision
   makes it the choice); ours again in int8 (not on a GPU: torch's dynamic int8 runs on the
   CPU); with --batch-one, ours again with BATCH_MAX_SIZE=1 (a model call per image: what
   adaptive batching is measured against); fastapi (bench/fastapi_server.py: FastAPI +
   uvicorn, one process, a plain `def` endpoint run in FastAPI's threadpool); and naive
   (bench/naive_server.py: Flask's threaded development server, one process). Both
   baselines: an HF image processor and a model call per request, fp32, torch's default
   threads, waiting for work as ours do (OMP_WAIT_POLICY) (bench/baseline.py).
3. Load: a client process, started per cell, whose threads POST real JPEGs (lib.synthetic) as
   image/jpeg, one per request, each on a fresh connection (as nginx talks to its upstreams
   by default; --keep-alive for persistent ones), closed loop at concurrency 1, 4 and 16
   (--concurrency) for --duration seconds after a warm-up. All the servers run at once and
   take turns, in rounds: each round gives each server each concurrency for its share of
   --duration, so that the machine's drift (on a shared VM, a third from one minute to the
   next) falls on every contender alike. Printed: requests/s, p50 / p95 / p99 latency,
   errors, the server's CPU time per request (all its processes, from /proc) and the
   client's; ours against each baseline, and against ours-b1 at the same precision, for
   throughput and p99 at each concurrency.
4. Share of the peak (CPU only: the peak is the CPU's): images/s x the model's FLOPs per image
   (counted from its config: patch embedding, attention and MLP matmuls of every layer, the
   head) over the measured peak of the same precision, fp32, bf16 and int8: in process at
   batch 1 and 8, and served at each concurrency.

The client and anything else running share the cores with the servers: req/s, latency and the
peak move with the machine's load (printed at start and end), CPU ms per request much less.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lib import synthetic
from lib.evaluate import summarize
from lib.features import Projection
from lib.inference import PRECISIONS, Predictor, quantize_int8
from lib.settings import LAYOUT_VARIABLES, ServingSettings

ROOT = Path(__file__).resolve().parents[1]

CONCURRENCY = (1, 4, 16)
DURATION = {"tiny": 8.0, "vitb": 15.0}  # seconds measured per cell
ROUNDS = {"tiny": 4, "vitb": 1}  # turns per cell (a ViT-B request at 16 takes seconds)
VIT_BASE = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
READY_TIMEOUT = 300.0
BASELINE_SERVERS = {  # bench/<name>_server.py, fp32
    "fastapi": "FastAPI + uvicorn, 1 process, a def endpoint in its threadpool",
    "naive": "Flask's development server, 1 process",
}
BASELINES = tuple(BASELINE_SERVERS)
# The extensions a CPU's matrix multiplies run on, as /proc/cpuinfo names them.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
PEAK_SIZES = (1024, 2048)  # the peak's square matrices: the fastest of them counts
PEAK_WINDOWS = 3  # timed windows per size: the fastest counts


@dataclass
class Cell:
    """One load level against one server."""

    latencies: np.ndarray  # seconds, successful requests started inside the window
    errors: int
    seconds: float
    total: int  # requests made, warm-up included
    client_ms: float  # the client process's CPU time per request made
    cpu_ms: float = np.nan  # the server's CPU time (all its processes) per request made

    @classmethod
    def pooled(cls, turns: list[Cell]) -> Cell:
        """The turns of one cell as one: every request, times per request averaged over all."""
        total = sum(turn.total for turn in turns)

        def per_request(name: str) -> float:
            return sum(getattr(turn, name) * turn.total for turn in turns) / max(total, 1)

        return cls(
            latencies=np.concatenate([turn.latencies for turn in turns]),
            errors=sum(turn.errors for turn in turns),
            seconds=sum(turn.seconds for turn in turns),
            total=total,
            client_ms=per_request("client_ms"),
            cpu_ms=per_request("cpu_ms"),
        )

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else np.nan


class Layout(NamedTuple):
    """How ours runs: gunicorn workers, threads per worker, torch threads per worker."""

    workers: int
    threads: int
    torch_threads: int


@dataclass
class Served:
    """One server's cells."""

    server: str  # ours, ours-b1 (BATCH_MAX_SIZE=1), or one of BASELINES
    precision: str
    cells: dict[int, Cell]

    @property
    def name(self) -> str:
        return f"{self.server} {self.precision}"


# --- the machine -------------------------------------------------------------------------


def cpu_description() -> str:
    """The CPU's model, which of CPU_FLAGS it has, and the kernels torch picked."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    present = set(flags.group(1).split()) if flags else set()
    has = [flag for flag in CPU_FLAGS if flag in present]
    lacks = [flag for flag in CPU_FLAGS if flag not in present]
    return (
        f"CPU {model.group(1) if model else 'unknown'}: has {', '.join(has) or 'none of them'};"
        f" lacks {', '.join(lacks) or 'none'}; torch kernels "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )


def rate(step: Callable[[], object], amount: float, seconds: float) -> float:
    """`amount` per second of `step`, repeated for at least `seconds` after a warm-up call."""
    step()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * amount / (time.perf_counter() - start)


def measured_peak(seconds: float = 0.5) -> dict[str, float]:
    """{precision: operations/s} of a large matrix multiply on all cores, the fastest of
    PEAK_WINDOWS windows at each of PEAK_SIZES (a single timing reads low when the clock or a
    neighbour moves): fp32 and bf16 torch.mm, and int8 a dynamically quantised nn.Linear
    (lib.inference.quantize_int8, as PRECISION=int8 serves; inside a Sequential, as
    quantize_dynamic swaps a module's children, not the module) at batch = size;
    2 * M * N * K operations per call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    peak = dict.fromkeys(PRECISIONS, 0.0)
    try:
        for size in PEAK_SIZES:
            a, b = torch.randn(size, size), torch.randn(size, size)
            a16, b16 = a.bfloat16(), b.bfloat16()
            linear = quantize_int8(torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)))
            steps = {
                "fp32": lambda: torch.mm(a, b),  # noqa: B023
                "bf16": lambda: torch.mm(a16, b16),  # noqa: B023
                "int8": lambda: linear(a),  # noqa: B023
            }
            with torch.no_grad():
                for precision, step in steps.items():
                    for _ in range(PEAK_WINDOWS):
                        speed = rate(step, 2.0 * size**3, seconds)
                        peak[precision] = max(peak[precision], speed)
        return peak
    finally:
        torch.set_num_threads(threads)


def flops_per_image(folder: Path) -> float:
    """Two operations per multiply-add of one image through the exported ViT: the patch
    embedding; per layer the query, key, value and output projections, the attention scores
    and their weighted sum, the MLP; the head. Norms, softmax and GELU are left out."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    patches = (config.image_size // config.patch_size) ** 2
    tokens, hidden = patches + 1, config.hidden_size  # + [CLS]
    embedding = patches * config.num_channels * config.patch_size**2 * hidden
    layer = tokens * (4 * hidden**2 + 2 * hidden * config.intermediate_size)
    layer += 2 * tokens**2 * hidden
    return 2.0 * (embedding + config.num_hidden_layers * layer + hidden * config.num_labels)


# --- the models -------------------------------------------------------------------------


def export_trained(run: str | None, out: Path) -> tuple[str, Path]:
    """The run (default: the champion) exported as serving's MODEL_DIR would load it."""
    from lib.export import export
    from lib.registry import current_champion

    if run is None:
        champion = current_champion()
        if champion is None:
            sys.exit(
                "serve_bench: no TrainFlow or TrainMultiNodeFlow run is tagged champion. Train "
                "one first with `make run` (python flows/train_flow.py run), or pass "
                "--model-run TrainFlow/<id>."
            )
        run = champion.pathspec
    try:
        return run, export(run, out)
    except AttributeError as error:  # a run from before the projection artifact existed
        sys.exit(f"serve_bench: {run} lacks the artifact {error}; train a new run (make run)")


def write_vit_base(out: Path) -> Path:
    """A randomly initialised ViT-B/16 with 40 outputs, in lib.export's folder format."""
    from lib.config import ModelConfig
    from lib.model import build_model, model_to_files, preprocessing_of, write_model_files

    torch.manual_seed(0)
    vit_base = ModelConfig(**VIT_BASE)
    model = build_model(vit_base, synthetic.ATTRIBUTES)
    folder = write_model_files(model_to_files(model, preprocessing_of(vit_base)), out)
    embeddings = np.random.default_rng(0).normal(size=(32, VIT_BASE["hidden_size"]))
    info = {
        "run": "random ViT-B/16",
        "dataset_fingerprint": "random",
        "metrics": {},
        "thresholds": dict.fromkeys(synthetic.ATTRIBUTES, 0.5),
        "projection": Projection.fit(embeddings).to_dict(),
    }
    (folder / "facet.json").write_text(json.dumps(info))
    return folder


def face_jpegs(out: Path, n: int = 64) -> list[bytes]:
    synthetic.generate(out, synthetic.make_spec(n, seed=123))
    return [p.read_bytes() for p in sorted((out / "img_align_celeba").glob("*.jpg"))]


# --- in process: precision ---------------------------------------------------------------


def images_per_second(predictor: Predictor, pixels: np.ndarray) -> float:
    """Predictor.predict on one batch, for at least 1.5 s."""
    return rate(lambda: predictor.predict(pixels), len(pixels), seconds=1.5)


def precision_speeds(folder: Path, images: list[bytes]) -> dict[str, dict[int, float]]:
    """{precision: {batch: images/s}}."""
    speeds = {}
    for precision in PRECISIONS:
        predictor = Predictor.from_dir(folder, precision)
        pixels = np.stack([predictor.pixels(data) for data in images[:8]])
        speeds[precision] = {b: images_per_second(predictor, pixels[:b]) for b in (1, 8)}
    return speeds


def precision_accuracy(run: str, folder: Path) -> dict[str, dict[str, float]] | str:
    """Test-split mean accuracy per precision with the run's thresholds, and the share of
    (image, attribute) decisions that differ from fp32; a reason string if the run's
    prepared data is gone."""
    from metaflow import Run, namespace

    from lib.datasets import CachedSplit

    namespace(None)
    dataset = Run(run).data.dataset
    try:
        test = CachedSplit(dataset["cache_dir"], "test")
        batches = list(torch.utils.data.DataLoader(test, batch_size=256))
    except (OSError, KeyError, ValueError) as error:
        return f"skipped: cannot read the run's prepared test split ({error})"
    labels = torch.cat([labels for _, labels in batches]).numpy()
    results, reference = {}, None
    for precision in PRECISIONS:
        predictor = Predictor.from_dir(folder, precision)
        probs = np.concatenate([predictor.predict(pixels.numpy()).probs for pixels, _ in batches])
        rates = np.array([dataset["positive_rates"]["train"][a] for a in predictor.attributes])
        metrics = summarize(predictor.attributes, probs, labels, predictor.thresholds, rates)
        decisions = probs >= predictor.thresholds
        reference = decisions if reference is None else reference
        results[precision] = {
            "mean_accuracy": metrics["mean_accuracy"],
            "changed": float((decisions != reference).mean()),
        }
    return results


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def server(
    name: str, command: list[str], env: dict[str, str], port: int, log: Path
) -> Iterator[tuple[int, int]]:
    """Start a server, wait until it answers /readyz ten times in a row (fresh connections,
    so that both gunicorn workers have loaded), yield its port and pid, stop it."""
    with log.open("w") as errors:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
    try:
        deadline, streak = time.monotonic() + READY_TIMEOUT, 0
        while streak < 10:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve_bench: {name} did not start:\n{log.read_text()[-3000:]}")
            streak = streak + 1 if ready(port) else 0
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


Server = contextlib.AbstractContextManager[tuple[int, int]]


def ours_environment(
    folder: Path, precision: str, args: argparse.Namespace, tmp: Path
) -> dict[str, str]:
    """The service's environment: MODEL_DIR, and the layout flags (--workers, --threads,
    --torch-threads) over this environment's."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MODEL_RUN"}
    env.update({name: str(value) for name, value in given_layout(args).items()})
    env.update(
        MODEL_DIR=str(folder),
        PRECISION=precision,
        PREDICTION_LOG=str(tmp / f"predictions-{port}.db"),
        HOST="127.0.0.1",
        PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
    )
    return env


def given_layout(args: argparse.Namespace) -> dict[str, int]:
    """What --workers, --threads and --torch-threads set; production's defaults otherwise."""
    given = (args.workers, args.threads, args.torch_threads)
    return {name: value for name, value in zip(LAYOUT_VARIABLES, given, strict=True) if value}


def layout(args: argparse.Namespace) -> Layout:
    """The layout serving/gunicorn.conf.py gives ours on this machine."""
    settings = ServingSettings(**given_layout(args))
    return Layout(*settings.layout(len(os.sched_getaffinity(0))))


def ours(env: dict[str, str], tmp: Path) -> Server:
    """The service as production runs it: gunicorn with serving/gunicorn.conf.py."""
    command = [sys.executable, "-m", "gunicorn", "--config", "serving/gunicorn.conf.py"]
    port = int(env["PORT"])
    return server("gunicorn", command, env, port, tmp / f"gunicorn-{port}.log")


def baseline(name: str, folder: Path, tmp: Path) -> Server:
    """bench/<name>_server.py: one process, fp32, torch's default threads, which wait for work
    as ours do (OMP_WAIT_POLICY): the comparison is of the serving, not of a spin setting."""
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / f"{name}_server.py"), str(folder)]
    command += ["--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_THREADS"}
    env["OMP_WAIT_POLICY"] = ServingSettings().OMP_WAIT_POLICY
    return server(name, command, env, port, tmp / f"{name}-{port}.log")


# --- load --------------------------------------------------------------------------------


def client(
    port: int, images: list[bytes], first: int, until: float, keep_alive: bool, out: list
) -> None:
    """POST images back to back until `until`, appending (start, seconds, ok) per request:
    a fresh connection per request (as nginx talks to its upstreams by default), or one
    keep-alive connection, reopened after an error."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "image/jpeg"} | ({} if keep_alive else {"Connection": "close"})
    i = first
    while (start := time.perf_counter()) < until:
        try:
            connection.request("POST", "/predict", body=images[i % len(images)], headers=headers)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        if not (ok and keep_alive):
            connection.close()
        out.append((start, time.perf_counter() - start, ok))
        i += 1
    connection.close()


def clients(
    port: int,
    images: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    keep_alive: bool,
) -> tuple[float, list[tuple[float, float, bool]], float]:
    """In the client process: `concurrency` client threads for warmup + seconds; the window's
    start, every request's record, and this process's CPU seconds."""
    cpu = time.process_time()
    begin = time.perf_counter() + warmup
    until = begin + seconds
    records: list[tuple[float, float, bool]] = []
    threads = [
        threading.Thread(target=client, args=(port, images, 7 * i, until, keep_alive, records))
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return begin, records, time.process_time() - cpu


def load(
    port: int, images: list[bytes], concurrency: int, seconds: float, keep_alive: bool
) -> Cell:
    """Closed-loop load from a process of its own (forked, so it starts at once), so that the
    client's threads share a GIL with nothing else; requests started during the warm-up (a
    fifth of the time, at least 1 s) are dropped."""
    warmup = max(1.0, seconds / 5)
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=fork) as pool:
        job = pool.submit(clients, port, images, concurrency, warmup, seconds, keep_alive)
        begin, records, client_seconds = job.result()
    window = [(latency, ok) for start, latency, ok in records if start >= begin]
    latencies = np.array([latency for latency, ok in window if ok])
    total = max(len(records), 1)
    errors = sum(not ok for _, ok in window)
    return Cell(latencies, errors, seconds, len(records), client_seconds * 1000 / total)


def measure(
    port: int, pid: int, images: list[bytes], c: int, seconds: float, keep_alive: bool
) -> Cell:
    """One turn of one server at concurrency c, with the server's CPU time per request."""
    before = cpu_seconds(pid)
    cell = load(port, images, c, seconds, keep_alive)
    cell.cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(cell.total, 1)
    return cell


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its descendants (Linux /proc; NaN elsewhere).
    Per request it hardly moves when other processes compete for the cores, unlike req/s."""
    if not Path("/proc/self/stat").exists():
        return np.nan
    total, pids = 0.0, [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
    return total


# --- report ------------------------------------------------------------------------------


def print_speeds(name: str, speeds: dict[str, dict[int, float]], torch_threads: int) -> None:
    print(f"\n{name}: Predictor.predict in this process, {torch_threads} torch thread(s)")
    print(f"  {'precision':9} {'batch 1 img/s':>14} {'batch 8 img/s':>14} {'vs fp32 (1 / 8)':>16}")
    for precision, by_batch in speeds.items():
        ratios = "/".join(f"{by_batch[b] / speeds['fp32'][b]:.2f}" for b in (1, 8))
        print(f"  {precision:9} {by_batch[1]:14.1f} {by_batch[8]:14.1f} {ratios:>16}")


def print_accuracy(accuracy: dict[str, dict[str, float]] | str) -> None:
    if isinstance(accuracy, str):
        print(f"  test accuracy: {accuracy}")
        return
    print(f"  {'precision':9} {'test mean accuracy':>19} {'decisions changed vs fp32':>26}")
    for precision, row in accuracy.items():
        print(f"  {precision:9} {row['mean_accuracy']:19.4f} {row['changed']:26.4%}")


def print_cells(name: str, label: str, results: list[Served]) -> None:
    print(f"\n{name}: HTTP /predict, one JPEG per request\n{label}")
    head = f"  {'server':12} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(f"{head} {'errors':>6} {'CPU ms/req':>10} {'client CPU ms/req':>17}")
    for served in results:
        for c, cell in served.cells.items():
            print(
                f"  {served.name:12} {c:4d} {cell.rps:8.1f} {cell.ms(50):8.1f} {cell.ms(95):8.1f}"
                f" {cell.ms(99):8.1f} {cell.errors:6d} {cell.cpu_ms:10.1f} {cell.client_ms:17.2f}"
            )


def print_ratios(results: list[Served]) -> None:
    """Ours against each of the others, throughput and p99 at each concurrency: the baselines,
    and ours-b1 at the same precision (batching, not precision, is what it measures)."""
    for served in results:
        others = [
            other
            for other in results
            if other.server in BASELINES
            or (other.server == "ours-b1" and other.precision == served.precision)
        ]
        if served.server != "ours" or not others:
            continue
        for c, a in served.cells.items():
            versus = "   ".join(
                f"/ {b.name}: throughput {ratio(a.rps, b.cells[c].rps):5.2f}x,"
                f" p99 {ratio(a.ms(99), b.cells[c].ms(99)):5.2f}x"
                for b in others
            )
            print(f"  {served.name} at {c:2d}  {versus}")


def ratio(a: float, b: float) -> float:
    return a / b if b else np.nan


def print_peak_share(
    name: str,
    flops: float,
    peak: dict[str, float],
    speeds: dict[str, dict[int, float]],
    results: list[Served],
) -> None:
    """Images/s x FLOPs per image over the measured peak of the same precision."""
    print(f"\n{name}: share of the measured peak, {flops / 1e9:.2f} GFLOP per image")
    for precision in peak:
        shares = [
            f"in process batch {b} {speeds[precision][b] * flops / peak[precision]:6.1%}"
            for b in (1, 8)
        ]
        print(f"  {precision:5} {', '.join(shares)}")
        for served in results:
            if served.precision == precision:
                cells = ", ".join(
                    f"conc {c} {cell.rps * flops / peak[precision]:6.1%}"
                    for c, cell in served.cells.items()
                )
                print(f"  {precision:5} {served.name:12} served: {cells}")


# --- main --------------------------------------------------------------------------------


def parse_precisions(text: str) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in text.split(",") if item)
    for model, precision in pairs.items():
        if model not in DURATION or precision not in PRECISIONS:
            sys.exit(f"--precision: expected MODEL=PRECISION with {list(DURATION)} / {PRECISIONS}")
    return pairs


def numbers(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def names(known: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        given = tuple(item for item in text.split(",") if item)
        if unknown := set(given) - set(known):
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; known: {list(known)}")
        return given

    return parse


def bench_model(
    name: str, args: argparse.Namespace, images: list[bytes], peak: dict[str, float], tmp: Path
) -> None:
    if name == "tiny":
        run, folder = export_trained(args.model_run, tmp / "tiny")
        title = f"tiny = {run}"
    else:
        run, folder = None, write_vit_base(tmp / "vitb")
        title = "vitb = ViT-B/16 size, random weights"
    used = layout(args)
    torch.set_num_threads(used.torch_threads)  # what each gunicorn worker gets
    speeds = precision_speeds(folder, images)
    print_speeds(title, speeds, used.torch_threads)
    if run is not None:
        print_accuracy(precision_accuracy(run, folder))
    chosen = args.precision.get(name) or max(("fp32", "bf16"), key=lambda p: speeds[p][1])
    seconds = args.duration or DURATION[name]
    results = serve_all(folder, chosen, args, images, seconds, ROUNDS[name], tmp)
    print_cells(title, describe(used, args, seconds, ROUNDS[name]), results)
    print_ratios(results)
    if not torch.cuda.is_available():  # the peak is the CPU's
        print_peak_share(title, flops_per_image(folder), peak, speeds, results)


def serve_all(
    folder: Path,
    chosen: str,
    args: argparse.Namespace,
    images: list[bytes],
    seconds: float,
    rounds: int,
    tmp: Path,
) -> list[Served]:
    """Ours at the chosen precision and in int8 (on a CPU: torch's int8 is CPU-only), ours
    answering one image per model call with --batch-one, and each baseline, all started at
    once; then `rounds` rounds in which each takes its turn at each concurrency."""
    precisions = (chosen,) if torch.cuda.is_available() else (chosen, "int8")
    contenders = [("ours", precision) for precision in dict.fromkeys(precisions)]
    contenders += [("ours-b1", chosen)] if args.batch_one else []
    contenders += [(name, "fp32") for name in args.baselines]
    turns: dict[tuple[str, str, int], list[Cell]] = {}
    with contextlib.ExitStack() as running:
        servers = [
            running.enter_context(contender(name, precision, folder, args, tmp))
            for name, precision in contenders
        ]
        for _, c, (named, (port, pid)) in itertools.product(
            range(rounds), args.concurrency, zip(contenders, servers, strict=True)
        ):
            cell = measure(port, pid, images, c, seconds / rounds, args.keep_alive)
            turns.setdefault((*named, c), []).append(cell)
    return [
        Served(
            name, precision, {c: Cell.pooled(turns[name, precision, c]) for c in args.concurrency}
        )
        for name, precision in contenders
    ]


def contender(
    name: str, precision: str, folder: Path, args: argparse.Namespace, tmp: Path
) -> Server:
    if name in BASELINES:
        return baseline(name, folder, tmp)
    env = ours_environment(folder, precision, args, tmp)
    if name == "ours-b1":
        env["BATCH_MAX_SIZE"] = "1"
    return ours(env, tmp)


def describe(used: Layout, args: argparse.Namespace, seconds: float, rounds: int) -> str:
    """The contenders and the load, for the table's head."""
    given = given_layout(args) or any(name in os.environ for name in LAYOUT_VARIABLES)
    source = "as given" if given else "production's defaults"
    connections = "keep-alive connections" if args.keep_alive else "a connection per request"
    lines = ["ours-b1 = ours with BATCH_MAX_SIZE=1"] if args.batch_one else []
    lines += [
        f"{name} = {BASELINE_SERVERS[name]}; fp32, torch's threads" for name in args.baselines
    ]
    return (
        f"  ours = gunicorn (serving/gunicorn.conf.py), {used.workers} worker(s) x"
        f" {used.threads} thread(s), TORCH_THREADS={used.torch_threads} ({source})\n"
        + "".join(f"  {line}\n" for line in lines)
        + f"  {seconds:g} s per cell in {rounds} turn(s), the servers in turn; {connections};"
        " the client: a process of its own,"
        " one thread per concurrent request"
    )


def load_average() -> str:
    """Other processes share the cores: the load average says how much they took."""
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def quiet() -> None:
    """Keep the printed results readable: no progress bars, no deprecation chatter."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        type=names(tuple(DURATION)),
        default=tuple(DURATION),
        help="comma-separated: tiny, vitb",
    )
    parser.add_argument("--model-run", help="TrainFlow/<id> for tiny (default: the champion)")
    parser.add_argument("--duration", type=float, help="seconds per cell (tiny 8, vitb 15)")
    parser.add_argument(
        "--precision", type=parse_precisions, default={}, help="e.g. tiny=fp32,vitb=bf16"
    )
    default = "(default: production's, lib.settings.ServingSettings)"
    parser.add_argument("--workers", type=int, help=f"WEB_CONCURRENCY for ours {default}")
    parser.add_argument("--threads", type=int, help=f"GUNICORN_THREADS for ours {default}")
    parser.add_argument("--torch-threads", type=int, help=f"TORCH_THREADS for ours {default}")
    parser.add_argument(
        "--keep-alive", action="store_true", help="one connection per client thread"
    )
    parser.add_argument(
        "--concurrency", type=numbers, default=CONCURRENCY, help="comma-separated, e.g. 1,64"
    )
    parser.add_argument(
        "--baselines",
        type=names(BASELINES),
        default=BASELINES,
        help=f"comma-separated, of {', '.join(BASELINES)} (empty: none)",
    )
    parser.add_argument(
        "--batch-one",
        action="store_true",
        help="also ours with BATCH_MAX_SIZE=1: a model call per image, no batching",
    )
    args = parser.parse_args(argv)
    quiet()
    # Metaflow needs a user name to read runs; shells without $USER get one, as in the Makefile.
    os.environ.setdefault("METAFLOW_USER", os.environ.get("USER") or "facet")
    started = time.perf_counter()
    print(f"serve_bench: {os.cpu_count()} CPUs, torch {torch.__version__}, {load_average()}")
    print(cpu_description())
    peak = measured_peak()
    print(
        f"peak, all cores, the fastest of {PEAK_WINDOWS} timings at each of sizes {PEAK_SIZES}: "
        f"fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s (torch.mm),"
        f" int8 {peak['int8'] / 1e9:.1f} GOP/s (quantize_dynamic nn.Linear)"
    )
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        tmp = Path(scratch)
        images = face_jpegs(tmp / "faces")
        for name in args.models:
            bench_model(name, args, images, peak, tmp)
    print(f"\ntotal {time.perf_counter() - started:.0f} s, {load_average()}")


if __name__ == "__main__":
    main()
