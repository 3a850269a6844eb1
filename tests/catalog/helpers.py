"""Small helpers for catalog tests: run the CLI in-process and read the catalog back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select

from policyd.catalog.schema import experiments, files, locations, replicas
from policyd.cli import main


def cli(*args: str | Path, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def catalog_files(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(experiments.c.name.label("experiment"), files).join(
                experiments, experiments.c.id == files.c.experiment_id
            )
        ).mappings()
        return {(r["experiment"], r["path"]): dict(r) for r in rows}


def catalog_replicas(engine: Engine) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(experiment, file, location) -> the replica row, with its file's md5."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                experiments.c.name.label("experiment"),
                files.c.path.label("file"),
                files.c.md5.label("md5"),
                locations.c.name.label("location"),
                replicas.c.path,
                replicas.c.state,
                replicas.c.size,
                replicas.c.verified_at,
                replicas.c.checksum,
            )
            .join(files, files.c.id == replicas.c.file_id)
            .join(experiments, experiments.c.id == files.c.experiment_id)
            .join(locations, locations.c.id == replicas.c.location_id)
        ).mappings()
        return {(r["experiment"], r["file"], r["location"]): dict(r) for r in rows}


SMITH = {
    "record": "experiment",
    "name": "Smith-Mar18",
    "station": "8IDI",
    "experimentType": "XPCS",
    "startDate": "2018-03-01T08:00:00Z",
    "endDate": "2018-03-05T20:00:00Z",
    "users": ["asmith", "jgray"],
    "esafId": 204711,
}


def file_record(path: str, size: int = 823569, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "record": "file",
        "experimentName": "Smith-Mar18",
        "experimentFilePath": path,
        "fileSize": size,
        "md5Sum": "9a87108d6d0bb3bdd16d58b8c7cd6855",
        "fileCreationTime": 1520937600.0,
        "fileModificationTime": 1520937600.0,
    }
    record.update(extra)
    return record
