"""Encodings and shapes of import files that real sites produce."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from sqlalchemy import Engine

from tests.catalog.helpers import (
    SMITH,
    catalog_files,
    catalog_replicas,
    cli,
    file_record,
    write_jsonl,
)

LISTING = ("--experiment", "Smith-Mar18", "--location", "daq-8idi")


def smith(site_dir: Path) -> None:
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e.jsonl", [SMITH])).exit_code == 0
    )


def test_listing_lines_that_are_not_utf8_or_repeat_a_key_are_bad(
    site_dir: Path, engine: Engine
) -> None:
    smith(site_dir)
    listing = site_dir / "l.txt"
    listing.write_bytes(
        b"experimentFilePath=ok.tif fileSize=1\r\n"
        b"experimentFilePath=lat\xe9n.tif fileSize=2\r\n"
        b"experimentFilePath=twice.tif fileSize=3 fileSize=4\r\n"
        b"experimentFilePath=digits.tif fileSize=\xd9\xa1\xd9\xa2\r\n"
    )
    result = cli("catalog", "import", "dm-listing", listing, *LISTING)
    assert result.exit_code == 1
    assert f"{listing}:2: error: the line is not valid UTF-8" in result.output
    assert f"{listing}:3: error: fileSize is given twice" in result.output
    assert (
        f"{listing}:4: error: fileSize must be a whole number of bytes, not '١٢'" in result.output
    )
    assert set(catalog_files(engine)) == {("Smith-Mar18", "ok.tif")}


def test_csv_with_bom_crlf_replicas_cell_and_bad_bytes(site_dir: Path, engine: Engine) -> None:
    smith(site_dir)
    replicas = json.dumps([{"location": "tape", "path": "t/a.tif"}]).replace('"', '""')
    source = site_dir / "f.csv"
    source.write_bytes(
        "\ufeffexperimentName,experimentFilePath,fileSize,replicas\r\n".encode()
        + f'Smith-Mar18,a.tif,5,"{replicas}"\r\n'.encode()
        + b"Smith-Mar18,b\xff.tif,6,\r\n"
        + b'Smith-Mar18,c.tif,7,"not json"\r\n'
    )
    result = cli("catalog", "import", "csv", source)
    assert result.exit_code == 1
    assert f"{source}:3: error: the line is not valid UTF-8" in result.output
    assert (
        f"{source}:4: error: replicas must be a JSON list of {{location, path, verified}}"
        in result.output
    )
    assert catalog_replicas(engine)[("Smith-Mar18", "a.tif", "tape")]["path"] == "t/a.tif"


def test_empty_csv_and_oversized_field(site_dir: Path, engine: Engine) -> None:
    empty = site_dir / "empty.csv"
    empty.write_text("")
    result = cli("catalog", "import", "csv", empty)
    assert result.exit_code == 1
    assert f"{empty}:1: error: the file is empty: expected a header row of DM keys" in result.output
    smith(site_dir)
    big = site_dir / "big.csv"
    big.write_text(
        "experimentName,experimentFilePath,fileSize,note\n"
        f"Smith-Mar18,a.tif,1,{'x' * 200_000}\n"
        "Smith-Mar18,b.tif,2,short\n"
    )
    assert cli("catalog", "import", "csv", big).exit_code == 0
    assert catalog_files(engine)[("Smith-Mar18", "a.tif")]["meta"] == {"note": "x" * 200_000}


def test_json_file_with_json_lines_and_a_list_with_a_bad_record(
    site_dir: Path, engine: Engine
) -> None:
    lines = site_dir / "lines.json"
    write_jsonl(lines, [SMITH, file_record("a.tif")])
    assert cli("catalog", "import", "jsonl", lines).exit_code == 0
    listed = site_dir / "list.json"
    listed.write_text(json.dumps([file_record("b.tif"), file_record("c.tif", size=-1)], indent=2))
    result = cli("catalog", "import", "jsonl", listed)
    assert result.exit_code == 1
    assert (
        f"{listed}: error: record 2 of the list: fileSize must not be negative, got -1"
        in result.output
    )
    assert set(catalog_files(engine)) == {("Smith-Mar18", "a.tif"), ("Smith-Mar18", "b.tif")}


def test_jsonl_line_that_is_not_utf8(site_dir: Path, engine: Engine) -> None:
    source = site_dir / "bad.jsonl"
    source.write_bytes(orjson.dumps(SMITH) + b"\n" + b'{"record": "file", "x": "\xff"}\n')
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 1
    assert f"{source}:2: error: the line is not valid UTF-8" in result.output
