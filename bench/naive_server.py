"""A baseline bench/serve_bench.py measures the service against: the predecessor's model path
(bench/baseline.py) behind Flask's built-in server.

    python bench/naive_server.py EXPORTED_DIR --port 8001

EXPORTED_DIR is a folder written by `python -m lib.export`. One process, Flask's development
server (threaded, as app.run is by default), fp32, torch's default thread count; per request
an HF image processor and a model call. Not for production: it exists to be measured.
"""

from __future__ import annotations

from baseline import Baseline, arguments
from flask import Flask, jsonify, request


def create_app(folder: str) -> Flask:
    baseline = Baseline(folder)
    app = Flask(__name__)

    @app.get("/readyz")
    def readyz():
        return baseline.status()

    @app.post("/predict")
    def predict():
        return jsonify(baseline.predict(request.get_data()))

    return app


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__.split("\n")[0], argv)
    create_app(args.folder).run(args.host, args.port)


if __name__ == "__main__":
    main()
