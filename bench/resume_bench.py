"""What does `resume` cost after a failure in evaluate, against a full run?

    python bench/resume_bench.py [--config flows/configs/default.json]

Runs, in one temporary datastore and on a prepared data cache (built first if missing, not
timed): a full run, a run whose
evaluate step fails (FACET_FAULT=evaluate:raise), and `resume --origin-run-id` of that run.
Prints the wall times and the ratio resume / full run.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from metaflow import Runner

from lib.prepare import prepare
from lib.sources import resolve_source

FLOW = Path(__file__).resolve().parents[1] / "flows" / "train_flow.py"


def timed(runner_call):
    start = time.perf_counter()
    result = runner_call()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(FLOW.parent / "configs" / "default.json"))
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    with tempfile.TemporaryDirectory() as home:
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = home
        os.environ["WANDB_MODE"] = "disabled"
        data = config["data"]
        prepare(
            *resolve_source(data["source"], data.get("synthetic")), config["model"]["image_size"]
        )

        def runner(**env):
            settings = {"cwd": home, "env": {**os.environ, **env}, "show_output": False}
            return Runner(str(FLOW), config_value=[("config", config)], **settings)

        full, full_s = timed(lambda: runner().run())
        failed, failed_s = timed(lambda: runner(FACET_FAULT="evaluate:raise").run())
        resumer = Runner(str(FLOW), show_output=False, cwd=home, env=dict(os.environ))
        resumed, resume_s = timed(lambda: resumer.resume(origin_run_id=failed.run.id))
        statuses = (full.status, failed.status, resumed.status)
        assert statuses == ("successful", "failed", "successful"), statuses
    print(f"full run            {full_s:7.1f} s")
    print(f"run failing at eval {failed_s:7.1f} s")
    print(f"resume              {resume_s:7.1f} s")
    print(f"resume / full run   {resume_s / full_s:7.3f}")


if __name__ == "__main__":
    main()
