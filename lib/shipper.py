"""The shipper: one per replica, it moves the replica's logged rows to PREDICTION_SINK and keeps
its local log (lib.predlog) within the retention settings.

    python -m lib.shipper   # what the gunicorn master starts when it is ready

When it starts, then every PREDICTION_SHIP_SECONDS, it ships every unshipped row, a segment at
a time: the segment is recorded in the log, written as Parquet objects (lib.sink.write_segment),
and its rows deleted from the log only once every object is confirmed. A failed shipment leaves
the segment recorded, so the next try writes the same objects again (same keys, same bytes): no
row is lost or duplicated. The log's feedback (POST /feedback) is shipped the same way, in its
own segments, under the sink's `_feedback/`. Then it prunes the log
(PREDICTION_LOG_MAX_AGE_HOURS, PREDICTION_LOG_MAX_ROWS), off the request path. SIGTERM or
SIGINT: one last shipment, then it exits; it also exits when its parent (the gunicorn master)
dies. Failures are logged and counted, never fatal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from prometheus_client import Counter

from lib.predlog import TABLES, LogUnavailable, PredictionLog
from lib.settings import ServingSettings
from lib.sink import Sink, write_segment

logger = logging.getLogger(__name__)

ROWS_SHIPPED = Counter(
    "facet_log_rows_shipped_total", "Logged rows written to PREDICTION_SINK and confirmed"
)
FEEDBACK_SHIPPED = Counter(
    "facet_log_feedback_shipped_total", "Feedback rows written to PREDICTION_SINK and confirmed"
)
SHIPPED = {"predictions": (ROWS_SHIPPED, "rows"), "feedback": (FEEDBACK_SHIPPED, "feedback rows")}
SHIP_FAILURES = Counter(
    "facet_log_ship_failures_total", "Shipments that failed (the segment is retried)"
)
ROWS_PRUNED = Counter(
    "facet_log_rows_pruned_total", "Rows the local log dropped by age or count (retention)"
)

PARENT_CHECK_S = 1.0  # how often the shipper looks whether its parent is still there


def ship(log: PredictionLog, sink: Sink, limit: int = 50_000) -> int:
    """Ship every unshipped row of the log to the sink, then its feedback, at most `limit`
    rows a segment; returns how many rows and feedback rows. Raises on a failed write, leaving
    that segment pending for the next call."""
    return sum(ship_table(log, sink, table, limit) for table in TABLES)


def ship_table(log: PredictionLog, sink: Sink, table: str, limit: int) -> int:
    """Ship the unshipped rows of one of the log's tables (predictions or feedback)."""
    counter, noun = SHIPPED[table]
    shipped = 0
    while (segment := log.pending_segment(limit, table)) is not None:
        started = time.perf_counter()
        frame = log.read_segment(*segment, table)
        keys = write_segment(sink, frame, log.log_id, *segment, table)
        log.mark_shipped(*segment, table)
        counter.inc(len(frame))
        shipped += len(frame)
        logger.info(
            "shipped %d %s (ids %d-%d) in %d objects to %s in %.2f s",
            len(frame),
            noun,
            *segment,
            len(keys),
            sink.location,
            time.perf_counter() - started,
        )
    return shipped


def run(settings: ServingSettings, stop: threading.Event) -> None:
    """Ship and prune now and every PREDICTION_SHIP_SECONDS until `stop` is set or the parent
    process dies; then ship one last time and return."""
    parent = os.getppid()
    log = _open_log(settings, stop, parent)
    if log is None:
        return
    sink = Sink(settings.PREDICTION_SINK) if settings.PREDICTION_SINK else None
    logger.info(
        "shipping %s to %s every %g s",
        log.path,
        sink.location if sink else "nowhere (PREDICTION_SINK is unset)",
        settings.PREDICTION_SHIP_SECONDS,
    )
    stopped = False
    while not stopped:  # at once first: rows a killed replica left behind go without delay
        _ship_logging_failures(log, sink)
        _prune(log, settings, sink is not None)
        stopped = _stopped(stop, parent, settings.PREDICTION_SHIP_SECONDS)
    _ship_logging_failures(log, sink)
    logger.info("stopped")


def _open_log(
    settings: ServingSettings, stop: threading.Event, parent: int
) -> PredictionLog | None:
    """The log, once it opens: a full disk or a lock held at start is waited out, retrying every
    PREDICTION_SHIP_SECONDS. None if told to stop first."""
    while True:
        try:
            return PredictionLog(
                settings.PREDICTION_LOG, timeout_s=settings.PREDICTION_LOG_TIMEOUT_S
            )
        except LogUnavailable as error:
            logger.error("cannot open the log yet, retrying: %s", error.message)
        if _stopped(stop, parent, settings.PREDICTION_SHIP_SECONDS):
            return None


def _stopped(stop: threading.Event, parent: int, seconds: float) -> bool:
    """Wait up to `seconds`: True as soon as `stop` is set or the parent has died (this process
    was handed to another parent), False when the time is up."""
    deadline = time.monotonic() + seconds
    while not stop.wait(min(PARENT_CHECK_S, max(0.0, deadline - time.monotonic()))):
        if os.getppid() != parent:
            logger.warning("the parent process %d is gone: stopping", parent)
            return True
        if time.monotonic() >= deadline:
            return False
    return True


def _ship_logging_failures(log: PredictionLog, sink: Sink | None) -> None:
    if sink is None:
        return
    try:
        ship(log, sink)
    except Exception as error:  # the sink or the log is unavailable: retried next round
        SHIP_FAILURES.inc()
        logger.error(
            "shipping failed, the segment stays pending: %s: %s", type(error).__name__, error
        )


def _prune(log: PredictionLog, settings: ServingSettings, shipping: bool) -> None:
    try:
        pruned = log.prune(settings.PREDICTION_LOG_MAX_AGE_HOURS, settings.PREDICTION_LOG_MAX_ROWS)
    except LogUnavailable as error:
        logger.error("pruning failed: %s: %s", type(error).__name__, error)
        return
    ROWS_PRUNED.inc(pruned)
    if pruned and shipping:  # shipped rows are deleted already: these never reached the sink
        logger.warning("retention dropped %d rows that were never shipped", pruned)
    elif pruned:
        logger.info("retention dropped %d rows", pruned)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s shipper[%(process)d] %(levelname)s %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(ServingSettings(), stop)


if __name__ == "__main__":
    main()
