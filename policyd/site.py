"""Opening a site for a command: its config, and its catalog upgraded and in sync.

Commands that need the catalog call `open_site`; it is the one place that decides
which config and which catalog a command works on (spec/cli.md: `-c`, then
POLICYD_CONFIG, then ./policyd.yaml; POLICYD_CATALOG over the config's catalog).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from policyd.catalog.db import open_catalog
from policyd.catalog.site import sync_site
from policyd.diagnostics import Diagnostic, DiagnosticError, Span
from policyd.stations.config import SiteConfig, find_config, load_site_config


@dataclass
class Site:
    config: SiteConfig
    from_env: bool = True  # False for a site that must use its own catalog (demo, init)

    @property
    def catalog_url(self) -> str:
        return self.config.catalog_url(self.from_env)

    @cached_property
    def engine(self) -> Engine:
        """The catalog for commands that write: created if missing, and in sync with
        the config's locations and stations."""
        engine = open_catalog(self.catalog_url)
        sync_site(engine, self.config)
        return engine

    @cached_property
    def reader(self) -> Engine:
        """The catalog for commands that only read: it must exist, and is not synced."""
        if "engine" in self.__dict__:
            return self.engine
        return open_catalog(self.catalog_url, create=False)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.config.timezone)

    @property
    def location_names(self) -> frozenset[str]:
        return frozenset(self.config.locations)


def load_config(explicit: str | Path | None) -> SiteConfig:
    path = find_config(explicit)
    if path is None:
        catalog = os.environ.get("POLICYD_CATALOG")
        if catalog:
            return SiteConfig.empty(catalog)
        raise DiagnosticError(
            [
                Diagnostic(
                    "no-config",
                    "no site config: none given with -c, POLICYD_CONFIG is not set "
                    "and there is no ./policyd.yaml",
                    Span(str(Path.cwd() / "policyd.yaml")),
                    hint="run `policyd init DIR` to write a starter config, or pass -c PATH",
                )
            ]
        )
    if not path.exists():
        given_by = "-c" if explicit else "POLICYD_CONFIG"
        raise DiagnosticError(
            [
                Diagnostic(
                    "no-config",
                    f"no site config at {path} (given by {given_by})",
                    Span(str(path)),
                    hint="check the path, or run `policyd init DIR` to write a starter config",
                )
            ]
        )
    return load_site_config(path)


def open_site(explicit: str | Path | None, from_env: bool = True) -> Site:
    return Site(load_config(explicit), from_env)
