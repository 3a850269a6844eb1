"""Pausing Python's cyclic garbage collector while a rule file is read and checked.

Reading a 2,000-rule YAML file allocates about a million objects (the loaded tree,
tokens, AST nodes, spans) that all stay alive until the result is returned. Each
collection the allocations trigger walks them and frees nothing, and the older
generations walk the whole heap again and again: on the bench file (bench/parse.py)
that was a quarter of parse + check. Reference counting still frees everything that
is not in a cycle; the few cycles made in between are collected when the pause ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()
_depth = 0  # pauses in progress, over all threads
_resume = False  # whether the collector was enabled when the first of them began


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off, as it was before afterwards.

    Pauses nest and may overlap across threads: the collector is switched back on
    when the last one ends, and only if it was on when the first began.
    """
    global _depth, _resume
    with _LOCK:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
