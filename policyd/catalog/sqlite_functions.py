"""What every SQLite connection to a catalog needs before it reads: a busy timeout and
the REGEXP function rule predicates compile to.

Kept apart from db.py (which loads SQLAlchemy and alembic) so that the planner's reader
process (policyd/planner/sqlite_reader.py) sets up its connection the same way at a
fraction of the start-up cost.
"""

from __future__ import annotations

import re
import sqlite3
from functools import lru_cache

BUSY_TIMEOUT_MS = 30000


def prepare_reader(dbapi_conn: sqlite3.Connection) -> None:
    """Settings and functions for reading: what a plan's queries rely on."""
    dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # SQLAlchemy's REGEXP looks its pattern up in re's cache on every row; the
    # planner's flags call it once per candidate file and rule.
    dbapi_conn.create_function("regexp", 2, _regexp, deterministic=True)


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str | None, value: str | None) -> bool | None:
    if pattern is None or value is None:
        return None
    return _pattern(pattern).search(value) is not None
