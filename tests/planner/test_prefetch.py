"""The planner's read-ahead: items in order, a producer's error raised to the consumer,
and a consumer that leaves early stopping the producer (no thread left behind)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from policyd.planner.prefetch import prefetched


def test_items_arrive_in_order() -> None:
    def produce(put: Callable[[int], bool]) -> None:
        for i in range(100):
            put(i)

    assert list(prefetched(produce)) == list(range(100))


def test_a_producer_error_is_raised_where_the_items_are_taken() -> None:
    def produce(put: Callable[[int], bool]) -> None:
        put(1)
        raise LookupError("the catalog went away")

    taken = []
    with pytest.raises(LookupError, match="went away"):
        for item in prefetched(produce):
            taken.append(item)
    assert taken == [1]


def test_leaving_early_stops_the_producer_within_the_queue_depth() -> None:
    produced = []
    finished = threading.Event()

    def produce(put: Callable[[int], bool]) -> None:
        try:
            for i in range(10_000):
                if not put(i):
                    return
                produced.append(i)
        finally:
            finished.set()

    for item in prefetched(produce, depth=2):
        if item == 3:
            break
    assert finished.is_set()  # the generator's close joined the producer
    assert len(produced) <= 3 + 2 + 1  # what was taken, the queue, the one in hand
    assert not [t for t in threading.enumerate() if t.name == "policyd-prefetch"]
