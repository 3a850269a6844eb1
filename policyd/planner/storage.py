"""The storage state a plan is made against: bytes used per location and station.

`usage`, `used`, `free`, `time_to_full` and the "most free space" choice of `replicate`
read this, and the planner adds its own copies and takes away its own deletes as it
goes (spec/rules.md section 5), so a threshold release stops at the low mark the plan
itself reaches. Used bytes are the catalog's: the size of every replica that is not
`missing`. Capacity is the config's; a location without one is measured with statvfs
when its folder is mounted, which is the one place a plan reads the machine.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Final

from sqlalchemy import Engine, select

from policyd.catalog.schema import experiments, locations, usage_snapshots
from policyd.catalog.usage import usage_sums
from policyd.stations.config import SiteConfig

GROWTH_WINDOW: Final = 30 * 86400.0


class StorageState:
    def __init__(self, config: SiteConfig, engine: Engine, now: float) -> None:
        self.config = config
        self.now = now
        self.used_bytes: dict[str, int] = defaultdict(int)
        self.station_bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.file_count: dict[str, int] = defaultdict(int)
        self.station_files: dict[tuple[str, str], int] = defaultdict(int)
        self.capacity: dict[str, int | None] = {}
        self.growth: dict[str, float | None] = {}
        self._load(engine)

    def _load(self, engine: Engine) -> None:
        """Bytes and replicas per location and station, from the per-experiment totals
        the catalog keeps (policyd.catalog.usage); the names come from the two small
        tables."""
        with engine.connect() as conn:
            sums = usage_sums(conn)
            # Read after the sums, so every experiment a summed file belongs to is seen.
            names = {i: n for i, n in conn.execute(select(locations.c.id, locations.c.name))}
            stations = {
                i: s for i, s in conn.execute(select(experiments.c.id, experiments.c.station))
            }
            for location_id, experiment_id, used, count in sums:
                location, station = names[location_id], stations[experiment_id]
                self.used_bytes[location] += int(used or 0)
                self.file_count[location] += int(count)
                if station is not None:
                    self.station_bytes[(location, station)] += int(used or 0)
                    self.station_files[(location, station)] += int(count)
            self.growth = self._growth(conn)
        for name, location in self.config.locations.items():
            self.capacity[name] = location.capacity or self._measured(name)

    def _measured(self, name: str) -> int | None:
        root = self.config.locations[name].root_path
        if root is None or not root.is_dir():
            return None
        stat = os.statvfs(root)
        return stat.f_blocks * stat.f_frsize

    def _growth(self, conn: object) -> dict[str, float | None]:
        """Bytes per second per location: the least-squares slope of the last 30 days'
        snapshots (None with fewer than two)."""
        query = (
            select(locations.c.name, usage_snapshots.c.taken_at, usage_snapshots.c.used_bytes)
            .join(locations, locations.c.id == usage_snapshots.c.location_id)
            .where(
                usage_snapshots.c.station.is_(None),
                usage_snapshots.c.taken_at >= self.now - GROWTH_WINDOW,
                usage_snapshots.c.taken_at <= self.now,
            )
            .order_by(locations.c.name, usage_snapshots.c.taken_at)
        )
        points: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for name, taken_at, used in conn.execute(query):  # type: ignore[attr-defined]
            points[name].append((float(taken_at), float(used)))
        return {name: _slope(series) for name, series in points.items()}

    # ---- the plan's own changes

    def add(self, location: str, station: str | None, size: int) -> None:
        self.used_bytes[location] += size
        if station is not None:
            self.station_bytes[(location, station)] += size

    def remove(self, location: str, station: str | None, size: int) -> None:
        self.add(location, station, -size)

    # ---- what the rules language reads

    def used(self, location: str, station: str | None = None) -> int:
        if station is None:
            return self.used_bytes.get(location, 0)
        return self.station_bytes.get((location, station), 0)

    def limit(self, location: str, station: str | None = None) -> int | None:
        if station is not None:
            quota = self.config.quotas.get(location, {}).get(station)
            if quota is not None:
                return quota
        return self.capacity.get(location)

    def usage(self, location: str, station: str | None = None) -> float | None:
        limit = self.limit(location, station)
        if not limit:
            return None
        return self.used(location, station) / limit

    def free(self, location: str) -> int | None:
        capacity = self.capacity.get(location)
        return None if capacity is None else capacity - self.used(location)

    def time_to_full(self, location: str) -> float | None:
        slope = self.growth.get(location)
        free = self.free(location)
        if slope is None or slope <= 0 or free is None:
            return None
        return max(free, 0) / slope

    def value(self, function: str, location: str, station: str | None) -> object:
        """For `ir.Bindings.location_value`."""
        if function == "usage":
            return self.usage(location, station)
        if function == "used":
            return self.used(location, station)
        if function == "free":
            return self.free(location)
        if function == "time_to_full":
            return self.time_to_full(location)
        raise ValueError(f"no location function {function}")


def _slope(series: list[tuple[float, float]]) -> float | None:
    if len(series) < 2:
        return None
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_u = sum(u for _, u in series) / n
    var = sum((t - mean_t) ** 2 for t, _ in series)
    if var == 0:
        return None
    return sum((t - mean_t) * (u - mean_u) for t, u in series) / var
