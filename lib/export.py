"""Write a TrainFlow run's model as a plain Hugging Face folder.

    python -m lib.export TrainFlow/1234 OUT_DIR

OUT_DIR then loads with transformers.AutoModelForImageClassification.from_pretrained(OUT_DIR),
and also holds thresholds.json (the run's tuned decision thresholds) and facet.json (run,
dataset fingerprint, metrics, thresholds, calibration and embedding projection), so serving
can load it with MODEL_DIR=OUT_DIR and no Metaflow datastore. The thresholds apply to
calibrated probabilities: a plain transformers user applies lib.calibration.apply with
facet.json's `calibration` to the model's sigmoid outputs first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.inference import run_record
from lib.model import write_model_files


def export(run_pathspec: str, out_dir: str | Path) -> Path:
    files, projection, info = run_record(run_pathspec)
    folder = write_model_files(files, out_dir)
    (folder / "thresholds.json").write_text(json.dumps(info["thresholds"], indent=2))
    (folder / "facet.json").write_text(json.dumps({**info, "projection": projection}, indent=2))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lib.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", help="run pathspec, e.g. TrainFlow/1234")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.run, args.out_dir)}")


if __name__ == "__main__":
    main()
