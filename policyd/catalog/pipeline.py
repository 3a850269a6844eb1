"""Writing an import's batches in a second process while the first one parses.

Parsing and validating a line costs about as much CPU as the database spends storing
it, so on a machine with two cores an import runs twice as fast when the two halves
overlap. Threads cannot do it (the GIL); a forked process can, and prepared batches
are plain tuples, which pickle cheaply. Small imports stay in one process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from policyd.catalog.db import create_catalog_engine
from policyd.catalog.writer import Failure, FileBatch, FileStore

PARALLEL_MIN_BYTES = 8 << 20
QUEUE_DEPTH = 4
POLL_SECONDS = 0.5


class StoreFailed(RuntimeError):
    """The writing process stopped on an error; its message says which."""


def _serve(url: str, jobs: mp.Queue[Any], results: mp.Queue[Any]) -> None:
    try:
        engine = create_catalog_engine(url)
        store = FileStore(engine, lambda failures: results.put(("refused", failures)))
        while True:
            job = jobs.get()
            if job is None:
                results.put(("done", None))
                return
            if job == "drain":
                results.put(("drained", None))
                continue
            store.store(job)
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


class StoreProcess:
    """Runs FileStore.store in a forked process; `drain` waits until it has caught up."""

    def __init__(
        self, engine: Engine, on_failures: Callable[[list[Failure]], None] | None = None
    ) -> None:
        self.on_failures = on_failures
        ctx = mp.get_context("fork")
        self.jobs: mp.Queue[Any] = ctx.Queue(maxsize=QUEUE_DEPTH)
        self.results: mp.Queue[Any] = ctx.Queue()
        url = engine.url.render_as_string(hide_password=False)
        self.process = ctx.Process(target=_serve, args=(url, self.jobs, self.results), daemon=True)
        self.process.start()

    def _send(self, job: object) -> None:
        while True:
            self._raise_if_failed()
            try:
                self.jobs.put(job, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        """Passes on refused records, and raises if the writer stopped."""
        while True:
            try:
                kind, message = self.results.get_nowait()
            except queue.Empty:
                if not self.process.is_alive():
                    raise StoreFailed("the catalog writer process died") from None
                return
            self._handle(kind, message)

    def _handle(self, kind: str, message: Any) -> None:
        if kind == "refused":
            if self.on_failures is not None:
                self.on_failures(message)
        elif kind == "error":
            raise StoreFailed(message)
        else:
            raise StoreFailed(f"unexpected message from the catalog writer: {kind}")

    def _await(self, expected: str) -> None:
        while True:
            try:
                kind, message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.process.is_alive():
                    raise StoreFailed("the catalog writer process died") from None
                continue
            if kind == expected:
                return
            self._handle(kind, message)

    def store(self, batch: FileBatch) -> None:
        self._send(batch)

    def drain(self) -> None:
        self._send("drain")
        self._await("drained")

    def close(self) -> None:
        self._send(None)
        self._await("done")
        self.process.join()

    def abort(self) -> None:
        """Stop the writer now (an error, or Ctrl-C): what it committed stays."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        # Batches still queued are dropped, not flushed to a dead reader at exit.
        self.jobs.cancel_join_thread()
        self.results.cancel_join_thread()


def worth_a_second_process(source: str) -> bool:
    if source == "-" or "fork" not in mp.get_all_start_methods() or (os.cpu_count() or 1) < 2:
        return False
    try:
        return os.path.getsize(source) >= PARALLEL_MIN_BYTES
    except OSError:
        return False
