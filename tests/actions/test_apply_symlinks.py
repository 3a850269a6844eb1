"""Symbolic links inside a location that point outside it (spec/rules.md section 9,
invariant 4): a copy whose target folder or target file is such a link, a copy whose
source folder is one, and a delete through one are refused, and nothing outside the
location's root is written, read into the catalog, or removed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.actions.sitekit import (
    NEW,
    OLD,
    Site,
    SiteFile,
    catalog_replicas,
    ledger_events,
    make_site,
    temp_leftovers,
)

PLACE_ONLY = """\
rule layout
  place files where file.ext == "h5"
  on disk
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = make_site(
        tmp_path / "site", f"sqlite:///{tmp_path / 'site' / 'catalog.db'}", rules=PLACE_ONLY
    )
    yield site
    site.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every location, with a file in it that must stay as it is."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.h5").write_bytes(b"not policyd's to touch")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def refusals(site: Site) -> dict[str, str]:
    """action id -> the reason of its `refused` event."""
    return {
        e["action_id"]: orjson.loads(e["record"])["payload"]["error"]
        for e in ledger_events(site.engine(), "refused")
    }


@pytest.mark.parametrize("link", ["8IDI", "8IDI/2026-11", "8IDI/2026-11/New-Nov26/scan1"])
def test_copy_into_a_linked_target_folder_is_refused(site: Site, outside: Path, link: str) -> None:
    linked = site.storage("disk") / link
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(outside, target_is_directory=True)
    (f,) = site.write([SiteFile(NEW, "scan1/a.h5", b"frame" * 300)])
    before = snapshot(outside)

    result = site.apply(site.plan())
    assert result.exit_code == 1
    assert "1 refused" in result.output
    assert refusals(site) == {
        "a1": f"{linked} is a symbolic link; policyd does not follow links",
    }
    assert snapshot(outside) == before
    assert not any(p.name.startswith(".") for p in outside.rglob("*"))
    assert {k[2] for k in catalog_replicas(site.engine())} == {"daq"}
    assert (site.storage("daq") / f.daq_path).read_bytes() == f.data
    assert temp_leftovers(site) == []


def test_copy_onto_a_linked_target_file_is_refused(site: Site, outside: Path) -> None:
    (f,) = site.write([SiteFile(NEW, "scan1/precious.h5", b"new frame" * 50)])
    target = site.storage("disk") / f.layout_path
    target.parent.mkdir(parents=True)
    target.symlink_to(outside / "precious.h5")
    before = snapshot(outside)

    result = site.apply(site.plan())
    assert result.exit_code == 1
    assert refusals(site) == {"a1": f"{target} is a symbolic link; policyd does not follow links"}
    assert snapshot(outside) == before
    assert target.is_symlink()
    assert temp_leftovers(site) == []


def test_copy_from_a_linked_source_folder_is_refused(site: Site, outside: Path) -> None:
    """The DAQ's experiment folder is a link to a folder outside the location that
    holds a file under the cataloged name: policyd does not read it."""
    (f,) = site.write([SiteFile(NEW, "precious.h5", b"x" * 22)])
    daq_folder = site.storage("daq") / NEW.name
    (daq_folder / "precious.h5").unlink()
    daq_folder.rmdir()
    daq_folder.symlink_to(outside, target_is_directory=True)

    result = site.apply(site.plan())
    assert result.exit_code == 1
    assert refusals(site) == {
        "a1": f"{daq_folder} is a symbolic link; policyd does not follow links"
    }
    assert not (site.storage("disk") / f.layout_path).exists()
    assert {k[2] for k in catalog_replicas(site.engine())} == {"daq"}


def test_delete_through_a_linked_folder_is_refused(site: Site, outside: Path) -> None:
    """A release of the DAQ copy, safe by every count (a verified copy on tape), whose
    DAQ folder was replaced by a link to a folder outside: nothing is removed there."""
    (site.root / "rules" / "site.policy").write_text(
        "rule archive-old\n  archive files where age(experiment.end) > 90 days\n"
        "  to tape\n  then release from daq\n"
    )
    (f,) = site.write([SiteFile(OLD, "precious.h5", b"not policyd's to touch", also_on=("tape",))])
    daq_folder = site.storage("daq") / OLD.name
    (daq_folder / "precious.h5").unlink()
    daq_folder.rmdir()
    daq_folder.symlink_to(outside, target_is_directory=True)
    plan = site.plan()
    assert [a["kind"] for a in orjson.loads(plan.read_bytes())["actions"]] == ["delete"]
    before = snapshot(outside)

    result = site.apply(plan)
    assert result.exit_code == 1
    assert refusals(site) == {
        "a1": f"{daq_folder} is a symbolic link; policyd does not follow links"
    }
    assert snapshot(outside) == before
    assert (OLD.name, f.path, "daq") in catalog_replicas(site.engine())
