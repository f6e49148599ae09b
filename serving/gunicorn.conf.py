"""gunicorn settings for facet, from the environment (lib.settings.ServingSettings: HOST,
PORT, WEB_CONCURRENCY, GUNICORN_THREADS, TORCH_THREADS, OMP_WAIT_POLICY,
PROMETHEUS_MULTIPROC_DIR).

No preload: each worker imports torch and loads the model after the fork (torch's thread
pools do not survive a fork), before it accepts a connection.

The process layout: one worker per core by default (WEB_CONCURRENCY), each with its own model
and one torch thread (TORCH_THREADS defaults to cores / workers). A worker's request threads
read, decode, log and answer, and its model makes one call at a time (lib.batching): a lone
request calls it at once, and the requests that arrive while it is busy are computed as one
batch by the worker's batcher thread.
Workers, not threads, spread the Python of requests and model over the cores: one interpreter
runs one thread at a time. A large model whose lone request gains from every core is served
with WEB_CONCURRENCY=1 (docs/serving.md, the layout).

One shipper per replica: the master starts `python -m lib.shipper` when it is ready. It ships
the log's rows to PREDICTION_SINK every PREDICTION_SHIP_SECONDS and prunes the log; when the
master stops (SIGTERM), after its workers have finished their requests, it tells the shipper to
ship what is left and waits for it, within the grace period.

One model per service: the master resolves the champion when it starts and at every HUP
(`kill -HUP <master>`: new workers load the new champion, old ones finish their requests and
stop) and hands it to every worker, respawned ones too, as MODEL_RUN.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from lib.settings import ServingSettings

settings = ServingSettings()
# A worker per CPU this process may use (taskset, cpuset), one torch thread each.
workers, threads, torch_threads = settings.layout(len(os.sched_getaffinity(0)))
# gthread: a request is read in one of the worker's threads, so a client trickling its body
# holds that thread and not the worker (a sync worker would be stuck, then killed at `timeout`);
# the main thread keeps the worker alive. A worker takes only as many connections as it has
# threads: the rest wait in the listen queue for whichever worker frees first, and load spreads.
# A thread waiting for the batcher costs no CPU, so there are several (GUNICORN_THREADS, 8).
# Slow clients beyond workers x threads still wait: put a buffering proxy in front.
worker_class = "gthread"
worker_connections = threads
keepalive = 0  # no connection is kept beyond its threads (a proxy in front keeps them)
bind = f"{settings.HOST}:{settings.PORT}"
wsgi_app = "serving:create_app(load_model_now=True)"
timeout = 120
graceful_timeout = 30
accesslog = "-"

# The workers read these from the environment they inherit.
os.environ["TORCH_THREADS"] = str(torch_threads)
# Read by OpenMP as torch loads, in the worker. Spinning torch threads share the cores with the
# worker's request threads, the shipper and anything else on the machine: one that waits for
# a descheduled sibling at each of the model's operations stalls the call (docs/serving.md).
os.environ["OMP_WAIT_POLICY"] = settings.OMP_WAIT_POLICY
# Prometheus multiprocess mode: set before any worker imports prometheus_client.
# (An empty value would make prometheus_client write its files into the working directory.)
metrics_folder = settings.PROMETHEUS_MULTIPROC_DIR or tempfile.mkdtemp(prefix="facet-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder


def on_starting(server):
    shutil.rmtree(metrics_folder, ignore_errors=True)
    os.makedirs(metrics_folder)
    pin_champion(server)


def when_ready(server):
    server.shipper = subprocess.Popen([sys.executable, "-m", "lib.shipper"])


def on_exit(server):
    """The workers have stopped: the shipper ships their last rows, then stops."""
    shipper = getattr(server, "shipper", None)
    if shipper is None:
        return
    shipper.send_signal(signal.SIGTERM)
    try:
        shipper.wait(graceful_timeout)
    except subprocess.TimeoutExpired:
        server.log.error("the shipper did not stop within %s s; killing it", graceful_timeout)
        shipper.kill()


def on_reload(server):
    pin_champion(server)


def pin_champion(server) -> None:
    """Give the workers the current champion as MODEL_RUN (gunicorn's raw_env, which it
    clears again before rereading this file at a HUP), unless MODEL_RUN or MODEL_DIR names the
    model. Without a champion to be found, each worker looks for one itself, retrying, and
    /readyz says why it has none."""
    if settings.MODEL_RUN or settings.MODEL_DIR:
        return
    from lib.registry import current_champion

    try:
        champion = current_champion()
    except Exception:
        server.log.exception("could not look up the champion; each worker will")
        return
    if champion is None:
        server.log.error("no run is tagged champion; each worker will keep looking")
        return
    server.log.info("serving the champion %s", champion.pathspec)
    server.cfg.set("raw_env", [*server.cfg.raw_env, f"MODEL_RUN={champion.pathspec}"])


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
