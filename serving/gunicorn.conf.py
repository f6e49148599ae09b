"""gunicorn settings for facet, from the environment:

    PORT (8000), WEB_CONCURRENCY (workers, 2), GUNICORN_THREADS (request threads per worker, 1),
    TORCH_THREADS (default: cores // (workers x threads), at least 1)

No preload: each worker imports torch and loads the model after the fork (torch's thread
pools do not survive a fork). Torch threads are capped so that workers x threads never
oversubscribe the cores.
"""

import os
import shutil
import tempfile

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# With one request thread, the sync worker: it accepts a connection only when free, so load
# spreads over the workers (a gthread worker queues connections it cannot serve yet, and p99
# measured twice as long). Sync workers do not keep connections alive: put a proxy in front.
worker_class = "sync" if threads == 1 else "gthread"
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
wsgi_app = "serving:create_app()"
timeout = 120
graceful_timeout = 30
accesslog = "-"

os.environ.setdefault("TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // (workers * threads))))
# Prometheus multiprocess mode: set before any worker imports prometheus_client.
# (An empty value would make prometheus_client write its files into the working directory.)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="facet-metrics-")


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
