"""Training in several processes: torchrun starts `num_processes` copies of lib.train.train
on a node, Accelerate inside them wraps the model in DistributedDataParallel (NCCL on GPUs,
gloo on CPUs), and global rank 0 hands the result back through a job folder.

    python -m torch.distributed.run --standalone --nproc-per-node N -m lib.distributed JOB_DIR

The train step calls run_training(), which picks in-process or torchrun from the config's
train.num_processes; either way the step gets a TrainResult. On several nodes
(flows/train_multinode_flow.py) each node's Metaflow task starts its own ranks of one job,
meeting at the first node's address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import PartialState

from lib.config import RunConfig
from lib.faults import inject
from lib.model import load_model, model_to_files, preprocessing_of, write_model_files
from lib.storage import checkpoint_places
from lib.train import TrainResult, train

JOB, LOG, RESULT, MODEL = "job.json", "log.jsonl", "result.json", "model"


# Runs this node's `processes` ranks of `python -m lib.distributed JOB_DIR` under torchrun and
# blocks until they end, raising if they failed.
Launcher = Callable[[Path, int], None]


def standalone(job: Path, processes: int) -> None:
    """Every rank on this node: torchrun's single-node rendezvous."""
    _torchrun(job, ["--standalone", f"--nproc-per-node={processes}"])


def node_of(nodes: int, node_rank: int, main_address: str, port: int) -> Launcher:
    """This node's ranks of a job over `nodes` nodes that meet at main_address:port (node 0's
    address; torchrun's static rendezvous)."""

    def launch(job: Path, processes: int) -> None:
        options = [f"--nnodes={nodes}", f"--node-rank={node_rank}", f"--nproc-per-node={processes}"]
        _torchrun(job, [*options, f"--master-addr={main_address}", f"--master-port={port}"])

    return launch


def _torchrun(job: Path, options: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", *options, "-m", "lib.distributed"]
    code = subprocess.run([*command, str(job)]).returncode
    if code != 0:
        raise RuntimeError(
            f"training under torchrun {' '.join(options)} failed (exit code {code}); the "
            "ranks' errors are in the step's log above"
        )


def run_training(
    config: RunConfig,
    dataset: dict[str, Any],
    run: tuple[str, str, str | None],
    attempt: int = 0,
    on_log: Callable[[dict[str, float]], None] | None = None,
    launch: Launcher | None = None,
) -> TrainResult | None:
    """Train with config.train.num_processes processes. `run` is (flow name,
    run id, origin run id): where checkpoints are saved and looked for; `attempt` is the
    step's retry count (faults are injected on the first attempt only).

    `launch` makes this node's processes part of a job over several nodes (TrainMultiNodeFlow
    passes node_of(...)); then only the node holding global rank 0 gets the result, and the
    others get None."""
    processes = config.train.num_processes
    if launch is None and config.train.num_nodes > 1:
        raise ValueError(
            "train.num_nodes > 1 needs flows/train_multinode_flow.py; TrainFlow trains on one "
            "node (train.num_processes processes)"
        )
    if processes == 1 and launch is None:
        return _train(config, dataset, run, attempt, on_log)
    with tempfile.TemporaryDirectory(prefix="facet-train-") as folder:
        job = Path(folder)
        spec = {"config": config.model_dump(), "dataset": dataset, "run": run, "attempt": attempt}
        (job / JOB).write_text(json.dumps(spec))
        failures: list[BaseException] = []

        def launch_ranks() -> None:
            try:
                (launch or standalone)(job, processes)
            except BaseException as error:  # re-raised in the step's thread below
                failures.append(error)

        launcher = threading.Thread(target=launch_ranks, daemon=True)
        launcher.start()
        seen = 0
        while launcher.is_alive():  # relay rank 0's log records to the live card
            launcher.join(timeout=1.0)
            seen = _relay(job / LOG, seen, on_log)
        _relay(job / LOG, seen, on_log)
        if failures:
            raise failures[0]
        if not (job / RESULT).exists():
            return None  # global rank 0 ran on another node
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
    config = RunConfig.of(spec["config"])

    def log_record(record: dict[str, float]) -> None:  # train() logs on rank 0 only
        with (job / LOG).open("a") as log:
            log.write(json.dumps(record) + "\n")

    result = _train(config, spec["dataset"], tuple(spec["run"]), spec["attempt"], log_record)
    if PartialState().is_main_process:
        files = model_to_files(result.model, preprocessing_of(config.model))
        write_model_files(files, job / MODEL)
        fields = ("history", "steps", "resumed_from_step", "world_size")
        (job / RESULT).write_text(json.dumps({k: getattr(result, k) for k in fields}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
