"""Training ViT-B/16 at 224 px on one GPU: how fast, how much of the chip, where the time goes.

    python bench/gpu_bench.py           # on a GPU: about 5 minutes
    python bench/gpu_bench.py --smoke   # anywhere: a tiny model on CPU through every section

Self-contained for a machine without network: torch and transformers only (no datastore, no
dataset, no facet install). The step follows lib/train.py's GPU path: uint8 shards in pinned
host memory, copied non-blocking and normalised on the device, random shifts and flips as
tensor ops there, bf16 autocast, fused AdamW, SDPA attention. Printed, in one run:

1. The peak: a bf16 matrix multiply timed on this chip, beside the datasheet's --peak-tflops.
2. Variants side by side, images/s and model FLOPs utilisation (MFU) against both peaks:
   eager at batch 256 and 512; torch.compile (default mode) and with CUDA graphs
   (mode="reduce-overhead"), each with the seconds its first steps took to compile.
3. Why compile may be slower: torch._dynamo.explain's graphs and graph breaks of the model.
4. A profile of eager steps: the kernels that take the most GPU time, and the share of the
   window the GPU sat idle between kernels (the launch and Python overhead a graph removes).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from transformers import ViTConfig, ViTForImageClassification

VIT_B = {"size": 224, "patch": 16, "hidden": 768, "layers": 12, "heads": 12}
SMOKE = {"size": 32, "patch": 8, "hidden": 32, "layers": 1, "heads": 2}
IMAGES_PER_EPOCH = 162_770  # CelebA's training split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, a few steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 (H100, H200)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.steps, args.warmup = 8, 2, 1
    bench = Bench(args)
    print(bench.describe())
    measured = bench.measured_peak_tflops()
    print(f"peak: bf16 matmul {measured:.0f} TFLOP/s measured, {args.peak_tflops:.0f} datasheet")
    variants = {
        f"eager, batch {args.batch}": (args.batch, None),
        f"eager, batch {2 * args.batch}": (2 * args.batch, None),
        f"compiled, batch {args.batch}": (args.batch, "default"),
        f"compiled + CUDA graphs, batch {args.batch}": (args.batch, "reduce-overhead"),
    }
    for name, (batch, mode) in variants.items():
        with reported(name):
            rate, compile_s = bench.images_per_second(batch, mode)
            flops = rate * bench.train_flops_per_image / 1e12
            print(
                f"{name:>36}: {rate:9.1f} images/s  MFU {flops / args.peak_tflops:6.1%} of"
                f" datasheet, {flops / measured:6.1%} of measured;  first steps"
                f" {compile_s:5.1f} s;  an epoch {IMAGES_PER_EPOCH / rate / 60:.1f} min"
            )
    with reported("graph breaks"):
        print(bench.graph_breaks())
    with reported("profile"):
        print(bench.profile(args.batch))


@contextlib.contextmanager
def reported(section: str) -> Iterator[None]:
    """A section that fails prints why, and the next one runs: a GPU lease is short."""
    try:
        yield
    except Exception as error:
        print(f"{section}: failed: {type(error).__name__}: {error}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        shape = SMOKE if args.smoke else VIT_B
        self.size, hidden, layers = shape["size"], shape["hidden"], shape["layers"]
        self.config = ViTConfig(
            image_size=shape["size"],
            patch_size=shape["patch"],
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=shape["heads"],
            intermediate_size=4 * hidden,
            num_labels=40,
            problem_type="multi_label_classification",
            attn_implementation="sdpa",
        )
        tokens = (shape["size"] // shape["patch"]) ** 2 + 1
        # Training FLOPs per image: 3x the forward pass (forward + backward), matmuls only.
        forward = layers * (2 * tokens * 12 * hidden**2 + 4 * tokens**2 * hidden)
        self.train_flops_per_image = 3 * forward
        # Synthetic shards: uint8 images in pinned memory, as the cached dataset is read.
        self.n_images = 16 * args.batch
        shard = torch.randint(0, 256, (self.n_images, self.size, self.size, 3), dtype=torch.uint8)
        self.shard = shard.pin_memory() if self.device == "cuda" else shard
        self.labels = torch.randint(0, 2, (self.n_images, 40)).float()
        self.mean = torch.full((1, 3, 1, 1), 0.5, device=self.device)
        self.std = torch.full((1, 3, 1, 1), 0.5, device=self.device)

    def describe(self) -> str:
        name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu (smoke)"
        c = self.config
        return (
            f"device {name}; torch {torch.__version__}; ViT {c.image_size}px patch "
            f"{c.patch_size} hidden {c.hidden_size} x{c.num_hidden_layers}; "
            f"{self.args.steps} timed steps after {self.args.warmup} warm-up"
        )

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def measured_peak_tflops(self) -> float:
        """The fastest of a few bf16 products of 8192-square matrices (1024 on CPU)."""
        n = 1024 if self.device == "cpu" else 8192
        a, b = (torch.randn(n, n, device=self.device, dtype=torch.bfloat16) for _ in range(2))
        best = float("inf")
        for _ in range(5):
            self.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                a @ b
            self.synchronize()
            best = min(best, (time.perf_counter() - start) / 10)
        return 2 * n**3 / best / 1e12

    def batch(self, i: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch i: a slice of the pinned shard (an indexed copy would not be pinned, and its
        copy to the GPU would wait for the GPU); 16 x the batch holds whole batches of both
        sizes timed."""
        rows = slice(i * size % self.n_images, i * size % self.n_images + size)
        pixels = self.shard[rows].to(self.device, non_blocking=True)
        x = (pixels.permute(0, 3, 1, 2).float().div_(255) - self.mean) / self.std
        x = torch.roll(x, shifts=i % 9 - 4, dims=3)  # a shift and a flip, on the device
        if i % 2:
            x = x.flip(3)
        return x, self.labels[rows].to(self.device, non_blocking=True)

    def train_step(self, mode: str | None) -> Callable[[int, int], None]:
        """A fresh model and optimiser; the step that trains them on batch i."""
        torch.manual_seed(0)
        model = ViTForImageClassification(self.config).to(self.device).train()
        cuda = self.device == "cuda"
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        forward = torch.compile(model, mode=mode) if mode else model
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step(i: int, size: int) -> None:
            x, y = self.batch(i, size)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=cuda):
                logits = forward(pixel_values=x).logits
            loss_fn(logits.float(), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def images_per_second(self, size: int, mode: str | None) -> tuple[float, float]:
        """Timed steps after the warm-up; and how long the first steps (compiling) took."""
        step = self.train_step(mode)
        start = time.perf_counter()
        for i in range(self.args.warmup):
            step(i, size)
        self.synchronize()
        first_steps = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(self.args.warmup, self.args.warmup + self.args.steps):
            step(i, size)
        self.synchronize()
        return self.args.steps * size / (time.perf_counter() - start), first_steps

    def graph_breaks(self) -> str:
        """What dynamo makes of the model's forward: graphs, breaks and their reasons."""
        model = ViTForImageClassification(self.config).to(self.device).train()
        x, _ = self.batch(0, 2)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
            explained = torch._dynamo.explain(model)(pixel_values=x)
        reasons = sorted({str(b.reason).split("\n")[0] for b in explained.break_reasons})
        head = f"compile: {explained.graph_count} graph(s), {explained.graph_break_count} break(s)"
        return "\n".join([head] + [f"  break: {reason}" for reason in reasons])

    def profile(self, size: int, steps: int = 5, top: int = 12) -> str:
        """Eager steps under torch.profiler: the kernels with the most device time and the
        device's idle share of the window (CPU operators in --smoke, where there is no GPU)."""
        step = self.train_step(None)
        for i in range(2):
            step(i, size)
        self.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for i in range(steps):
                step(i, size)
            self.synchronize()
        on_device = self.device == "cuda"
        key = "self_device_time_total" if on_device else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60)
        kernels = [  # not the user annotations drawn on the GPU's timeline: they span the gaps
            e.time_range
            for e in profiler.events()
            if on_device
            and e.device_type == torch.autograd.DeviceType.CUDA
            and not e.is_user_annotation
        ]
        if not kernels:
            return f"profile of {steps} eager steps (no device kernels: CPU)\n{table}"
        window = max(r.end for r in kernels) - min(r.start for r in kernels)
        idle = 1 - busy_time([(r.start, r.end) for r in kernels]) / window
        return (
            f"profile of {steps} eager steps at batch {size}: the GPU idle {idle:.1%} of "
            f"{window / 1000:.1f} ms between its first and last kernel\n{table}"
        )


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


if __name__ == "__main__":
    main()
