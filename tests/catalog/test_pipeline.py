"""Large imports write in a second process: same catalog, same reports as one process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from policyd.catalog import pipeline
from tests.catalog.helpers import (
    SMITH,
    catalog_files,
    catalog_replicas,
    cli,
    file_record,
    write_jsonl,
)


def mixed_records() -> list[dict]:
    later = {**SMITH, "name": "Later-Apr18", "station": "1ID"}
    records: list[dict] = [SMITH]
    for i in range(12000):
        replicas = [{"location": "voyager", "path": f"v/{i}", "verified": i % 2 == 0}]
        records.append(file_record(f"f{i:05d}.h5", size=i, replicas=replicas))
        if i == 7000:
            records.append(later)
        if i % 3001 == 0:
            records.append(file_record(f"bad{i}", size=-1))
    records += [{**file_record(f"l{i}.tif"), "experimentName": "Later-Apr18"} for i in range(50)]
    return records


@pytest.mark.parametrize("second_process", [False, True], ids=["one-process", "two-processes"])
def test_second_process_imports_exactly_what_one_process_does(
    site_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, second_process: bool
) -> None:
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_BYTES", 0 if second_process else 1 << 62)
    source = write_jsonl(site_dir / "big.jsonl", mixed_records())
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 1
    assert (
        "2 experiments, 12050 files, 12000 replicas imported; 4 bad lines skipped" in result.output
    )
    files = catalog_files(engine)
    assert len(files) == 12050
    assert files[("Smith-Mar18", "f11999.h5")]["size"] == 11999
    assert (
        files[("Later-Apr18", "l49.tif")]["experiment_id"]
        != files[("Smith-Mar18", "f00001.h5")]["experiment_id"]
    )
    replicas = catalog_replicas(engine)
    assert replicas[("Smith-Mar18", "f00002.h5", "voyager")]["state"] == "verified"
    assert replicas[("Smith-Mar18", "f00003.h5", "voyager")]["state"] == "present"


def test_a_database_failure_in_the_second_process_is_reported(
    site_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_BYTES", 0)
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e.jsonl", [SMITH])).exit_code == 0
    )
    source = write_jsonl(
        site_dir / "f.jsonl", [file_record("a.h5", replicas=[{"location": "tape", "path": "a.h5"}])]
    )
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE replicas RENAME TO replicas_away"))
    try:
        result = cli("catalog", "import", "jsonl", source)
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE replicas_away RENAME TO replicas"))
    assert result.exit_code == 1
    assert "error: the catalog writer failed:" in result.output
    assert "replicas" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("second_process", [False, True], ids=["one-process", "two-processes"])
def test_a_record_the_database_refuses_costs_only_its_own_line(
    site_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, second_process: bool
) -> None:
    """PostgreSQL cannot index a path of ~3 KB (SQLite can): the batch is retried a
    record at a time, the refused one is reported by line, its neighbours are kept."""
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_BYTES", 0 if second_process else 1 << 62)
    noise = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(60))
    long_path = "/".join(noise[i : i + 250] for i in range(0, 3000, 250)) + "/f.h5"
    records = [SMITH, file_record("before.h5"), file_record(long_path), file_record("after.h5")]
    result = cli("catalog", "import", "jsonl", write_jsonl(site_dir / "l.jsonl", records))
    names = {path for _, path in catalog_files(engine)}
    if engine.dialect.name == "postgresql":
        assert result.exit_code == 1
        assert ":3: error: the catalog database refused the record: index row" in result.output
        assert "1 experiment, 2 files, 0 replicas imported; 1 bad line skipped" in result.output
        assert names == {"before.h5", "after.h5"}
    else:
        assert result.exit_code == 0, result.output
        assert names == {"before.h5", "after.h5", long_path}
