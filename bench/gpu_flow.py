"""TrainFlow end to end on a GPU machine: the product's path, where bench/gpu_check.sh is a
stand-in for it.

    python bench/gpu_flow.py                                    # ViT-B/16, 224 px, generated data
    python bench/gpu_flow.py --config flows/configs/default.json --fail-at 0
    python bench/gpu_flow.py --compile

Runs `train_flow.py run` through metaflow.Runner with the config. With --fail-at N (a multiple
of the config's checkpoint_every) the train step raises once after optimizer step N, and @retry
resumes it from that step's checkpoint: resuming on the GPU is exercised too. Prints training
throughput (the median of the logged windows, leaving out the first and the one after the
resume, which hold start-up), how the step resumed, test accuracy against the majority baseline,
and each step's wall time. Needs metaflow and what lib imports; no network.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from metaflow import Runner

from lib.config import load
from lib.registry import headline

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "train_flow.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "flows/configs/gpu-synthetic.json")
    parser.add_argument("--fail-at", type=int, default=100, help="0: no injected failure")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile")
    args = parser.parse_args()
    config = load(args.config).merged({"train": {"compile": args.compile}})
    env = dict(os.environ)
    if args.fail_at:
        config = config.merged({"retries": max(config.retries, 1)})
        env["FACET_FAULT"] = f"train@{args.fail_at}:raise"
    with Runner(str(FLOW), env=env, config_value=[("config", config.model_dump())]) as runner:
        result = runner.run()
    if result.status != "successful":
        raise SystemExit(f"run {result.run.pathspec} {result.status}:\n{result.stderr[-3000:]}")
    report(result.run, args.fail_at)


def report(run, fail_at: int) -> None:
    train = run["train"].task
    history = train["history"].data
    # Each attempt's first window holds its start-up (CUDA init, workers, compilation).
    resumed = train["resumed_from_step"].data
    windows = [
        h["images_per_second"]
        for i, h in enumerate(history)
        if i > 0 and not (resumed and history[i - 1]["step"] == resumed)
    ]
    print(f"run {run.pathspec}: {run['end'].task['dataset'].data['source']}")
    print(
        f"train: {history[-1]['step']} steps, attempt {train.current_attempt}, "
        f"resumed from step {resumed} (failure injected at {fail_at or 'none'})"
    )
    print(
        f"train images/s: median {statistics.median(windows):.0f} over {len(windows)} windows "
        f"(min {min(windows):.0f}, max {max(windows):.0f}); final loss {history[-1]['loss']:.4f}"
    )
    print(headline(run["evaluate"].task["metrics"].data))
    for step in reversed(list(run)):
        seconds = sum((t.finished_at - t.created_at).total_seconds() for t in step)
        print(f"  {step.id:>14}: {seconds:6.1f} s over {len(list(step))} task(s)")


if __name__ == "__main__":
    main()
