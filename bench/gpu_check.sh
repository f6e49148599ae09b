#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (about 6 minutes on an H200,
# an estimate: give the device call its 600 s and keep the rest of the lease for a rerun):
#
#     bash bench/gpu_check.sh            # on a GPU machine
#     bash bench/gpu_check.sh --smoke    # anywhere: the training part on CPU with a tiny model
#
# 1. Training ViT-B/16 at 224 px (bench/gpu_bench.py: torch and transformers only): the chip's
#    measured bf16 peak; eager at batch 256 and 512, compiled, compiled with CUDA graphs, each
#    as images/s and MFU; compile's graph breaks; a profile of eager steps (top kernels, the
#    GPU's idle share). Goal (issue 16): 40% of the datasheet's bf16 peak.
# 2. Serving ViT-B/16 in bf16 on the GPU through HTTP (bench/serve_bench.py): one gunicorn
#    worker with 64 request threads and adaptive batching up to 64 images, against the same
#    server answering one image per model call (BATCH_MAX_SIZE=1), at concurrency 1 and 64.
#    It needs what serving imports (flask, gunicorn, pydantic-settings, metaflow, ...); where
#    they are missing it says which and skips: carry them as wheels (the device README).
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" bench/gpu_bench.py "$@" || echo "gpu_bench.py failed (exit $?); serving goes on"
if [[ " $* " == *" --smoke "* ]]; then
    exit 0
fi

echo
if missing=$("$PYTHON" -c "import serving, gunicorn, bench.serve_bench" 2>&1); then
    BATCH_MAX_SIZE=64 "$PYTHON" bench/serve_bench.py --models vitb --precision vitb=bf16 \
        --workers 1 --threads 64 --concurrency 1,64 --baselines '' --batch-one --duration 20
else
    echo "serving on the GPU skipped: ${missing##*$'\n'}"
fi
