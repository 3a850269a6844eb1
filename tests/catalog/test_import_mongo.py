"""The Mongo importer on mongomock, plus an opt-in run against a real server (MONGO_URL)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mongomock
import pytest
from sqlalchemy import Engine

from policyd.catalog.mongo import import_mongo
from tests.catalog.helpers import SMITH, catalog_files, catalog_replicas, cli, write_jsonl

TZ = datetime.now(UTC).tzinfo
assert TZ is not None


def fill(db: Any) -> None:
    db["Smith-Mar18"].insert_many(
        [
            {
                "experimentFilePath": f"pix/macimg_{i:06d}.tif",
                "fileSize": 823569 + i,
                "md5Sum": f"{i:032x}",
                "fileModificationTime": 1520937600.5 + i,
                "experimentName": "Smith-Mar18",
                "storageHost": "xraydtn03",
                "acquired": datetime(2018, 3, 2, tzinfo=UTC),
            }
            for i in range(1, 2501)
        ]
    )
    db["Smith-Mar18"].insert_one({"experimentFilePath": "bad.tif", "fileSize": 1.5})
    db["Unknown-Jan99"].insert_one({"experimentFilePath": "x.tif", "fileSize": 1})


def run_import(engine: Engine, client: Any, db_name: str) -> list[Any]:
    return import_mongo(
        engine,
        f"mongodb://dm/{db_name}",
        tz=TZ,
        locations=frozenset({"daq-8idi", "voyager", "tape"}),
        now=1.0,
        database=db_name,
        location="voyager",
        client=client,
    )


def check_imported(engine: Engine, reports: list[Any]) -> None:
    by_source = {r.source.rsplit("/", 1)[1]: r for r in reports}
    smith = by_source["Smith-Mar18"]
    assert smith.counts["files"] == 2500 and smith.bad_lines == 1
    assert "fileSize must be a whole number of bytes, not 1.5" in smith.problems[0].message
    assert smith.problems[0].span.line == 2501
    unknown = by_source["Unknown-Jan99"]
    assert unknown.bad_lines == 1
    assert "names no experiment in the catalog" in unknown.problems[0].message
    files = catalog_files(engine)
    assert len(files) == 2500
    row = files[("Smith-Mar18", "pix/macimg_000007.tif")]
    assert row["size"] == 823576 and row["md5"] == f"{7:032x}"
    assert row["meta"]["storageHost"] == "xraydtn03"
    assert row["meta"]["acquired"].startswith("2018-03-02T00:00:00")
    assert "_id" not in row["meta"]
    reps = catalog_replicas(engine)
    assert reps[("Smith-Mar18", "pix/macimg_000007.tif", "voyager")]["path"] == (
        "8IDI/Smith-Mar18/pix/macimg_000007.tif"
    )


def test_mongo_catalog_on_mongomock(site_dir: Path, engine: Engine) -> None:
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e.jsonl", [SMITH])).exit_code == 0
    )
    client: Any = mongomock.MongoClient()
    fill(client["dm"])
    check_imported(engine, run_import(engine, client, "dm"))
    again = run_import(engine, client, "dm")
    assert len(catalog_files(engine)) == 2500  # an upsert, not a second copy
    assert again[0].counts["files"] == 2500


@pytest.mark.mongo
def test_mongo_catalog_on_a_real_server(site_dir: Path, engine: Engine) -> None:
    url = os.environ.get("MONGO_URL")
    if not url:
        pytest.skip("set MONGO_URL=mongodb://host:27017 to run against a real MongoDB")
    from pymongo import MongoClient

    client: Any = MongoClient(url, serverSelectionTimeoutMS=5000)
    db_name = f"policyd_test_{uuid.uuid4().hex[:8]}"
    try:
        assert (
            cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e.jsonl", [SMITH])).exit_code
            == 0
        )
        fill(client[db_name])
        check_imported(engine, run_import(engine, client, db_name))
    finally:
        client.drop_database(db_name)
