"""lib.batching with a stand-in model that records its calls: the requests that wait for a busy
model are answered in one call, each with its own rows; a lone request runs at once; the batch
size and wait limits; a failing call fails only its own batch."""

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import wait_for

from lib.batching import Batcher, BatchFailed

POISON = -1  # a pixel value the stand-in model fails on
WAIT_S = 10  # a bound for what takes milliseconds, so that a hang fails instead of stalling


@dataclass
class Answer:
    doubled: np.ndarray  # (B, 2, 2)
    total: np.ndarray  # (B,)


class Model:
    """Predicts Answers, recording each call's batch size; hold() keeps the next call inside
    the model until release()."""

    def __init__(self):
        self.batches: list[int] = []
        self.threads: list[str] = []  # the thread each call ran in
        self.entered, self.released = threading.Event(), threading.Event()
        self.released.set()

    def __call__(self, pixels: np.ndarray) -> Answer:
        self.batches.append(len(pixels))
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        self.released.wait()
        if (pixels == POISON).any():
            raise ValueError("poisoned pixels")
        return Answer(doubled=pixels * 2, total=pixels.sum(axis=(1, 2)))

    def hold(self) -> None:
        self.entered.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()


def images(n: int, first: int) -> np.ndarray:
    """n distinct 2x2 images, valued first, first + 1, ..."""
    return np.arange(first, first + n).repeat(4).reshape(n, 2, 2)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as pool:
        yield pool


def busy(pool: ThreadPoolExecutor, batcher: Batcher, model: Model) -> Future:
    """A one-image request inside the model, held there until model.release()."""
    model.hold()
    running = pool.submit(batcher.predict, images(1, 1000))
    assert model.entered.wait(WAIT_S)
    return running


def queue(pool: ThreadPoolExecutor, batcher: Batcher, *requests: np.ndarray) -> list[Future]:
    """Each request's predict, queued in this order behind a busy model."""
    return [enqueue(pool, batcher, pixels) for pixels in requests]


def enqueue(pool: ThreadPoolExecutor, batcher: Batcher, pixels: np.ndarray) -> Future:
    queued = batcher.images_waiting() + len(pixels)
    future = pool.submit(batcher.predict, pixels)
    wait_for(lambda: batcher.images_waiting() == queued, WAIT_S, poll_s=0.001)
    return future


def assert_own_rows(future: Future, pixels: np.ndarray) -> None:
    """The request's answer is what the model gives for its images alone."""
    answer, alone = future.result(WAIT_S), Model()(pixels)
    np.testing.assert_array_equal(answer.doubled, alone.doubled)
    np.testing.assert_array_equal(answer.total, alone.total)


def assert_all_own_rows(futures: list[Future], requests: list[np.ndarray]) -> None:
    for future, pixels in zip(futures, requests, strict=True):
        assert_own_rows(future, pixels)


def test_requests_waiting_for_a_busy_model_share_one_call_and_get_their_own_rows(pool):
    model, observed = Model(), []
    batcher = Batcher(model, max_size=16, observe=lambda n, waits: observed.append((n, waits)))
    first = busy(pool, batcher, model)
    requests = [images(n, 10 * i) for i, n in enumerate([1, 3, 2, 1, 1])]
    waiting = queue(pool, batcher, *requests)
    model.release()

    assert_all_own_rows([first, *waiting], [images(1, 1000), *requests])
    assert model.batches == [1, 8]  # six requests, two model calls
    assert model.threads[1] == "batcher"  # the first ran in its own thread, the rest queued
    assert [(n, len(waits)) for n, waits in observed] == [(1, 1), (8, 5)]
    assert all(wait >= 0 for _, waits in observed for wait in waits)


def test_a_lone_request_runs_at_once_in_its_own_thread_when_max_wait_is_zero(pool):
    model = Model()
    batcher = Batcher(model, max_size=16, max_wait_s=0)
    # Were it to wait for max_size images, the result would never come.
    assert_own_rows(pool.submit(batcher.predict, images(2, 5)), images(2, 5))
    answer = batcher.predict(images(1, 9))
    np.testing.assert_array_equal(answer.doubled, images(1, 9) * 2)
    assert model.batches == [2, 1]
    assert model.threads[1] == threading.current_thread().name  # no handoff to the runner


def test_a_batch_waits_up_to_max_wait_for_more_requests_or_until_it_is_full(pool):
    model = Model()
    gathering = Batcher(model, max_size=4, max_wait_s=3600)
    requests = [images(1, 10 * i) for i in range(4)]
    futures = [pool.submit(gathering.predict, pixels) for pixels in requests]
    for future, pixels in zip(futures, requests, strict=True):
        assert_own_rows(future, pixels)
    assert model.batches == [4]  # held an hour for the fourth; it came, and the batch ran

    lone = Batcher(model, max_size=4, max_wait_s=0.05)
    assert_own_rows(pool.submit(lone.predict, images(1, 7)), images(1, 7))
    assert model.batches == [4, 1]  # no other came within the wait: it ran alone


def test_batches_hold_at_most_max_size_images_and_a_larger_request_runs_alone(pool):
    model = Model()
    batcher = Batcher(model, max_size=4)
    first = busy(pool, batcher, model)
    requests = [images(n, 10 * i) for i, n in enumerate([3, 2, 6, 1, 2])]
    waiting = queue(pool, batcher, *requests)
    model.release()

    assert_all_own_rows([first, *waiting], [images(1, 1000), *requests])
    # In arrival order, never more than 4 together: 3 (3 + 2 > 4), 2 (2 + 6), 6 alone, 1 + 2.
    assert model.batches == [1, 3, 2, 6, 3]


def test_a_failing_model_call_fails_only_its_batch_and_the_next_request_is_answered(pool):
    model = Model()
    batcher = Batcher(model, max_size=16)
    first = busy(pool, batcher, model)
    poisoned, neighbour = queue(pool, batcher, np.full((1, 2, 2), POISON), images(2, 1))
    model.release()

    assert_own_rows(first, images(1, 1000))
    for future in (poisoned, neighbour):  # the neighbour shared the failing call
        with pytest.raises(BatchFailed, match="poisoned pixels") as failed:
            future.result(WAIT_S)
        assert isinstance(failed.value.__cause__, ValueError)
    assert_own_rows(pool.submit(batcher.predict, images(3, 7)), images(3, 7))
    assert model.batches == [1, 3, 3]


def test_a_lone_request_whose_call_fails_gets_the_error_and_the_model_is_free_again():
    model = Model()
    batcher = Batcher(model, max_size=16)
    with pytest.raises(BatchFailed, match="poisoned pixels"):
        batcher.predict(np.full((1, 2, 2), POISON))
    answer = batcher.predict(images(1, 3))
    np.testing.assert_array_equal(answer.doubled, images(1, 3) * 2)
    assert model.threads == [threading.current_thread().name] * 2  # both ran here, alone
