"""Copies between local folders: written and checked first, made durable and put in
place later, many at a time (`stores.settle`), and recorded only after that.

The store tests write real files of sizes around the direct-I/O block and chunk
sizes and read back what landed; a folder on ramfs (which takes no O_DIRECT writes)
makes the copy go through the page cache instead. The apply tests run `policyd apply`
in a child process and read the catalog and the storage while it runs: a replica the
catalog records is always at its final path with the file's bytes, and a kill as
soon as the first copy is in place leaves a catalog that a resumed apply completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.actions.stores import (
    DIRECT_ALIGN,
    DIRECT_CHUNK,
    Landed,
    LocalStore,
    Written,
    settle,
    temp_name,
)
from tests.actions.sitekit import (
    OLD,
    Site,
    SiteFile,
    catalog_replicas,
    cli,
    done_events,
    expected_storage,
    fork_apply,
    kill_after,
    ledger_events,
    make_site,
    mounted,
    storage_files,
    temp_leftovers,
    verified_mismatches,
)

SIZES = (
    0,
    1,
    DIRECT_ALIGN - 1,
    DIRECT_ALIGN,
    DIRECT_ALIGN + 1,
    DIRECT_CHUNK - 1,
    DIRECT_CHUNK,
    DIRECT_CHUNK + 1,
    2 * DIRECT_CHUNK + DIRECT_ALIGN + 3,
)
MTIME_NS = 1_767_600_000_123_456_789


def put_source(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o640)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))


def land(source: LocalStore, target: LocalStore, rel: str, data: bytes) -> Landed | Written:
    return target.copy_local(
        source,
        rel,
        rel,
        "p1-a1",
        expected_size=len(data),
        expected_md5=hashlib.md5(data).hexdigest(),
        mtime_ns=MTIME_NS,
        mode=0o100640,
    )


def copy_and_settle(source_root: Path, target_root: Path) -> None:
    """Every size copied, checked in its temporary file, then settled in one batch."""
    target_root.mkdir()
    source, target = LocalStore("daq", source_root), LocalStore("disk", target_root)
    rng = random.Random(7)
    files = {f"sizes/f{size}.bin": rng.randbytes(size) for size in SIZES}
    landed = []
    for rel, data in files.items():
        put_source(source_root, rel, data)
        copied = land(source, target, rel, data)
        assert isinstance(copied, Landed), rel
        assert copied.written == Written(hashlib.md5(data).hexdigest(), len(data))
        # checked but not in place: only the temporary file holds the bytes
        assert not (target_root / rel).exists()
        assert copied.temp.name == temp_name(Path(rel).name, "p1-a1")
        assert copied.temp.read_bytes() == data
        landed.append(copied)

    assert settle(landed) == [None] * len(landed)
    for rel, data in files.items():
        final = target_root / rel
        assert final.read_bytes() == data, rel
        info = final.stat()
        assert (info.st_mode & 0o777, info.st_mtime_ns) == (0o640, MTIME_NS)
    assert [p.name for p in target_root.rglob("*") if ".policyd-tmp" in p.name] == []


def test_copies_land_checked_and_settle_puts_them_in_place(tmp_path: Path) -> None:
    copy_and_settle(tmp_path / "daq", tmp_path / "disk")


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs folder: a file system that refuses O_DIRECT."""
    with mounted("ramfs", tmp_path / "ramfs") as mount:
        yield mount


def test_a_folder_without_direct_io_gets_the_kernel_copy(ramfs: Path) -> None:
    """Source and target on one ramfs: copy_file_range copies, its hasher reads back."""
    copy_and_settle(ramfs / "daq", ramfs / "disk")


def test_between_file_systems_without_direct_io_python_copies(tmp_path: Path, ramfs: Path) -> None:
    copy_and_settle(tmp_path / "daq", ramfs / "disk")


def test_bytes_that_are_not_the_files_are_never_put_in_place(tmp_path: Path) -> None:
    source, target = LocalStore("daq", tmp_path / "daq"), LocalStore("disk", tmp_path / "disk")
    put_source(tmp_path / "daq", "x/a.h5", b"what the disk holds now" * 1000)
    (tmp_path / "disk" / "x").mkdir(parents=True)
    (tmp_path / "disk" / "x" / "a.h5").write_bytes(b"earlier bytes")
    copied = target.copy_local(
        source, "x/a.h5", "x/a.h5", "p1-a1", expected_size=23000, expected_md5="0" * 32
    )
    assert copied == Written(hashlib.md5(b"what the disk holds now" * 1000).hexdigest(), 23000)
    assert (tmp_path / "disk" / "x" / "a.h5").read_bytes() == b"earlier bytes"
    assert sorted(p.name for p in (tmp_path / "disk" / "x").iterdir()) == ["a.h5"]


