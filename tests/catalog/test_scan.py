"""`catalog import scan` on real folders: new files, refreshes, missing replicas, symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, update

from policyd.catalog.schema import replicas
from tests.catalog.helpers import (
    SMITH,
    catalog_files,
    catalog_replicas,
    cli,
    file_record,
    write_jsonl,
)


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_records_new_files_refreshes_and_marks_missing(site_dir: Path, engine: Engine) -> None:
    voyager = site_dir / "storage" / "voyager"
    verified_path = "8IDI/Smith-Mar18/pix/known.tif"
    records = [
        SMITH,
        file_record(
            "pix/known.tif",
            size=5,
            replicas=[{"location": "voyager", "path": verified_path, "verified": True}],
        ),
        file_record(
            "pix/gone.tif",
            replicas=[
                {"location": "voyager", "path": "8IDI/Smith-Mar18/pix/gone.tif", "verified": True}
            ],
        ),
        file_record(
            "pix/changed.tif",
            size=3,
            replicas=[
                {
                    "location": "voyager",
                    "path": "8IDI/Smith-Mar18/pix/changed.tif",
                    "verified": True,
                }
            ],
        ),
    ]
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records)).exit_code == 0
    )
    put(voyager, verified_path, b"12345")
    put(voyager, "8IDI/Smith-Mar18/pix/changed.tif", b"123456789")
    put(voyager, "8IDI/Smith-Mar18/scan1/new.h5", b"abc")
    put(voyager, "stray/file.dat", b"?")
    os.symlink("/etc/passwd", voyager / "8IDI" / "Smith-Mar18" / "link.dat")
    os.symlink("/etc", voyager / "8IDI" / "Smith-Mar18" / "etc")

    result = cli("catalog", "import", "scan", "voyager")
    assert result.exit_code == 0, result.output
    assert (
        "scan voyager: 4 files seen, 2 replicas refreshed, 1 new replicas (1 new files), "
        "1 marked missing, 1 not matched to an experiment, 2 symlinks skipped"
    ) in result.output
    assert "stray/file.dat: not under an experiment's layout path" in result.output

    reps = catalog_replicas(engine)
    assert reps[("Smith-Mar18", "pix/known.tif", "voyager")]["state"] == "verified"  # same size
    assert reps[("Smith-Mar18", "pix/changed.tif", "voyager")]["state"] == "present"  # size differs
    assert reps[("Smith-Mar18", "pix/gone.tif", "voyager")]["state"] == "missing"
    new = reps[("Smith-Mar18", "scan1/new.h5", "voyager")]
    assert (new["state"], new["size"], new["path"]) == (
        "present",
        3,
        "8IDI/Smith-Mar18/scan1/new.h5",
    )
    files = catalog_files(engine)
    assert files[("Smith-Mar18", "scan1/new.h5")]["md5"] is None
    assert files[("Smith-Mar18", "scan1/new.h5")]["size"] == 3
    assert not any("passwd" in p or "etc" in p for _, p in files)

    # A second scan finds everything as it was: nothing new, nothing further missing.
    again = cli("catalog", "import", "scan", "voyager", "--format", "json")
    assert '"new_files": 0' in again.output and '"missing": 0' in again.output
    assert (
        catalog_replicas(engine)[("Smith-Mar18", "pix/gone.tif", "voyager")]["state"] == "missing"
    )


def test_missing_replica_that_reappears_is_present_again(site_dir: Path, engine: Engine) -> None:
    tape = site_dir / "storage" / "tape"
    path = "8IDI/Smith-Mar18/a.h5"
    records = [
        SMITH,
        file_record(
            "a.h5", size=2, replicas=[{"location": "tape", "path": path, "verified": True}]
        ),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    cli("catalog", "import", "scan", "tape", "--allow-empty")
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "tape")]["state"] == "missing"
    put(tape, path, b"ab")
    cli("catalog", "import", "scan", "tape")
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "tape")]["state"] == "present"


def test_scan_with_experiment_and_prefix_and_under(site_dir: Path, engine: Engine) -> None:
    daq = site_dir / "storage" / "daq-8idi"
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", [SMITH]))
    put(daq, "data/smith/a/1.tif", b"1")
    put(daq, "data/smith/a/2.tif", b"22")
    put(daq, "other/x.tif", b"x")
    result = cli(
        "catalog",
        "import",
        "scan",
        "daq-8idi",
        "--experiment",
        "Smith-Mar18",
        "--path-prefix",
        "data/smith",
        "--under",
        "data",
    )
    assert result.exit_code == 0, result.output
    assert set(catalog_files(engine)) == {("Smith-Mar18", "a/1.tif"), ("Smith-Mar18", "a/2.tif")}
    assert (
        catalog_replicas(engine)[("Smith-Mar18", "a/2.tif", "daq-8idi")]["path"]
        == "data/smith/a/2.tif"
    )


def test_scan_marks_missing_only_under_the_scanned_folder(site_dir: Path, engine: Engine) -> None:
    records = [
        SMITH,
        file_record("a.h5", replicas=[{"location": "voyager", "path": "8IDI/Smith-Mar18/a.h5"}]),
        file_record("b.h5", replicas=[{"location": "voyager", "path": "elsewhere/b.h5"}]),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    (site_dir / "storage" / "voyager" / "8IDI").mkdir()
    cli("catalog", "import", "scan", "voyager", "--under", "8IDI", "--allow-empty")
    reps = catalog_replicas(engine)
    assert reps[("Smith-Mar18", "a.h5", "voyager")]["state"] == "missing"
    assert reps[("Smith-Mar18", "b.h5", "voyager")]["state"] == "present"


def test_scan_through_pyfilesystem_url(site_dir: Path, engine: Engine) -> None:
    """A non-file:// location goes through pyfilesystem2 (here its OS filesystem opener)."""
    root = site_dir / "storage" / "fsroot"
    put(root, "8IDI/Smith-Mar18/z/1.h5", b"hello")
    config = site_dir / "policyd.yaml"
    config.write_text(config.read_text() + f'  fsloc: {{url: "osfs://{root}", tier: disk}}\n')
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", [SMITH]))
    result = cli("catalog", "import", "scan", "fsloc")
    assert result.exit_code == 0, result.output
    rep = catalog_replicas(engine)[("Smith-Mar18", "z/1.h5", "fsloc")]
    assert (rep["state"], rep["size"]) == ("present", 5)


