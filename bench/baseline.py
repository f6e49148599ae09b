"""What the baseline servers share: a model path built like the predecessor's, and their
command line. bench/naive_server.py serves it with Flask, bench/fastapi_server.py with FastAPI
+ uvicorn; bench/serve_bench.py measures both against the service.

Per request: PIL open, processor(images=..., return_tensors="pt") with the Hugging Face image
processor the exported folder names, model(**inputs), sigmoid, a dict for JSON. fp32, torch's
default thread count, one image per call.
"""

from __future__ import annotations

import argparse
import io

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification


class Baseline:
    """An exported folder (`python -m lib.export`) loaded the predecessor's way."""

    def __init__(self, folder: str) -> None:
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModelForImageClassification.from_pretrained(folder).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def status(self) -> dict[str, str]:
        return {"status": "ready", "processor": type(self.processor).__name__}

    def predict(self, body: bytes) -> dict[str, dict[str, float]]:
        """An encoded image -> {"attributes": {name: probability}}."""
        image = Image.open(io.BytesIO(body)).convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            probs = torch.sigmoid(self.model(**inputs).logits)[0]
        return {"attributes": dict(zip(self.labels, probs.tolist(), strict=True))}


def arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """FOLDER --host --port, as both baseline servers take them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", help="a folder written by python -m lib.export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    return parser.parse_args(argv)
