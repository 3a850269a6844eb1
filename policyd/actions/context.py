"""What every executor of one apply shares: the site, the stores, the options, the clock.

`apply` and the daemon read the wall clock (spec/rules.md section 4: `now` is the wall
clock there); it is read through `clock` so tests can give their own. The stores are
made on first use, once per location (worker threads ask concurrently), and closed
with the context: an `sftp://` store holds connections open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from policyd.actions.base import ActionFailed
from policyd.actions.catalog_ops import location_ids
from policyd.actions.stores import LocalStore, Store
from policyd.rules import ir
from policyd.rules.model import Protect, Rule
from policyd.rules.pyeval import Evaluator, compile_python
from policyd.stations.config import SiteConfig

if TYPE_CHECKING:
    from policyd.rules.workflows import Workflow


@dataclass
class ApplyOptions:
    parallel: int = 4
    allow_expire: bool = False
    allow_bulk_delete: bool = False
    paranoid: bool = False
    yes: bool = False


@dataclass
class ExecContext:
    config: SiteConfig
    engine: Engine
    plan_id: str
    options: ApplyOptions
    rules: list[Rule] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    started_at: float = 0.0
    verified_by_copy: set[tuple[str, str, str]] = field(default_factory=set)
    # By name; None until a workflow action runs and reads the site's workflow files.
    workflows: dict[str, Workflow] | None = None
    _stores: dict[str, Store] = field(default_factory=dict)
    _stores_lock: threading.Lock = field(default_factory=threading.Lock)
    _location_ids: dict[str, int] = field(default_factory=dict)
    _protect: list[tuple[str, Evaluator]] | None = None

    def now(self) -> float:
        return self.clock()

    def location_ids(self, conn: Connection) -> dict[str, int]:
        """Location name -> catalog id (the site's locations do not change during an apply)."""
        if not self._location_ids:
            self._location_ids.update(location_ids(conn))
        return self._location_ids

    def store(self, location: str) -> Store:
        """The store of a location; an error for kinds this apply cannot reach yet."""
        with self._stores_lock:
            if location not in self._stores:
                self._stores[location] = self._make_store(location)
            return self._stores[location]

    def _make_store(self, location: str) -> Store:
        loc = self.config.locations.get(location)
        if loc is None:
            raise ActionFailed(f"location {location} is not in the site config", retryable=False)
        if loc.root_path is not None:
            return LocalStore(location, loc.root_path)
        if loc.scheme == "sftp":
            # imported here: paramiko and pyfilesystem2 cost every apply a fifth of a
            # second of start-up, and most sites have no sftp:// location
            from policyd.actions.sftp import SftpStore

            return SftpStore(location, loc.url, loc.ssh_key)
        raise ActionFailed(
            f"location {location} ({loc.scheme}://) has no transfer executor on this "
            "machine yet; only file:// and sftp:// locations are served",
            retryable=False,
        )

    def close(self) -> None:
        """Let go of what the stores hold open (connections of sftp:// locations)."""
        with self._stores_lock:
            stores = list(self._stores.values())
        for store in stores:
            store.close()

    def protected_by(self, row: dict[str, Any]) -> str | None:
        """The first `protect` rule matching the file's row, re-evaluated now."""
        if self._protect is None:
            bindings = ir.Bindings(self.now(), self.config.tzinfo)
            self._protect = [
                (rule.name, compile_python(ir.lower(s.where, bindings, rule.station)))
                for rule in self.rules
                if not rule.disabled
                for s in rule.statements
                if isinstance(s, Protect)
            ]
        for name, test in self._protect:
            if test(row):
                return name
        return None
