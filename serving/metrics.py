"""Prometheus metrics that stay correct across gunicorn workers.

serving/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module:
each worker then writes its samples to files there and /metrics merges them all, so a scrape
that reaches any worker sees the whole service.
"""

from __future__ import annotations

import time

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
MODEL_LOAD_FAILURES = Counter(
    "facet_model_load_failures_total", "Failed attempts to load the model (each is retried)"
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


def exposition() -> Response:
    if current_app.config["PROMETHEUS_MULTIPROC_DIR"]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
