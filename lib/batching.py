"""Adaptive batching: the requests that arrive while the model is busy are run together.

A request thread hands its images to `Batcher.predict`. When the model is free and nothing
waits (and `max_wait_s` is 0, the default), it makes the model call itself, at once and with
no handoff. Otherwise it queues its images and waits: a runner thread takes the oldest waiting
request and every request queued behind it, up to `max_size` images, makes one model call for
them all and hands each request its own rows. One call at a time: batches form from the
requests that queued while the model was busy, so batching adds no wait, it only removes some.

`predict` takes a (B, ...) array and returns a dataclass whose every field is an array with B
rows (lib.inference.Predictor.predict and its Prediction).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

# Called as each model call starts: its images, and each request's wait (seconds from
# predict() to the call; about 0 for a lone request that calls the model itself).
BatchObserver = Callable[[int, list[float]], None]


class BatchFailed(RuntimeError):
    """The model call that held this request's images raised (the cause); every request of that
    batch gets one, and the next call goes on as usual."""


@dataclass
class _Request:
    pixels: np.ndarray
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Exception | None = None

    def finish(self, result: Any = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """Answers `predict` calls one model call at a time: a lone request in its own thread, the
    requests that queued meanwhile in batches, by a runner thread started here."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Any],
        max_size: int,
        max_wait_s: float = 0.0,
        observe: BatchObserver | None = None,
    ):
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self._predict, self._observe = predict, observe
        self._waiting: deque[_Request] = deque()
        self._changed = threading.Condition()
        self._model = threading.Lock()  # held by the thread making a model call
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    def predict(self, pixels: np.ndarray) -> Any:
        """`predict(pixels)` as the model would answer it, computed in a batch with whatever
        other requests wait at the same time; blocks until then. Raises BatchFailed."""
        request = _Request(pixels)
        if self._runs_alone_now():
            try:
                self._answer([request])
            finally:
                self._model.release()
        else:
            with self._changed:
                self._waiting.append(request)
                self._changed.notify()
            request.done.wait()
        if request.error is not None:
            raise BatchFailed(f"the model failed on a batch: {request.error}") from request.error
        return request.result

    def _runs_alone_now(self) -> bool:
        """True, holding the model, when a request would be a batch of its own at once. Checked
        under the queue's lock, which queuing takes too: no request overtakes a queued one."""
        with self._changed:
            alone = self.max_wait_s == 0 and not self._waiting
            return alone and self._model.acquire(blocking=False)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting)
            with self._model:
                self._answer(self._next_batch())

    def _next_batch(self) -> list[_Request]:
        """The oldest request and those queued behind it that fit in max_size images (a request
        larger than that alone), once max_wait_s has passed since the oldest arrived or the
        queue holds max_size images. The runner calls it once a request waits (only it takes
        requests off the queue)."""
        with self._changed:
            deadline = self._waiting[0].enqueued + self.max_wait_s
            while self.images_waiting() < self.max_size and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            batch = [self._waiting.popleft()]
            images = len(batch[0].pixels)
            while self._waiting and images + len(self._waiting[0].pixels) <= self.max_size:
                batch.append(self._waiting.popleft())
                images += len(batch[-1].pixels)
            return batch

    def images_waiting(self) -> int:
        """Images queued for the model, not yet in a call."""
        return sum(len(request.pixels) for request in self._waiting)

    def _answer(self, batch: list[_Request]) -> None:
        """One model call for the batch; each request gets its rows, or the call's error."""
        pixels = np.concatenate([r.pixels for r in batch]) if len(batch) > 1 else batch[0].pixels
        try:
            if self._observe:
                started = time.monotonic()
                self._observe(len(pixels), [started - request.enqueued for request in batch])
            answers = split(self._predict(pixels), [len(request.pixels) for request in batch])
        except Exception as error:  # the requests' error, not the runner's: it goes on
            for request in batch:
                request.finish(error=error)
            return
        for request, answer in zip(batch, answers, strict=True):
            request.finish(result=answer)


def split(result: Any, sizes: list[int]) -> list[Any]:
    """A dataclass of arrays cut into consecutive parts of `sizes` rows each."""
    bounds = np.cumsum([0, *sizes])
    return [
        replace(result, **{f.name: getattr(result, f.name)[start:stop] for f in fields(result)})
        for start, stop in itertools.pairwise(bounds)
    ]
