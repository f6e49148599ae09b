"""One readable Accelerate training loop, in the shape of Hugging Face's
run_image_classification_no_trainer.py, over the uint8 cache that lib.data prepares."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lib.data import CachedSplit
from lib.model import build_model, preprocessing_of
from lib.preprocess import to_model_input

CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0


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


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Label-preserving augmentation on the device: per-image horizontal flips and one random
    translation per batch (edge pixels repeat). All attributes are left/right symmetric."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
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


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """save_state into a temporary folder, then rename: a kill mid-save leaves no broken
    checkpoint behind. Keeps the newest `keep`."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    partial = checkpoint_dir / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    accelerator.save_state(str(partial))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in sorted(checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def train(
    config: dict[str, Any],
    dataset: dict[str, Any],
    checkpoint_dir: str | Path,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the configured model on the prepared dataset; return the unwrapped model and the
    logged history. Logs loss, lr and images/s to the tracker every `log_every` steps."""
    cfg = config["train"]
    on_cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision="bf16" if on_cuda else "no",  # on CPU bf16 measured 2x slower here
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        log_with=_tracker(cfg),
    )
    set_seed(cfg["seed"])
    preprocessing = preprocessing_of(config["model"])
    model = build_model(config["model"], dataset["attributes"])
    train_set = CachedSplit(dataset["cache_dir"], "train")
    loader = DataLoader(
        train_set,
        batch_size=cfg["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=cfg["num_workers"],
        persistent_workers=cfg["num_workers"] > 0,
        pin_memory=on_cuda,
        generator=torch.Generator().manual_seed(cfg["seed"]),
    )
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg["weight_decay"]), lr=cfg["learning_rate"], fused=on_cuda
    )
    steps_per_epoch = math.ceil(len(loader) / cfg["gradient_accumulation_steps"])
    total_steps = cfg["epochs"] * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    rates = [dataset["positive_rates"]["train"][a] for a in dataset["attributes"]]
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=positive_weights(rates, cfg["pos_weight_max"]).to(accelerator.device)
    )
    accelerator.init_trackers(config.get("project", "facet"), config=_flat(config))
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    augment_rng = torch.Generator().manual_seed(cfg["seed"] + 1)
    history: list[dict[str, float]] = []
    step, seen, window_loss, window_start = 0, 0, [], time.perf_counter()
    started = window_start
    progress = tqdm(total=total_steps, disable=not accelerator.is_local_main_process, mininterval=5)
    model.train()
    for epoch in range(cfg["epochs"]):
        for pixels, labels in loader:
            with accelerator.accumulate(model):
                x = augment(to_model_input(pixels, preprocessing), augment_rng, cfg["max_shift"])
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
            step += 1
            progress.update(1)
            if step % cfg["log_every"] == 0 or step == total_steps:
                now = time.perf_counter()
                record = {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": float(torch.stack(window_loss).mean()),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_second": seen * accelerator.num_processes / (now - window_start),
                    "elapsed_seconds": now - started,
                }
                history.append(record)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                if on_log:
                    on_log({**record, "total_steps": total_steps})
                seen, window_loss, window_start = 0, [], time.perf_counter()
            if step % cfg["checkpoint_every"] == 0 and accelerator.is_main_process:
                save_checkpoint(accelerator, checkpoint_dir, step, cfg["keep_checkpoints"])
    progress.close()
    accelerator.end_training()
    return TrainResult(model=accelerator.unwrap_model(model), history=history, steps=step)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"train.learning_rate": ...} for the tracker's config table."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
