"""Our training loop against what users would pick instead: same model (the default config's
ViT), same images, batch size and number of optimizer steps, one after the other in this
process.

    python bench/train_bench.py [--steps 100]

    ours        lib.train.train over the prepared uint8 cache: DataLoader workers,
                normalisation and augmentation as tensor ops
    trainer     Hugging Face Trainer over the JPEGs with a ViTImageProcessor per sample
                (the predecessor's set-up; Trainer's default of no DataLoader workers)
    no_trainer  the pattern of transformers' run_image_classification_no_trainer.py: PIL
                transforms per sample, no DataLoader workers, an Accelerate loop

Each contender's wall time covers building its model and loader and the steps; ours excludes
preparing the cache, which happens once per dataset (printed separately).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from transformers import Trainer, TrainingArguments, ViTImageProcessor

from lib import synthetic
from lib.celeba import SPLITS, read_celeba
from lib.config import RunConfig, load
from lib.model import build_model
from lib.prepare import prepare
from lib.train import train


class JpegDataset(torch.utils.data.Dataset):
    """The training split as files, decoded per sample by `transform`."""

    def __init__(self, root: Path, transform):
        index = read_celeba(root)
        rows = np.flatnonzero(index.split == SPLITS["train"])
        self.paths = [index.root / "img_align_celeba" / index.files[i] for i in rows]
        self.labels = torch.from_numpy(index.labels[rows]).float()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = Image.open(self.paths[i]).convert("RGB")
        return {"pixel_values": self.transform(image), "labels": self.labels[i]}


def run_ours(config: RunConfig, dataset: dict, steps: int, folder: Path) -> float:
    from lib.storage import CheckpointPlace

    config = config.merged({"train": {"epochs": 1, "wandb": False, "checkpoint_every": 10**9}})
    started = time.perf_counter()
    result = train(config, dataset, CheckpointPlace(folder / "checkpoints"))
    assert result.steps >= steps, (result.steps, steps)
    return result.steps * config.train.batch_size / (time.perf_counter() - started)


def run_trainer(config: RunConfig, root: Path, steps: int, folder: Path) -> float:
    size = config.model.image_size
    processor = ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    data = JpegDataset(root, lambda image: processor(image, return_tensors="pt").pixel_values[0])
    cfg = config.train
    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * steps),
        lr_scheduler_type="cosine",
        max_grad_norm=cfg.max_grad_norm,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        use_cpu=True,
        seed=cfg.seed,
        disable_tqdm=True,
    )
    started = time.perf_counter()
    model = build_model(config.model, synthetic.ATTRIBUTES)
    Trainer(model=model, args=args, train_dataset=data).train()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def pil_transform(size: int):
    """The example's train transforms, in PIL and NumPy: resize, random flip, normalise."""
    rng = np.random.default_rng(0)

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.5) / 0.5

    return transform


def run_no_trainer(config: RunConfig, root: Path, steps: int) -> float:
    cfg = config.train
    started = time.perf_counter()
    accelerator = Accelerator(cpu=True)
    model = build_model(config.model, synthetic.ATTRIBUTES)
    data = JpegDataset(root, pil_transform(config.model.image_size))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == steps:
                break
    return steps * cfg.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    config = load()
    batch = config.train.batch_size
    # The official split puts about 80% in train: enough images for `steps` full batches.
    n = math.ceil(args.steps * batch / 0.78)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = synthetic.generate(folder / "data", synthetic.make_spec(n, seed=0))
        started = time.perf_counter()
        dataset = prepare("bench", root, image_size=config.model.image_size)
        print(
            f"{n} images; preparing the cache (once per dataset): "
            f"{time.perf_counter() - started:.1f} s"
        )
        torch.manual_seed(0)
        rates = {
            "ours": run_ours(config, dataset, args.steps, folder),
            "trainer": run_trainer(config, root, args.steps, folder),
            "no_trainer": run_no_trainer(config, root, args.steps),
        }
    print(f"{args.steps} steps of {batch} images, {torch.get_num_threads()} torch threads")
    for name, rate in rates.items():
        print(f"{name:>10}: {rate:7.1f} images/s   ours / {name} = {rates['ours'] / rate:.2f}x")


if __name__ == "__main__":
    main()
