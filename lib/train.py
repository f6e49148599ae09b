"""One readable Accelerate training loop, in the shape of Hugging Face's
run_image_classification_no_trainer.py, over the uint8 cache that lib.data prepares."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lib.datasets import CachedSplit
from lib.model import build_model, preprocessing_of
from lib.preprocess import to_model_input
from lib.storage import CheckpointPlace


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    resumed_from_step: int = 0  # 0 for a fresh start
    world_size: int = 1  # training processes
    weight_digests: list[str] = field(default_factory=list)  # per rank; all equal under DDP


class Progress:
    """What a checkpoint needs beyond model, optimizer, scheduler and the global RNGs (which
    accelerate saves itself): the step count, the curve so far and the augmentation RNG."""

    def __init__(self, augment_seed: int):
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.augment_rng = torch.Generator().manual_seed(augment_seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "history": self.history,
            "augment_rng": self.augment_rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history = state["step"], state["history"]
        self.augment_rng.set_state(state["augment_rng"])


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


def _tracker(train_config: dict[str, Any]) -> str | None:
    if not train_config.get("wandb", True):
        return None
    # Offline unless the user configured W&B: never block a run on an unreachable server.
    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    return "wandb"


def train_loader(dataset: dict[str, Any], cfg: dict[str, Any], pin_memory: bool) -> DataLoader:
    """Shuffled batches of the training split's uint8 images, read from the memory-mapped
    shards by `num_workers` processes; pinned memory makes the copy to a GPU asynchronous.
    Normalisation and augmentation happen on the device, on whole batches."""
    return DataLoader(
        CachedSplit(dataset["cache_dir"], "train"),
        batch_size=cfg["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=cfg["num_workers"],
        persistent_workers=cfg["num_workers"] > 0,
        pin_memory=pin_memory,
    )


def train(
    config: dict[str, Any],
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
    cfg = config["train"]
    on_cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=not on_cuda,  # several processes without CUDA: gloo (accelerate wants it said)
        mixed_precision="bf16" if on_cuda else "no",  # on CPU bf16 measured 2x slower here
        dynamo_backend="inductor" if cfg.get("compile", False) else "no",  # torch.compile
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        log_with=_tracker(cfg),
        # Each epoch's order depends on (seed, epoch) alone, so a resumed run can skip to
        # the exact batch where the checkpoint was taken.
        # non_blocking: batches from pinned memory are copied while the previous step runs.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg["seed"], non_blocking=on_cuda
        ),
    )
    set_seed(cfg["seed"])
    preprocessing = preprocessing_of(config["model"])
    model = build_model(config["model"], dataset["attributes"])
    loader = train_loader(dataset, cfg, pin_memory=on_cuda)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg["weight_decay"]), lr=cfg["learning_rate"], fused=on_cuda
    )
    accumulation = cfg["gradient_accumulation_steps"]
    # The schedule counts steps of one process over the whole loader: accelerate steps a
    # prepared scheduler once per process at each optimizer step.
    schedule_steps = cfg["epochs"] * math.ceil(len(loader) / accumulation)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg["warmup_ratio"] * schedule_steps), schedule_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    steps_per_epoch = math.ceil(len(loader) / accumulation)  # this process's share of the data
    total_steps = cfg["epochs"] * steps_per_epoch
    progress = Progress(augment_seed=cfg["seed"] + 1)
    accelerator.register_for_checkpointing(progress)
    # On a fresh machine latest() downloads the mirrored checkpoint: once per machine, after
    # which the other processes find it on disk.
    with accelerator.local_main_process_first():
        checkpoint = next(filter(None, (place.latest() for place in resume_from)), None)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resuming from {checkpoint} (step {progress.step})")
    resumed_from_step = progress.step

    rates = [dataset["positive_rates"]["train"][a] for a in dataset["attributes"]]
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=positive_weights(rates, cfg["pos_weight_max"]).to(accelerator.device)
    )
    accelerator.init_trackers(config.get("project", "facet"), config=_flat(config))

    seen, window_loss, window_start = 0, [], time.perf_counter()
    started = window_start
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        disable=not accelerator.is_local_main_process,
        mininterval=5,
    )
    model.train()
    first_epoch, steps_into_epoch = divmod(progress.step, steps_per_epoch)
    for epoch in range(first_epoch, cfg["epochs"]):
        loader.set_epoch(epoch)
        batches = loader
        if epoch == first_epoch and steps_into_epoch:
            batches = accelerator.skip_first_batches(loader, steps_into_epoch * accumulation)
        for pixels, labels in batches:
            with accelerator.accumulate(model):
                x = augment(
                    to_model_input(pixels, preprocessing),
                    progress.augment_rng,
                    cfg["max_shift"],
                    cfg.get("flip_probability", 0.5),
                )
                logits = model(pixel_values=x).logits
                loss = loss_fn(logits.float(), labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            seen += pixels.shape[0]
            window_loss.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            step = progress.step
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == total_steps:
                now = time.perf_counter()
                record = {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": float(accelerator.gather(torch.stack(window_loss).mean()).mean()),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_second": seen * accelerator.num_processes / (now - window_start),
                    "elapsed_seconds": now - started,
                }
                progress.history.append(record)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if on_log and accelerator.is_main_process:
                    on_log({**record, "total_steps": total_steps})
                seen, window_loss, window_start = 0, [], time.perf_counter()
            if step % cfg["checkpoint_every"] == 0:
                checkpoints.save(accelerator, step, cfg["keep_checkpoints"])
            if on_step:
                on_step(step)
    bar.close()
    model = accelerator.unwrap_model(model)
    digests = gather_object([weight_digest(model)])  # before end_training ends the group
    accelerator.end_training()
    return TrainResult(
        model=model,
        history=progress.history,
        steps=progress.step,
        resumed_from_step=resumed_from_step,
        world_size=accelerator.num_processes,
        weight_digests=digests,
    )


def weight_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"train.learning_rate": ...} for the tracker's config table."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
