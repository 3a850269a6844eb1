"""`policyd init`: a starter config repo that loads as it is, with an empty catalog."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from policyd.catalog.db import open_catalog
from policyd.stations.config import load_site_config

STARTER = files(__package__) / "files"


def _walk(node: Traversable, rel: Path) -> list[tuple[Path, Traversable]]:
    found = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            found.extend(_walk(child, rel / child.name))
        else:
            found.append((rel / child.name, child))
    return found


class StarterExists(FileExistsError):
    """init would overwrite a file the user may have edited."""


def write_starter(directory: Path, force: bool = False) -> list[Path]:
    """Write the starter files, refusing to overwrite any unless `force`; then create the
    catalog the config names, so the repo is usable at once."""
    entries = _walk(STARTER, Path())
    clashes = [directory / rel for rel, _ in entries if (directory / rel).exists()]
    if clashes and not force:
        raise StarterExists(
            f"{len(clashes)} starter files already exist (first: {clashes[0]}); "
            "use --force to overwrite them"
        )
    written = []
    for rel, node in entries:
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(node.read_bytes())
        written.append(target)
    site = load_site_config(directory / "policyd.yaml")
    for location in site.locations.values():
        if location.root_path is not None:
            location.root_path.mkdir(parents=True, exist_ok=True)
    # The repo's own SQLite catalog, whatever POLICYD_CATALOG says: init makes a repo.
    open_catalog(site.catalog_url(from_env=False)).dispose()
    return written
