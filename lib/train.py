"""One readable Accelerate training loop, in the shape of Hugging Face's
run_image_classification_no_trainer.py, over the uint8 cache that lib.prepare writes."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lib.config import RunConfig, TrainConfig
from lib.datasets import CachedSplit
from lib.model import build_model, preprocessing_of
from lib.preprocess import Preprocessing, to_model_input
from lib.settings import FlowSettings
from lib.storage import CheckpointPlace, usable_checkpoint


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    resumed_from_step: int = 0  # 0 for a fresh start
    world_size: int = 1  # training processes


class Progress:
    """What a checkpoint needs beyond model, optimizer, scheduler and the global RNGs (which
    accelerate saves itself): the step count, the curve so far and the augmentation RNG. Kept
    in one safetensors file, the RNG as a tensor and the rest as JSON in its metadata, so that
    restoring it unpickles nothing."""

    FILE = "progress.safetensors"

    def __init__(self, augment_seed: int):
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.augment_rng = torch.Generator().manual_seed(augment_seed)

    def save(self, folder: Path) -> None:
        metadata = {"step": str(self.step), "history": json.dumps(self.history)}
        save_file({"augment_rng": self.augment_rng.get_state()}, folder / self.FILE, metadata)

    def load(self, folder: Path) -> None:
        with safe_open(folder / self.FILE, framework="pt") as stored:
            metadata, rng = stored.metadata(), stored.get_tensor("augment_rng")
        self.step, self.history = int(metadata["step"]), json.loads(metadata["history"])
        self.augment_rng.set_state(rng)


def positive_weights(train_rates: list[float], max_weight: float) -> torch.Tensor:
    """BCE pos_weight = negatives / positives per attribute, clipped so that an attribute with
    2% positives does not dominate the loss (and never 0 or inf for an empty class)."""
    p = torch.tensor(train_rates, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    return ((1 - p) / p).clamp(1.0 / max_weight, max_weight)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, and position / CLS embeddings."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        skip = parameter.ndim < 2 or "norm" in name or "embeddings.cls_token" in name
        (no_decay if skip or "position_embeddings" in name else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def augment(
    x: torch.Tensor, generator: torch.Generator, max_shift: int, flip_probability: float = 0.5
) -> torch.Tensor:
    """Label-preserving augmentation on the device: per-image horizontal flips and one random
    translation per batch (edge pixels repeat). All attributes are left/right symmetric."""
    flip = torch.rand(x.shape[0], generator=generator) < flip_probability
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if max_shift:
        dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
        padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
        h, w = x.shape[-2:]
        x = padded[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]
    return x


def _tracker(train_config: TrainConfig) -> str | None:
    if not train_config.wandb:
        return None
    # Offline unless the user configured W&B: never block a run on an unreachable server.
    settings = FlowSettings()
    if settings.WANDB_API_KEY is None and settings.WANDB_MODE is None:
        os.environ["WANDB_MODE"] = "offline"  # for wandb, which reads its own variables
    return "wandb"


def train_loader(dataset: dict[str, Any], cfg: TrainConfig, pin_memory: bool) -> DataLoader:
    """Shuffled batches of the training split's uint8 images, read from the memory-mapped
    shards by `num_workers` processes; pinned memory makes the copy to a GPU asynchronous.
    Normalisation and augmentation happen on the device, on whole batches."""
    return DataLoader(
        CachedSplit(dataset["cache_dir"], "train"),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=pin_memory,
    )


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    on_cuda = torch.cuda.is_available()
    return Accelerator(
        cpu=not on_cuda,  # several processes without CUDA: gloo (accelerate wants it said)
        mixed_precision="bf16" if on_cuda else "no",  # CPU bf16: see docs/results.md
        dynamo_backend="inductor" if cfg.compile else "no",  # torch.compile
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=_tracker(cfg),
        # Each epoch's order depends on (seed, epoch) alone, so a resumed run can skip to
        # the exact batch where the checkpoint was taken.
        # non_blocking: batches from pinned memory are copied while the previous step runs.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.seed, non_blocking=on_cuda
        ),
    )


def optimizer_and_schedule(
    model: torch.nn.Module, batches_per_epoch: int, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a cosine schedule after a linear warmup. The schedule counts steps of one
    process over the whole loader: accelerate steps a prepared scheduler once per process at
    each optimizer step."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        fused=torch.cuda.is_available(),
    )
    schedule_steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * schedule_steps), schedule_steps
    )
    return optimizer, scheduler


def restore(accelerator: Accelerator, progress: Progress, places: Sequence[CheckpointPlace]) -> int:
    """Load the newest intact checkpoint of the first place that has one; the step it was
    taken at (0 when there is none). On a fresh machine the mirrored checkpoint is downloaded
    once per machine, after which the other processes find it on disk. Nothing is unpickled:
    the checkpoint's pickles are checked to hold only tensors and plain data, which
    accelerate's load_state then reads with weights_only=True (no custom objects are
    registered with it: those it would unpickle in full), and Progress is safetensors."""
    with accelerator.local_main_process_first():
        checkpoint = usable_checkpoint(places, say=accelerator.print)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        progress.load(checkpoint)
        accelerator.print(f"resuming from {checkpoint} (step {progress.step})")
    return progress.step


def weighted_loss(dataset: dict[str, Any], max_weight: float, device) -> torch.nn.Module:
    rates = [dataset["positive_rates"]["train"][a] for a in dataset["attributes"]]
    return torch.nn.BCEWithLogitsLoss(pos_weight=positive_weights(rates, max_weight).to(device))


def epochs_of_batches(
    accelerator: Accelerator, loader: DataLoader, first_step: int, steps_per_epoch: int, epochs: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, pixels, labels) from the batch after optimizer step `first_step` to the end."""
    accumulation = accelerator.gradient_accumulation_steps
    first_epoch, steps_into_epoch = divmod(first_step, steps_per_epoch)
    for epoch in range(first_epoch, epochs):
        loader.set_epoch(epoch)
        batches = loader
        if epoch == first_epoch and steps_into_epoch:
            batches = accelerator.skip_first_batches(loader, steps_into_epoch * accumulation)
        for pixels, labels in batches:
            yield epoch, pixels, labels


