"""Every environment variable facet reads, in one place: `FlowSettings` for the flows' steps,
`ServingSettings` for the service and its gunicorn configuration. Nothing else in facet reads
`os.environ`. A malformed value (PORT=eighty) stops the program naming the variable.

    python -m lib.settings            # the README's table of variables, generated from here
    python -m lib.settings README.md  # the same, written into the README between its markers

Variables that the libraries read themselves (Metaflow's, Google's, W&B's) are listed in
LIBRARY_VARIABLES for the table; facet passes them through untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPOSITORY = Path(__file__).resolve().parents[1]


class _Environment(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    PREDICTION_LOG: str = Field(
        str(REPOSITORY / "var" / "predictions.db"),
        description="the SQLite prediction log serving writes (each replica's buffer)",
    )
    PREDICTION_SINK: str = Field(
        "",
        description="where each replica ships its logged rows as Parquet: a gs://bucket/prefix "
        "or a folder; MonitorFlow reads it when set (default: MonitorFlow reads PREDICTION_LOG)",
    )


class FlowSettings(_Environment):
    """Read by the steps of TrainFlow, TrainMultiNodeFlow and MonitorFlow."""

    FACET_CACHE: str = Field(
        "",
        description="where prepared datasets are kept: a folder, or a gs:// prefix shared by "
        "every machine (default ~/.cache/facet)",
    )
    ALERT_WEBHOOK_URL: str = Field(
        "", description="MonitorFlow POSTs a JSON summary here when it finds drift"
    )
    WANDB_API_KEY: SecretStr | None = Field(
        None, description="W&B key; without it (and without WANDB_MODE) runs log offline"
    )
    WANDB_MODE: str | None = Field(None, description="W&B's own mode (online, offline, ...)")
    FACET_FAULT: str = Field(
        "", description="fault injection for tests and demos, e.g. train@6:kill (lib.faults)"
    )


# The variables ServingSettings.layout reads, in the order of what it returns.
LAYOUT_VARIABLES = ("WEB_CONCURRENCY", "GUNICORN_THREADS", "TORCH_THREADS")


class ServingSettings(_Environment):
    """Read by serving/ (the app factory) and serving/gunicorn.conf.py."""

    MODEL_RUN: str | None = Field(None, description="serve this run (default: the champion)")
    MODEL_DIR: str | None = Field(None, description="serve a folder written by lib.export")
    PRECISION: Literal["fp32", "bf16", "int8"] = Field(
        "fp32", description="inference precision: fp32, bf16 or int8 (dynamic quantisation)"
    )
    REPLICA_ID: str = Field(
        "", description="this replica's name in every logged row (default: the host name)"
    )
    PREDICTION_SHIP_SECONDS: float = Field(
        60.0, gt=0, description="seconds between shipments of logged rows to PREDICTION_SINK"
    )
    PREDICTION_LOG_MAX_AGE_HOURS: float | None = Field(
        168.0, gt=0, description="the local log drops rows older than this, shipped or not"
    )
    PREDICTION_LOG_MAX_ROWS: int | None = Field(
        None, gt=0, description="the local log keeps at most this many rows (default: no cap)"
    )
    PREDICTION_LOG_TIMEOUT_S: float = Field(
        5.0, gt=0, description="a write waits this long for a locked log, then /predict is 503"
    )
    MAX_BATCH: int = Field(32, gt=0, description="images per request at most")
    MAX_UPLOAD_MB: int = Field(32, gt=0, description="request body size limit")
    MAX_IMAGE_PIXELS: int = Field(40_000_000, gt=0, description="pixels per image at most")
    MAX_REQUEST_PIXELS: int = Field(
        100_000_000, gt=0, description="pixels per request at most, all its images together"
    )
    BATCH_MAX_SIZE: int = Field(
        16,
        gt=0,
        description="images per model call at most: requests that wait for the model run "
        "together up to this many (a larger request runs alone)",
    )
    BATCH_MAX_WAIT_MS: float = Field(
        0.0,
        ge=0,
        description="a batch waits this long after its first request for more (0: it runs as "
        "soon as the model is free, and batches form while it is busy)",
    )
    TORCH_THREADS: int = Field(
        0, ge=0, description="torch threads of a worker's model (0, gunicorn: cores / workers)"
    )
    OMP_WAIT_POLICY: Literal["PASSIVE", "ACTIVE"] = Field(
        "PASSIVE",
        description="how torch's threads wait for work (OpenMP's variable; gunicorn sets it for "
        "its workers): PASSIVE sleeps; ACTIVE spins, and stalls the model when anything else "
        "wants its cores",
    )
    HOST: str = Field("0.0.0.0", description="address gunicorn binds")
    PORT: int = Field(8000, gt=0, description="port gunicorn binds (Cloud Run sets it)")
    WEB_CONCURRENCY: int = Field(
        0,
        ge=0,
        description="gunicorn worker processes, each with its model and batcher (0: one per "
        "core the process may use)",
    )
    GUNICORN_THREADS: int = Field(
        8,
        gt=0,
        description="request threads per worker: each holds one request, slow client or "
        "waiting for the model",
    )
    PROMETHEUS_MULTIPROC_DIR: str = Field(
        "", description="folder for multi-process metrics (gunicorn makes a fresh one)"
    )
    API_KEYS: SecretStr | None = Field(
        None, description="comma-separated bearer keys: /predict, /model, /monitoring* need one"
    )
    API_KEYS_FILE: str | None = Field(
        None, description="a file of bearer keys, one a line (with or instead of API_KEYS)"
    )
    METRICS_KEY: SecretStr | None = Field(
        None, description="bearer key for /metrics (default: /metrics is open)"
    )

    def layout(self, cores: int) -> tuple[int, int, int]:
        """(worker processes, request threads per worker, torch threads per worker) for a
        service allowed `cores` CPUs: a worker per core unless WEB_CONCURRENCY says how many,
        and the cores shared among the workers' models unless TORCH_THREADS says."""
        workers = self.WEB_CONCURRENCY or cores
        return workers, self.GUNICORN_THREADS, self.TORCH_THREADS or max(1, cores // workers)

    def flask_config(self) -> dict[str, Any]:
        """The app's config: every setting by name, and Flask's own upload limit."""
        return {**self.model_dump(), "MAX_CONTENT_LENGTH": self.MAX_UPLOAD_MB * 1024 * 1024}


LIBRARY_VARIABLES = {
    "METAFLOW_DEFAULT_DATASTORE": "Metaflow: local or gs (checkpoints are mirrored to gs too)",
    "METAFLOW_DATASTORE_SYSROOT_LOCAL": "Metaflow: the local datastore's folder",
    "METAFLOW_DATASTORE_SYSROOT_GS": "Metaflow: the GCS datastore's gs:// root",
    "METAFLOW_USER": "Metaflow: the user runs are recorded under (the Makefile sets one)",
    "GOOGLE_APPLICATION_CREDENTIALS": "google-cloud-storage: a service account key file",
    "STORAGE_EMULATOR_HOST": "google-cloud-storage: an emulator's address (the tests use one)",
}


def markdown_table() -> str:
    """The README's table of environment variables."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    seen = set()
    for program, settings in (("flows", FlowSettings), ("serving", ServingSettings)):
        for name, field in settings.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            shared = name in _Environment.model_fields
            value = str(field.default).replace(f"{REPOSITORY}/", "")
            default = "" if field.default in (None, "") else f"`{value}`"
            readers = "flows, serving" if shared else program
            rows.append(f"| `{name}` | {readers} | {default} | {field.description} |")
    for name, meaning in LIBRARY_VARIABLES.items():
        library, _, what = meaning.partition(": ")
        rows.append(f"| `{name}` | {library} | | {what} |")
    return "\n".join(rows)


if __name__ == "__main__":
    from lib.config import write_table

    if len(sys.argv) > 1:
        write_table(Path(sys.argv[1]), "env-table", markdown_table())
    else:
        sys.stdout.write(markdown_table() + "\n")
