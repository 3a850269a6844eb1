"""Reading the next batches while the planner decides on this one.

A plan is two kinds of work in turn: the database finding candidate files (SQLite's
scan, or the wait for PostgreSQL's), and Python deciding what each file needs. Done
one after the other on a two-core machine, one core idles through each. A producer
thread reads batches into a short queue (both drivers release the GIL while the
database works) and the planner takes them in order, so the plan costs about the
longer of the two instead of their sum. The queue holds at most `depth` batches: the
memory bound of streaming stays.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class _Channel(Generic[T]):
    def __init__(self, depth: int) -> None:
        self.items: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()

    def put(self, item: object) -> bool:
        """Hand an item over; False once the consumer has stopped (the producer ends)."""
        while not self.stopped.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def prefetched(produce: Callable[[Callable[[T], bool]], None], depth: int = 2) -> Iterator[T]:
    """The items `produce(put)` hands to `put`, in order, read ahead in a thread. An
    error in the producer is raised here; leaving the loop early stops the producer
    at its next item."""
    channel: _Channel[T] = _Channel(depth)

    def run() -> None:
        try:
            produce(channel.put)
            channel.put(_DONE)
        except BaseException as exc:
            channel.put(_Failed(exc))

    thread = threading.Thread(target=run, name="policyd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = channel.items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        channel.stopped.set()
        thread.join()