class Meter:
    """Loss and throughput over the batches since the last logged record."""

    def __init__(self):
        self.started = self.window_start = time.perf_counter()
        self.seen, self.losses = 0, []

    def add(self, images: int, loss: torch.Tensor) -> None:
        self.seen += images
        self.losses.append(loss.detach())

    def record(self, accelerator: Accelerator, step: int, epoch: int, lr: float) -> dict:
        now = time.perf_counter()
        record = {
            "step": step,
            "epoch": epoch + 1,
            "loss": float(accelerator.gather(torch.stack(self.losses).mean()).mean()),
            "lr": lr,
            "images_per_second": self.seen * accelerator.num_processes / (now - self.window_start),
            "elapsed_seconds": now - self.started,
        }
        self.seen, self.losses, self.window_start = 0, [], time.perf_counter()
        return record


@dataclass
class Training:
    """What the loop works with, prepared by Accelerate for this process."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    loss_fn: torch.nn.Module
    preprocessing: Preprocessing
    progress: Progress

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over this process's share of the data."""
        return math.ceil(len(self.loader) / self.accelerator.gradient_accumulation_steps)

    def learn(self, pixels: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        """Forward and backward on one batch; the optimizer steps when gradients are synced
        (every gradient_accumulation_steps batches). Returns the batch's loss."""
        with self.accelerator.accumulate(self.model):
            x = to_model_input(pixels, self.preprocessing)
            x = augment(x, self.progress.augment_rng, cfg.max_shift, cfg.flip_probability)
            loss = self.loss_fn(self.model(pixel_values=x).logits.float(), labels)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return loss


def prepare_training(config: RunConfig, dataset: dict[str, Any]) -> Training:
    """A freshly initialised model (seeded), its data, optimizer and loss, through Accelerate."""
    cfg = config.train
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    model = build_model(config.model, dataset["attributes"])
    loader = train_loader(dataset, cfg, pin_memory=torch.cuda.is_available())
    optimizer, scheduler = optimizer_and_schedule(model, len(loader), cfg)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    progress = Progress(augment_seed=cfg.seed + 1)
    loss_fn = weighted_loss(dataset, cfg.pos_weight_max, accelerator.device)
    preprocessing = preprocessing_of(config.model)
    return Training(
        accelerator, model, optimizer, scheduler, loader, loss_fn, preprocessing, progress
    )


def train(
    config: RunConfig,
    dataset: dict[str, Any],
    checkpoints: CheckpointPlace,
    resume_from: Sequence[CheckpointPlace] = (),
    on_log: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the configured model on the prepared dataset; return the unwrapped model and the
    logged history. Logs loss, lr and images/s to the tracker every `log_every` steps and
    saves a checkpoint into `checkpoints` every `checkpoint_every` steps.

    If a place in `resume_from` holds a checkpoint, training continues from the newest one
    of the first such place, with the same weights, optimizer and scheduler state, RNGs and
    position in the data, so the result matches an uninterrupted run."""
    cfg, run = config.train, prepare_training(config, dataset)
    accelerator, progress = run.accelerator, run.progress
    resumed_from_step = restore(accelerator, progress, resume_from)
    accelerator.init_trackers(config.project, config=_flat(config.model_dump()))
    total_steps = cfg.epochs * run.steps_per_epoch
    meter = Meter()
    main = accelerator.is_local_main_process
    bar = tqdm(total=total_steps, initial=progress.step, disable=not main, mininterval=5)
    run.model.train()
    batches = epochs_of_batches(
        accelerator, run.loader, progress.step, run.steps_per_epoch, cfg.epochs
    )
    for epoch, pixels, labels in batches:
        meter.add(pixels.shape[0], run.learn(pixels, labels, cfg))
        if not accelerator.sync_gradients:
            continue
        progress.step += 1
        step = progress.step
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            record = meter.record(accelerator, step, epoch, run.scheduler.get_last_lr()[0])
            progress.history.append(record)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if on_log and accelerator.is_main_process:
                on_log({**record, "total_steps": total_steps})
        if step % cfg.checkpoint_every == 0:
            checkpoints.save(accelerator, step, cfg.keep_checkpoints, progress)
        if on_step:
            on_step(step)
    bar.close()
    model = finish(accelerator, run)
    return TrainResult(
        model, progress.history, progress.step, resumed_from_step, accelerator.num_processes
    )


def finish(accelerator: Accelerator, run: Training) -> torch.nn.Module:
    """The trained model, unwrapped. Lets go of the DistributedDataParallel wrapper, then of
    the process group, in that order. The other way round, the wrapper's reducer holds the
    group's last reference, and gloo's destructor, run with the GIL held, waits for a worker
    thread that needs the GIL to release the tensors of a finished collective: the rank hangs
    after training."""
    run.model = accelerator.unwrap_model(run.model)
    accelerator.free_memory()
    accelerator.end_training()
    return run.model


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"train.learning_rate": ...} for the tracker's config table."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
