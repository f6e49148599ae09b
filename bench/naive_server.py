"""The baseline bench/serve_bench.py measures the service against: a server built like the
predecessor's, a Hugging Face image processor and a model call per request.

    python bench/naive_server.py EXPORTED_DIR --port 8001

EXPORTED_DIR is a folder written by `python -m lib.export`. One process, Flask's built-in
server (threaded, as app.run is by default), fp32, torch's default thread count; per request:
PIL open, processor(images=..., return_tensors="pt"), model(**inputs), sigmoid, JSON.
Not for production: it exists to be measured.
"""

from __future__ import annotations

import argparse
import io

import torch
from flask import Flask, jsonify, request
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification


def create_app(folder: str) -> Flask:
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = Flask(__name__)

    @app.get("/readyz")
    def readyz():
        return {"status": "ready", "processor": type(processor).__name__}

    @app.post("/predict")
    def predict():
        image = Image.open(io.BytesIO(request.get_data())).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            probs = torch.sigmoid(model(**inputs).logits)[0]
        return jsonify({"attributes": dict(zip(labels, probs.tolist(), strict=True))})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a folder written by python -m lib.export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    create_app(args.folder).run(args.host, args.port)


if __name__ == "__main__":
    main()