def test_scan_of_unknown_location(site_dir: Path, engine: Engine) -> None:
    result = cli("catalog", "import", "scan", "moon")
    assert result.exit_code == 1
    assert "scan: 'moon' is not a location of the site config" in result.output


def test_verified_replica_with_unchanged_file_survives_scan(site_dir: Path, engine: Engine) -> None:
    voyager = site_dir / "storage" / "voyager"
    path = "8IDI/Smith-Mar18/k.tif"
    records = [
        SMITH,
        file_record(
            "k.tif", size=4, replicas=[{"location": "voyager", "path": path, "verified": True}]
        ),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    put(voyager, path, b"abcd")
    cli("catalog", "import", "scan", "voyager")
    cli("catalog", "import", "scan", "voyager")
    assert catalog_replicas(engine)[("Smith-Mar18", "k.tif", "voyager")]["state"] == "verified"
    with engine.begin() as conn:
        conn.execute(update(replicas).values(mtime=1.0))
    cli("catalog", "import", "scan", "voyager")
    assert catalog_replicas(engine)[("Smith-Mar18", "k.tif", "voyager")]["state"] == "present"


def test_a_missing_or_unmounted_root_is_an_error_that_changes_nothing(
    site_dir: Path, engine: Engine
) -> None:
    records = [
        SMITH,
        file_record("a.h5", replicas=[{"location": "daq-8idi", "path": "8IDI/Smith-Mar18/a.h5"}]),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    (site_dir / "storage" / "daq-8idi").rename(site_dir / "storage" / "unmounted")
    result = cli("catalog", "import", "scan", "daq-8idi")
    assert result.exit_code == 1
    assert "is not a folder; is the storage mounted? (nothing was changed)" in result.output
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "daq-8idi")]["state"] == "present"
    (site_dir / "storage" / "unmounted").rename(site_dir / "storage" / "daq-8idi")
    typo = cli("catalog", "import", "scan", "daq-8idi", "--under", "8IDX")
    assert typo.exit_code == 1 and "8IDX is not a folder" in typo.output
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "daq-8idi")]["state"] == "present"


