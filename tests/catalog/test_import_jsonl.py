"""jsonl import on SQLite and PostgreSQL: records, upserts, bad lines, DM experiment JSON."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from sqlalchemy import Engine, select

from policyd.catalog.schema import experiments, stations
from tests.catalog.helpers import (
    SMITH,
    catalog_files,
    catalog_replicas,
    cli,
    file_record,
    write_jsonl,
)

DATA = Path(__file__).parent.parent / "data"


def test_imports_experiments_files_replicas_and_metadata(site_dir: Path, engine: Engine) -> None:
    source = write_jsonl(
        site_dir / "cat.jsonl",
        [
            SMITH,
            file_record(
                "pix/macimg_000001.tif",
                replicas=[
                    {
                        "location": "daq-8idi",
                        "path": "8IDI/Smith-Mar18/pix/macimg_000001.tif",
                        "verified": True,
                    },
                    {"location": "voyager", "path": "8IDI/Smith-Mar18/pix/macimg_000001.tif"},
                ],
                sample="colloid-3",
            ),
            file_record("scan1/a.h5", size=14, md5Sum=None),
        ],
    )
    result = cli("catalog", "import", "jsonl", source, "-c", site_dir / "policyd.yaml")
    assert result.exit_code == 0, result.output
    assert "1 experiment, 2 files, 2 replicas imported" in result.output

    found = catalog_files(engine)
    tif = found[("Smith-Mar18", "pix/macimg_000001.tif")]
    assert (tif["size"], tif["md5"], tif["name"], tif["ext"]) == (
        823569,
        "9a87108d6d0bb3bdd16d58b8c7cd6855",
        "macimg_000001.tif",
        "tif",
    )
    assert tif["meta"] == {"sample": "colloid-3"}
    assert tif["modified"] == 1520937600.0
    h5 = found[("Smith-Mar18", "scan1/a.h5")]
    assert h5["md5"] is None and h5["size"] == 14

    reps = catalog_replicas(engine)
    assert reps[("Smith-Mar18", "pix/macimg_000001.tif", "daq-8idi")]["state"] == "verified"
    assert reps[("Smith-Mar18", "pix/macimg_000001.tif", "daq-8idi")]["verified_at"] is not None
    assert reps[("Smith-Mar18", "pix/macimg_000001.tif", "voyager")]["state"] == "present"

    with engine.connect() as conn:
        exp = conn.execute(select(experiments)).mappings().one()
        assert conn.execute(select(stations.c.name)).scalars().all() == ["8IDI"]
    assert exp["station"] == "8IDI" and exp["type"] == "XPCS"
    assert exp["users"] == ["asmith", "jgray"]
    assert exp["meta"] == {"esafId": 204711}
    assert exp["start"] == 1519891200.0  # 2018-03-01T08:00:00Z
    assert exp["end"] == 1520280000.0


def test_importing_twice_keeps_one_copy_and_updates(site_dir: Path, engine: Engine) -> None:
    records = [SMITH] + [file_record(f"pix/f{i:03d}.tif", size=i) for i in range(50)]
    source = write_jsonl(site_dir / "cat.jsonl", records)
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    changed = [SMITH] + [file_record(f"pix/f{i:03d}.tif", size=i + 1000) for i in range(50)]
    write_jsonl(source, changed)
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    found = catalog_files(engine)
    assert len(found) == 50
    assert found[("Smith-Mar18", "pix/f007.tif")]["size"] == 1007


def test_record_without_md5_keeps_the_known_checksum(site_dir: Path, engine: Engine) -> None:
    source = write_jsonl(site_dir / "a.jsonl", [SMITH, file_record("x.tif")])
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    write_jsonl(source, [file_record("x.tif", size=5, md5Sum=None)])
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    row = catalog_files(engine)[("Smith-Mar18", "x.tif")]
    assert (row["size"], row["md5"]) == (5, "9a87108d6d0bb3bdd16d58b8c7cd6855")


def test_bad_lines_are_reported_by_number_and_the_rest_imported(
    site_dir: Path, engine: Engine
) -> None:
    good = [orjson.dumps(SMITH).decode(), orjson.dumps(file_record("ok1.tif")).decode()]
    bad = [
        '{"record": "file", "experimentName": "Smith-Mar18", ',  # 3: broken JSON
        orjson.dumps({k: v for k, v in file_record("b.tif").items() if k != "fileSize"}).decode(),
        orjson.dumps(file_record("c.tif", size=12.5)).decode(),  # 5
        orjson.dumps(file_record("d.tif", size="12")).decode(),  # 6: a text is not a size
        orjson.dumps(file_record("e.tif", md5Sum="05267d7a2184e69aff7bfe3aee6f6638b")).decode(),
        orjson.dumps({**file_record("f.tif"), "experimentName": "Nobody-Jan99"}).decode(),  # 8
        orjson.dumps(
            file_record("g.tif", replicas=[{"location": "moon", "path": "g.tif"}])
        ).decode(),  # 9
        orjson.dumps(file_record("../escape.tif")).decode(),  # 10
        "[1, 2]",  # 11
    ]
    source = site_dir / "mixed.jsonl"
    source.write_text(
        "\n".join([*good, *bad, orjson.dumps(file_record("ok2.tif")).decode()]) + "\n"
    )
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if ": error: " in line]
    src = str(source)
    assert lines == [
        f"{src}:3:53: error: not valid JSON: unexpected end of data",
        f"{src}:4: error: missing key fileSize",
        f"{src}:5: error: fileSize must be a whole number of bytes, not 12.5",
        f"{src}:6: error: fileSize must be a whole number of bytes, not '12'",
        f"{src}:7: error: md5Sum must be 32 hexadecimal digits, got "
        "'05267d7a2184e69aff7bfe3aee6f6638b' (33 characters)",
        f"{src}:8: error: unknown experiment 'Nobody-Jan99'",
        f"{src}:9: error: replicas[0].location 'moon' is not a location of the site config "
        "(known: daq-8idi, tape, voyager)",
        f"{src}:10: error: experimentFilePath '../escape.tif' must be a relative path "
        "without '.', '..' or empty segments",
        f"{src}:11: error: a record must be a JSON object, not list",
    ]
    assert "9 bad lines skipped" in result.output
    assert set(catalog_files(engine)) == {("Smith-Mar18", "ok1.tif"), ("Smith-Mar18", "ok2.tif")}


def test_dm_service_experiment_json_imports_with_its_extra_keys(
    site_dir: Path, engine: Engine
) -> None:
    sample = json.loads((DATA / "dm-service-samples.json").read_text())["experiment"]
    source = site_dir / "experiment.json"
    source.write_text(json.dumps(sample, indent=2))
    result = cli("catalog", "import", "jsonl", source, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["experiments"] == 1
    with engine.connect() as conn:
        exp = conn.execute(select(experiments)).mappings().one()
    assert exp["name"] == "fong-25idc-2026-C1"
    assert exp["station"] == "25IDC"
    assert exp["type"] == "25IDC"
    assert exp["users"][0] == "d64944" and len(exp["users"]) == 10
    assert exp["start"] == 1770962400.0  # 2026-02-13 00:00:00-06:00
    assert exp["meta"]["storageDirectory"] == "/gdata/dm/25IDC/fong-25idc-2026-C1"
    assert exp["meta"]["primaryStorage"]["name"] == "SOJOURNER"


def test_dm_experiment_on_one_jsonl_line_is_recognised_without_record_key(
    site_dir: Path, engine: Engine
) -> None:
    sample = json.loads((DATA / "dm-service-samples.json").read_text())["experiment"]
    source = write_jsonl(site_dir / "e.jsonl", [sample])
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(select(experiments.c.name)).scalar() == "fong-25idc-2026-C1"


def test_naive_times_are_in_the_site_timezone(site_dir: Path, engine: Engine) -> None:
    record = {**SMITH, "startDate": "2018-03-01 08:00:00", "endDate": 1520280000}
    source = write_jsonl(site_dir / "e.jsonl", [record])
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    with engine.connect() as conn:
        start, end = conn.execute(select(experiments.c.start, experiments.c.end)).one()
    assert start == 1519891200.0 + 6 * 3600  # America/Chicago is UTC-6 in March 2018
    assert end == 1520280000.0


def test_experiment_defined_after_its_files_in_one_file_is_an_error_for_those_lines(
    site_dir: Path, engine: Engine
) -> None:
    source = write_jsonl(site_dir / "e.jsonl", [file_record("a.tif"), SMITH, file_record("b.tif")])
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 1
    assert f"{source}:1: error: unknown experiment 'Smith-Mar18'" in result.output
    assert set(catalog_files(engine)) == {("Smith-Mar18", "b.tif")}


def test_stdin_source(site_dir: Path, engine: Engine) -> None:
    text = "\n".join(orjson.dumps(r).decode() for r in [SMITH, file_record("s.tif")])
    result = cli("catalog", "import", "jsonl", "-", input=text)
    assert result.exit_code == 0, result.output
    assert ("Smith-Mar18", "s.tif") in catalog_files(engine)


def test_a_path_twice_in_one_import_keeps_the_last_record(site_dir: Path, engine: Engine) -> None:
    replica = {"location": "voyager", "path": "one/a.tif"}
    records = [
        SMITH,
        file_record("a.tif", size=1, replicas=[replica]),
        file_record("a.tif", size=2, replicas=[{**replica, "path": "two/a.tif", "verified": True}]),
    ]
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "d.jsonl", records)).exit_code == 0
    )
    assert catalog_files(engine)[("Smith-Mar18", "a.tif")]["size"] == 2
    rep = catalog_replicas(engine)[("Smith-Mar18", "a.tif", "voyager")]
    assert (rep["path"], rep["state"]) == ("two/a.tif", "verified")


def test_values_the_catalog_cannot_hold_or_that_would_mislead_are_bad_lines(
    site_dir: Path, engine: Engine
) -> None:
    cases = [
        (file_record("big.tif", size=1 << 63), "fileSize 9223372036854775808 is larger than"),
        (file_record("nan.tif", fileModificationTime="NaN"), "fileModificationTime must be a fin"),
        (file_record("inf.tif", fileCreationTime="inf"), "fileCreationTime must be a finite time"),
        (file_record("a/./b.tif"), "must be a relative path without '.', '..' or empty"),
        (file_record("a//b.tif"), "must be a relative path without '.', '..' or empty"),
        (file_record("new\nline.tif"), "holds a control character"),
        (file_record("nul.tif", sample="a\x00b"), "holds a NUL character"),
        (
            file_record(
                "v.tif", md5Sum=None, replicas=[{"location": "tape", "path": "v", "verified": True}]
            ),
            "a replica is marked verified but the file has no md5Sum",
        ),
        (
            {**file_record("t.tif"), "experimentName": 5},
            "experimentName must be a non-empty text, not 5",
        ),
        ({**SMITH, "name": "../evil"}, "name '../evil' cannot name a folder"),
        ({**SMITH, "name": "Other", "station": "a/b"}, "station 'a/b' cannot name a folder"),
    ]
    lines = [orjson.dumps(record).decode() for record in [SMITH, *(c for c, _ in cases)]]
    source = site_dir / "edge.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == len(cases), result.output
    for (_, expected), line in zip(cases, errors, strict=True):
        assert expected in line, (expected, line)
    assert catalog_files(engine) == {}


def test_an_experiment_ending_before_it_starts_is_imported_with_a_warning(
    site_dir: Path, engine: Engine
) -> None:
    record = {
        **SMITH,
        "startDate": "2017-06-27T13:46:00-05:00",
        "endDate": "2017-06-07T12:25:00-05:00",
    }
    source = write_jsonl(site_dir / "e.jsonl", [record])
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 0
    assert f"{source}:1: warning: experiment 'Smith-Mar18' ends before it starts" in result.output
    with engine.connect() as conn:
        assert conn.execute(select(experiments.c.name)).scalar() == "Smith-Mar18"
