"""The stronger baseline bench/serve_bench.py measures the service against: the predecessor's
model path (bench/baseline.py) behind FastAPI and uvicorn.

    python bench/fastapi_server.py EXPORTED_DIR --port 8002

EXPORTED_DIR is a folder written by `python -m lib.export`. One uvicorn process (uvloop and
httptools, as uvicorn picks them when installed), fp32, torch's default thread count; per
request an HF image processor and a model call. POST /predict takes the raw image body
(Content-Type: image/jpeg); GET /readyz. The endpoint is a plain `def`, so FastAPI runs it in
its threadpool and the event loop keeps accepting while the model computes: the stronger of
the usual ways (an `async def` calling the model would block the loop for every request).
Not for production: it exists to be measured.
"""

from __future__ import annotations

from typing import Annotated

import uvicorn
from baseline import Baseline, arguments
from fastapi import Body, FastAPI


def create_app(folder: str) -> FastAPI:
    baseline = Baseline(folder)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return baseline.status()

    @app.post("/predict")
    def predict(
        body: Annotated[bytes, Body(media_type="image/jpeg")],
    ) -> dict[str, dict[str, float]]:
        return baseline.predict(body)

    return app


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__.split("\n")[0], argv)
    uvicorn.run(create_app(args.folder), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