def test_under_and_path_prefix_cannot_leave_the_location(site_dir: Path, engine: Engine) -> None:
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", [SMITH]))
    outside = cli(
        "catalog", "import", "scan", "daq-8idi", "--under", "../..", "--experiment", "Smith-Mar18"
    )
    assert outside.exit_code == 1
    assert "--under '../..' must not contain '.', '..' or '//'" in outside.output
    absolute = cli(
        "catalog",
        "import",
        "scan",
        "daq-8idi",
        "--experiment",
        "Smith-Mar18",
        "--path-prefix",
        "/etc",
    )
    assert absolute.exit_code == 1
    assert "--path-prefix '/etc' must be relative to the location's root" in absolute.output
    assert catalog_files(engine) == {}


def test_names_that_are_not_utf8_are_skipped_with_a_warning(site_dir: Path, engine: Engine) -> None:
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", [SMITH]))
    folder = site_dir / "storage" / "voyager" / "8IDI" / "Smith-Mar18"
    folder.mkdir(parents=True)
    (folder / "ok.tif").write_bytes(b"1")
    with open(os.path.join(os.fsencode(folder), b"lat\xe9n.tif"), "wb") as fh:
        fh.write(b"2")
    result = cli("catalog", "import", "scan", "voyager")
    assert result.exit_code == 0, result.output
    assert "the name is not valid UTF-8; skipped" in result.output
    assert set(catalog_files(engine)) == {("Smith-Mar18", "ok.tif")}


def test_an_empty_mount_point_is_not_taken_for_an_empty_location(
    site_dir: Path, engine: Engine
) -> None:
    records = [
        SMITH,
        file_record("a.h5", replicas=[{"location": "tape", "path": "8IDI/Smith-Mar18/a.h5"}]),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    result = cli("catalog", "import", "scan", "tape")  # the folder exists, but holds nothing
    assert result.exit_code == 1
    assert (
        "found no files where the catalog has 1 replicas; is the storage mounted?" in result.output
    )
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "tape")]["state"] == "present"
    accepted = cli("catalog", "import", "scan", "tape", "--allow-empty")
    assert accepted.exit_code == 0, accepted.output
    assert catalog_replicas(engine)[("Smith-Mar18", "a.h5", "tape")]["state"] == "missing"


def test_under_compares_case_exactly(site_dir: Path, engine: Engine) -> None:
    records = [
        SMITH,
        file_record("x.h5", replicas=[{"location": "voyager", "path": "E1/Data/x.h5"}]),
        file_record("y.h5", replicas=[{"location": "voyager", "path": "E1/data/y.h5"}]),
    ]
    cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records))
    put(site_dir / "storage" / "voyager", "E1/data/y.h5", b"y")
    put(site_dir / "storage" / "voyager", "E1/Data/x.h5", b"x")
    assert cli("catalog", "import", "scan", "voyager", "--under", "E1/data").exit_code == 0
    reps = catalog_replicas(engine)
    assert reps[("Smith-Mar18", "x.h5", "voyager")]["state"] == "present"
    assert reps[("Smith-Mar18", "y.h5", "voyager")]["state"] == "present"
