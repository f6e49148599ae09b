"""Training in several processes on one node: torchrun starts `num_processes` copies of
lib.train.train, Accelerate inside them wraps the model in DistributedDataParallel (NCCL on
GPUs, gloo on CPUs), and rank 0 hands the result back through a job folder.

    python -m torch.distributed.run --standalone --nproc-per-node N -m lib.distributed JOB_DIR

The train step calls run_training(), which picks in-process or torchrun from the config's
train.num_processes; either way the step gets a TrainResult.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import PartialState

from lib.faults import inject
from lib.model import load_model, model_to_files, preprocessing_of, write_model_files
from lib.storage import checkpoint_places
from lib.train import TrainResult, train

JOB, LOG, RESULT, MODEL = "job.json", "log.jsonl", "result.json", "model"


def run_training(
    config: dict[str, Any],
    dataset: dict[str, Any],
    run: tuple[str, str, str | None],
    attempt: int = 0,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train with config["train"]["num_processes"] processes (default 1). `run` is (flow name,
    run id, origin run id): where checkpoints are saved and looked for; `attempt` is the
    step's retry count (faults are injected on the first attempt only)."""
    processes = config["train"].get("num_processes", 1)
    if processes == 1:
        return _train(config, dataset, run, attempt, on_log)
    with tempfile.TemporaryDirectory(prefix="facet-train-") as folder:
        job = Path(folder)
        spec = {"config": config, "dataset": dataset, "run": run, "attempt": attempt}
        (job / JOB).write_text(json.dumps(spec))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "lib.distributed", str(job),
        ]  # fmt: skip
        launched = subprocess.Popen(command)
        seen = 0
        while launched.poll() is None:  # relay rank 0's log records to the live card
            time.sleep(1.0)
            seen = _relay(job / LOG, seen, on_log)
        _relay(job / LOG, seen, on_log)
        if launched.returncode != 0:
            raise RuntimeError(
                f"training in {processes} processes failed (torchrun exit code "
                f"{launched.returncode}); the ranks' errors are in the step's log above"
            )
        result = json.loads((job / RESULT).read_text())
        files = {p.name: p.read_bytes() for p in (job / MODEL).iterdir()}
        model, _ = load_model(files)
        return TrainResult(model=model, **result)


def _train(config, dataset, run, attempt, on_log) -> TrainResult:
    places = checkpoint_places(*run)
    return train(
        config,
        dataset,
        checkpoints=places[0],
        resume_from=places,
        on_log=on_log,
        on_step=lambda step: inject("train", step, attempt),
    )


def _relay(log: Path, seen: int, on_log: Callable | None) -> int:
    """Pass the records rank 0 appended since the last call; returns how many were seen."""
    if not log.exists():
        return seen
    text = log.read_text()
    complete = text.splitlines()[: text.count("\n")]  # a half-written last line waits
    for line in complete[seen:]:
        if on_log:
            on_log(json.loads(line))
    return len(complete)


def main(job: Path) -> None:
    """One rank: train, then rank 0 writes the model and the result for the parent."""
    spec = json.loads((job / JOB).read_text())
    config = spec["config"]

    def log_record(record: dict[str, float]) -> None:  # train() logs on rank 0 only
        with (job / LOG).open("a") as log:
            log.write(json.dumps(record) + "\n")

    result = _train(config, spec["dataset"], tuple(spec["run"]), spec["attempt"], log_record)
    if PartialState().is_main_process:
        files = model_to_files(result.model, preprocessing_of(config["model"]))
        write_model_files(files, job / MODEL)
        fields = ("history", "steps", "resumed_from_step", "world_size", "weight_digests")
        (job / RESULT).write_text(json.dumps({k: getattr(result, k) for k in fields}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
