"""Mirroring the site config's locations and stations into the catalog.

The config is the source of truth; the catalog keeps rows for them so replicas and
usage snapshots can reference a location by key. A location removed from the config
keeps its row (replicas may still point at it) until an administrator deals with it.
"""

from __future__ import annotations

from sqlalchemy import Engine

from policyd.catalog.schema import locations, stations
from policyd.catalog.writer import upsert
from policyd.stations.config import SiteConfig


def sync_site(engine: Engine, site: SiteConfig) -> None:
    with engine.begin() as conn:
        if site.locations:
            conn.execute(
                upsert(conn, locations, ["name"], take=("url", "tier", "site", "capacity")),
                [
                    {
                        "name": name,
                        "url": loc.url,
                        "tier": loc.tier,
                        "site": loc.site,
                        "capacity": loc.capacity,
                    }
                    for name, loc in site.locations.items()
                ],
            )
        if site.stations:
            conn.execute(
                upsert(conn, stations, ["name"], take=("description",)),
                [
                    {"name": name, "description": st.description}
                    for name, st in site.stations.items()
                ],
            )