def test_settle_answers_for_each_copy(tmp_path: Path) -> None:
    """A copy whose temporary file went missing fails alone; the others settle."""
    (tmp_path / "disk").mkdir()
    source, target = LocalStore("daq", tmp_path / "daq"), LocalStore("disk", tmp_path / "disk")
    landed = []
    for i in range(3):
        data = random.Random(i).randbytes(10_000 + i)
        put_source(tmp_path / "daq", f"d/f{i}.h5", data)
        copied = land(source, target, f"d/f{i}.h5", data)
        assert isinstance(copied, Landed)
        landed.append(copied)
    landed[1].temp.unlink()
    errors = settle(landed)
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "f1.h5" in errors[1].message
    assert sorted(p.name for p in (tmp_path / "disk" / "d").iterdir()) == ["f0.h5", "f2.h5"]


def many_files_site(root: Path) -> tuple[Site, Path]:
    """Forty h5 files, small ones and a few over the direct-I/O chunk, placed on disk."""
    site = make_site(root, f"sqlite:///{root / 'catalog.db'}")
    rng = random.Random(11)
    sizes = [rng.randint(1, 300_000) for _ in range(36)] + [DIRECT_CHUNK + 5, 3 * 2**20] * 2
    site.write(
        [SiteFile(OLD, f"scan/f{i:03d}.h5", rng.randbytes(size)) for i, size in enumerate(sizes)]
    )
    return site, site.plan()


def test_a_recorded_replica_is_always_in_place_with_its_bytes(tmp_path: Path) -> None:
    site, plan = many_files_site(tmp_path / "site")
    engine = site.engine()
    child = fork_apply(site, plan)
    looks = 0
    while child.poll() is None:
        looks += 1
        for key, rep in catalog_replicas(engine).items():
            if rep["location"] == "disk":
                path = site.storage("disk") / rep["path"]
                assert hashlib.md5(path.read_bytes()).hexdigest() == rep["md5"], key
        time.sleep(0.002)
    assert child.returncode == 0, (site.root / "apply.log").read_text()
    assert looks > 1
    assert storage_files(site) == expected_storage(site)
    assert temp_leftovers(site) == []
    site.close()


def test_a_kill_once_the_first_copy_is_in_place_then_resume(tmp_path: Path) -> None:
    """Killed as soon as a copy was renamed into place, recorded or not: nothing is
    recorded that is not on storage, and the same plan run again finishes the rest,
    each action done once."""
    site, plan = many_files_site(tmp_path / "site")
    engine = site.engine()
    disk = site.storage("disk")
    child = fork_apply(site, plan)
    while child.poll() is None and not any(
        p.is_file() and ".policyd-tmp" not in p.name for p in disk.rglob("*")
    ):
        time.sleep(0.001)
    kill_after(child, engine, 0)
    assert child.returncode == -9, "the apply finished before it could be killed"
    assert verified_mismatches(site, engine) == {}

    resumed = site.apply(plan)
    assert resumed.exit_code == 0, resumed.output
    assert storage_files(site) == expected_storage(site)
    assert temp_leftovers(site) == []
    assert set(done_events(engine).values()) == {1}
    assert cli("ledger", "verify", "-c", site.config).exit_code == 0
    site.close()


def test_paranoid_settles_each_copy_and_reads_it_back(tmp_path: Path) -> None:
    """--paranoid: a copy is put in place before it is read back, and the verify after
    it reads the file again instead of taking the copy's word."""
    site, plan = many_files_site(tmp_path / "site")
    applied = site.apply(plan, "--paranoid")
    assert applied.exit_code == 0, applied.output
    assert storage_files(site) == expected_storage(site)
    assert temp_leftovers(site) == []
    verifies = [
        json.loads(e["record"])["payload"]
        for e in ledger_events(site.engine(), "done")
        if json.loads(e["record"])["payload"]["kind"] == "verify"
    ]
    planned = json.loads(plan.read_bytes())["actions"]
    assert len(verifies) == sum(a["kind"] == "verify" for a in planned) > 0
    assert all("by_copy" not in v and v["md5"] == v["expected"] for v in verifies)
    site.close()
