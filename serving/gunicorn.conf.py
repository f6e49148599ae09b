"""gunicorn settings for facet, from the environment (lib.settings.ServingSettings: HOST,
PORT, WEB_CONCURRENCY, GUNICORN_THREADS, TORCH_THREADS, PROMETHEUS_MULTIPROC_DIR).

No preload: each worker imports torch and loads the model after the fork (torch's thread
pools do not survive a fork). Torch threads are capped so that workers x threads never
oversubscribe the cores.
"""

import os
import shutil
import tempfile

from lib.settings import ServingSettings

settings = ServingSettings()
workers, threads = settings.WEB_CONCURRENCY, settings.GUNICORN_THREADS
# With one request thread, the sync worker: it accepts a connection only when free, so load
# spreads over the workers (a gthread worker queues connections it cannot serve yet, which
# raised p99 in bench/serve_bench.py: docs/results.md). Sync workers do not keep connections
# alive: put a proxy in front.
worker_class = "sync" if threads == 1 else "gthread"
bind = f"{settings.HOST}:{settings.PORT}"
wsgi_app = "serving:create_app()"
timeout = 120
graceful_timeout = 30
accesslog = "-"

# The workers read these from the environment they inherit.
if not settings.TORCH_THREADS:
    os.environ["TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // (workers * threads)))
# Prometheus multiprocess mode: set before any worker imports prometheus_client.
# (An empty value would make prometheus_client write its files into the working directory.)
metrics_folder = settings.PROMETHEUS_MULTIPROC_DIR or tempfile.mkdtemp(prefix="facet-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder


def on_starting(server):
    shutil.rmtree(metrics_folder, ignore_errors=True)
    os.makedirs(metrics_folder)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
