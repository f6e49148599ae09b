"""Prometheus metrics that stay correct across gunicorn workers.

serving/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module:
each worker then writes its samples to files there and /metrics merges them all, so a scrape
that reaches any worker sees the whole service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lib.predlog import LogUnavailable, PredictionLog

REQUESTS = Counter(
    "facet_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"]
)
LATENCY = Histogram(
    "facet_request_duration_seconds",
    "Time to answer a request, by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IMAGES = Histogram(
    "facet_images_per_request",
    "Images in each answered /predict request",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_SIZE = Histogram(
    "facet_batch_size",
    "Images in each model call, the requests that waited for the model together",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_QUEUE = Histogram(
    "facet_batch_queue_seconds",
    "Time each /predict request waited for the model: from its images being queued to the "
    "model call that holds them starting",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MODEL_LOAD_FAILURES = Counter(
    "facet_model_load_failures_total", "Failed attempts to load the model (each is retried)"
)
LOG_ROWS_WRITTEN = Counter(
    "facet_log_rows_written_total", "Rows committed to this replica's prediction log"
)
LOG_WRITE_FAILURES = Counter(
    "facet_log_write_failures_total",
    "Requests answered 503 log_unavailable, by reason (locked, full, io)",
    ["reason"],
)
MODEL_INFO = Gauge(
    "facet_model_info",
    "The model a worker serves (value 1)",
    ["model", "precision"],
    multiprocess_mode="max",
)


def register(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def count(response):
        # The route pattern, not the path: unknown URLs must not create new label values.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(endpoint, str(response.status_code)).inc()
        started = g.get("started", time.perf_counter())
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return response


def observe_batch(images: int, waits: list[float]) -> None:
    """lib.batching's observer: a model call's images and its requests' queue waits."""
    BATCH_SIZE.observe(images)
    for wait in waits:
        BATCH_QUEUE.observe(wait)


class UnshippedRows(Collector):
    """The replica's rows not yet in PREDICTION_SINK, read from its log at each scrape: every
    worker sees the same file, so any worker answers for the replica."""

    def __init__(self, log: PredictionLog):
        self.log = log

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            oldest, rows = self.log.oldest_unshipped_ts(), self.log.unshipped_rows()
        except LogUnavailable:
            return
        yield GaugeMetricFamily(
            "facet_log_oldest_unshipped_seconds",
            "Age of the oldest logged row not yet shipped (0 when every row is)",
            value=0.0 if oldest is None else max(0.0, time.time() - oldest),
        )
        yield GaugeMetricFamily(
            "facet_log_unshipped_rows", "Logged rows not yet shipped", value=rows
        )


def exposition() -> Response:
    if current_app.config["PROMETHEUS_MULTIPROC_DIR"]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if current_app.config["PREDICTION_SINK"]:
        replica = CollectorRegistry()
        replica.register(UnshippedRows(current_app.extensions["facet.log"]))
        body += generate_latest(replica)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
