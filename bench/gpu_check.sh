#!/usr/bin/env bash
# Training throughput of ViT-B/16 at 224x224 on one GPU, with and without torch.compile.
#
#     bash bench/gpu_check.sh                 # on a GPU machine: about 3 minutes
#     bash bench/gpu_check.sh --smoke         # anywhere: a tiny model on CPU, to check the script
#
# Self-contained for a machine without network: needs only python with torch and
# transformers (no datastore, no dataset, no facet install). It follows lib/train.py's GPU path:
# uint8 shards in pinned host memory, copied non-blocking and normalised on the device, random
# shifts and flips as tensor ops there, bf16 autocast, fused AdamW, SDPA attention. It prints
# images/s and model FLOPs utilisation (MFU) for eager and compiled runs.
# Target (issue 7): at least 2,500 images/s on one H100.
set -euo pipefail
PYTHON=${PYTHON:-python}
exec "$PYTHON" - "$@" <<'EOF'
import argparse
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

parser = argparse.ArgumentParser()
parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, a few steps")
parser.add_argument("--batch", type=int, default=256)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--warmup", type=int, default=15)
parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
size, patch, hidden, layers, heads = (224, 16, 768, 12, 12) if not args.smoke else (32, 8, 32, 1, 2)
if args.smoke:
    args.batch, args.steps, args.warmup = 8, 3, 1
config = ViTConfig(
    image_size=size, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
    num_attention_heads=heads, intermediate_size=4 * hidden, num_labels=40,
    problem_type="multi_label_classification", attn_implementation="sdpa",
)
tokens = (size // patch) ** 2 + 1
# Training FLOPs per image: 3x the forward pass (forward + backward), counting matmuls only.
forward = layers * (2 * tokens * 12 * hidden**2 + 4 * tokens**2 * hidden)
train_flops_per_image = 3 * forward

# Synthetic shards: uint8 images in pinned memory, as the cached dataset is read.
n_images = 8 * args.batch
shard = torch.randint(0, 256, (n_images, size, size, 3), dtype=torch.uint8)
if device == "cuda":
    shard = shard.pin_memory()
labels = torch.randint(0, 2, (n_images, 40)).float()
mean = torch.tensor([0.5, 0.5, 0.5], device=device).view(1, 3, 1, 1)
std = torch.tensor([0.5, 0.5, 0.5], device=device).view(1, 3, 1, 1)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(i * args.batch, (i + 1) * args.batch) % n_images
    pixels = shard[rows].to(device, non_blocking=True)
    x = (pixels.permute(0, 3, 1, 2).float().div_(255) - mean) / std
    shift = int(torch.randint(-4, 5, ()).item())
    x = torch.roll(x, shifts=shift, dims=3)  # a shift and a flip, on the device
    if i % 2:
        x = x.flip(3)
    return x, labels[rows].to(device, non_blocking=True)


def images_per_second(compile_model: bool) -> float:
    torch.manual_seed(0)
    model = ViTForImageClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    step_model = torch.compile(model) if compile_model else model
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = batch(i)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = step_model(pixel_values=x).logits
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - start)


name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
print(f"device {name}; torch {torch.__version__}; ViT {size}px patch {patch} hidden {hidden} "
      f"x{layers}; batch {args.batch}; {args.steps} timed steps after {args.warmup} warm-up")
for compiled in (False, True):
    rate = images_per_second(compiled)
    mfu = rate * train_flops_per_image / (args.peak_tflops * 1e12)
    print(f"{'compiled' if compiled else 'eager':>8}: {rate:9.1f} images/s   MFU {mfu:6.1%}   "
          f"epoch of 162,770 images: {162_770 / rate / 60:.1f} min")
EOF
