"""Is preparation fast enough for all of CelebA, and does the loader keep training fed?

    python bench/data_bench.py [--images 2000]

In a temporary cache, on synthetic 178x218 JPEGs (lib.synthetic, CelebA's size), prints:
- preparation images/s per core: one shard decoded, cropped and resized in this process,
  at the default config's 64 px and at celeba-vit-base's 224 px;
- loader images/s: lib.train's DataLoader with the default config's settings, reading the
  64 px shards, and with one worker reading the 224 px shards (celeba-vit-base uses 8);
- the default model's training rate in images/s (forward, backward, clipping and AdamW on its
  batches, normalisation and augmentation included), and loader / training (goal: >= 10);
- the time to prepare all of CelebA (202,599 images) at 224 px on 16 cores, from the per-core
  rate, assuming shards scale with cores (they share nothing but the disk).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from lib import synthetic
from lib.model import build_model, preprocessing_of
from lib.prepare import plan, prepare, prepare_shard
from lib.preprocess import to_model_input
from lib.train import augment, parameter_groups, train_loader

CONFIGS = Path(__file__).resolve().parents[1] / "flows" / "configs"
CELEBA_IMAGES = 202_599


def preparation_rate(root: Path, n: int, image_size: int) -> float:
    """Images/s of one shard holding every image, decoded by this one process."""
    work = plan("bench", root, image_size, shard_size=n)
    start = time.perf_counter()
    prepare_shard(work, 0, root)
    return n / (time.perf_counter() - start)


def loader_rate(dataset: dict, train_config: dict, epochs: int = 5) -> float:
    """Images/s delivered by the training DataLoader, after one epoch to start its workers."""
    loader = train_loader(dataset, train_config, pin_memory=False)
    for _ in loader:
        pass
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for pixels, _labels in loader:
            seen += pixels.shape[0]
    return seen / (time.perf_counter() - start)


def training_rate(config: dict, attributes: list[str], steps: int = 10, warmup: int = 3) -> float:
    """Images/s of lib.train's step on the default model, fp32 on the CPU, fed from memory."""
    cfg = config["train"]
    torch.manual_seed(0)
    model = build_model(config["model"], attributes).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg["weight_decay"]), lr=1e-3)
    size, batch = config["model"]["image_size"], cfg["batch_size"]
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch, len(attributes))).float()
    generator, preprocessing = torch.Generator().manual_seed(0), preprocessing_of(config["model"])
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x = augment(to_model_input(pixels, preprocessing), generator, cfg["max_shift"])
        logits = model(pixel_values=x).logits
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    config = json.loads((CONFIGS / "default.json").read_text())
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FACET_CACHE"] = cache
        root = synthetic.generate(Path(cache) / "celeba", synthetic.make_spec(args.images))
        per_core_64 = preparation_rate(root, args.images, 64)
        per_core_224 = preparation_rate(root, args.images, 224)
        # The shards just timed are reused: these only write the manifests.
        small = prepare("bench", root, 64, shard_size=args.images)
        large = prepare("bench", root, 224, shard_size=args.images)
        loader = loader_rate(small, config["train"])
        loader_224 = loader_rate(large, {**config["train"], "num_workers": 1})
        training = training_rate(config, small["attributes"])
    minutes = CELEBA_IMAGES / (per_core_224 * 16) / 60
    workers = config["train"]["num_workers"]
    print(f"preparation, 1 core, 64 px    {per_core_64:8.0f} images/s")
    print(f"preparation, 1 core, 224 px   {per_core_224:8.0f} images/s")
    print(f"loader, {workers} worker, 64 px       {loader:8.0f} images/s")
    print(f"loader, 1 worker, 224 px      {loader_224:8.0f} images/s")
    print(f"training, default model      {training:8.0f} images/s")
    print(f"loader / training            {loader / training:8.1f}x")
    print(f"CelebA at 224 px, 16 cores   {minutes:8.1f} min of decoding (estimated), ", end="")
    print(f"{CELEBA_IMAGES * 224 * 224 * 3 / 1e9:.1f} GB of shards")


if __name__ == "__main__":
    main()
