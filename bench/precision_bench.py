"""Which precision should the CPU default train in? fp32 against bf16 autocast.

    python bench/precision_bench.py

Trains the default config's ViT on random 64 px batches for the same number of steps in
both precisions, in this process, and prints images/s and the ratio. On CUDA the loop uses
bf16 (lib.train chooses by device); this measures the CPU choice.
"""

import time

import torch

from lib.config import load
from lib.model import build_model
from lib.synthetic import ATTRIBUTES


def images_per_second(bf16: bool, steps: int = 12, warmup: int = 3) -> float:
    config = load()
    torch.manual_seed(0)
    model = build_model(config.model, ATTRIBUTES).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size, batch = config.model.image_size, config.train.batch_size
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch, len(ATTRIBUTES))).float()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=x).logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch / (time.perf_counter() - start)


if __name__ == "__main__":
    fp32, bf16 = images_per_second(False), images_per_second(True)
    print(f"fp32            {fp32:7.0f} images/s")
    print(f"bf16 autocast   {bf16:7.0f} images/s")
    print(f"bf16 / fp32     {bf16 / fp32:7.2f}")
