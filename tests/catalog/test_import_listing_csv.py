"""dm-listing and csv imports, with the listings printed in the 2018 APS DM talk."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from policyd.catalog.schema import experiments
from tests.catalog.helpers import SMITH, catalog_files, catalog_replicas, cli, write_jsonl

DATA = Path(__file__).parent.parent / "data"


def setup_smith(site_dir: Path) -> None:
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e.jsonl", [SMITH])).exit_code == 0
    )


def test_reference_listings_import_and_damaged_md5_lines_are_reported(
    site_dir: Path, engine: Engine
) -> None:
    setup_smith(site_dir)
    first = DATA / "smith-mar18-listing-1.txt"
    second = DATA / "smith-mar18-listing-2.txt"
    r1 = cli(
        "catalog",
        "import",
        "dm-listing",
        first,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "daq-8idi",
    )
    assert r1.exit_code == 1
    assert f"{first}:12: error: md5Sum must be 32 hexadecimal digits, got " in r1.output
    assert "(33 characters)" in r1.output
    assert "15 files, 15 replicas imported; 1 bad line skipped" in r1.output

    r2 = cli(
        "catalog",
        "import",
        "dm-listing",
        second,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "daq-8idi",
    )
    assert r2.exit_code == 1
    bad = sorted(int(line.split(":")[1]) for line in r2.output.splitlines() if ": error: " in line)
    assert bad == [4, 7, 11, 12]

    stats = json.loads(
        cli("catalog", "stats", "--experiment", "Smith-Mar18", "--format", "json").output
    )
    assert stats["nFiles"] == 15 + 12
    assert stats["collectionSize"] == 27 * 823569
    assert stats["minFileSize"] == stats["maxFileSize"] == 823569
    assert stats["stdDevFileSize"] == 0.0

    reps = catalog_replicas(engine)
    rep = reps[("Smith-Mar18", "pix/macimg_000001.tif", "daq-8idi")]
    assert rep["path"] == "8IDI/Smith-Mar18/pix/macimg_000001.tif"  # the default layout
    assert rep["state"] == "present"  # a listing is not a verification


def test_listing_path_prefix_and_values_with_spaces(site_dir: Path, engine: Engine) -> None:
    setup_smith(site_dir)
    listing = site_dir / "l.txt"
    listing.write_text(
        "experimentFilePath=run 1/my scan.h5 fileSize=10 md5Sum=9a87108d6d0bb3bdd16d58b8c7cd6855"
        " sample=silica gel\n\n"
        "experimentFilePath=b.h5 fileSize=20\n"
    )
    result = cli(
        "catalog",
        "import",
        "dm-listing",
        listing,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "voyager",
        "--path-prefix",
        "raw/2018/",
    )
    assert result.exit_code == 0, result.output
    files = catalog_files(engine)
    assert files[("Smith-Mar18", "run 1/my scan.h5")]["meta"] == {"sample": "silica gel"}
    assert files[("Smith-Mar18", "b.h5")]["md5"] is None
    reps = catalog_replicas(engine)
    assert (
        reps[("Smith-Mar18", "run 1/my scan.h5", "voyager")]["path"] == "raw/2018/run 1/my scan.h5"
    )


def test_listing_needs_a_known_experiment_and_location(site_dir: Path, engine: Engine) -> None:
    listing = DATA / "smith-mar18-listing-1.txt"
    result = cli(
        "catalog",
        "import",
        "dm-listing",
        listing,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "daq-8idi",
    )
    assert result.exit_code == 1
    assert (
        "error: experiment 'Smith-Mar18' is not in the catalog: import its record first"
        in result.output
    )
    setup_smith(site_dir)
    result = cli(
        "catalog",
        "import",
        "dm-listing",
        listing,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "moon",
    )
    assert result.exit_code == 1
    assert "--location 'moon' is not a location of the site config" in result.output
    result = cli("catalog", "import", "dm-listing", listing)
    assert result.exit_code == 1
    assert "dm-listing needs --experiment NAME and --location LOC" in result.output
    assert catalog_files(engine) == {}


def test_listing_line_that_is_not_key_value(site_dir: Path, engine: Engine) -> None:
    setup_smith(site_dir)
    listing = site_dir / "l.txt"
    listing.write_text(
        "experimentFilePath=a fileSize=1\nthis is not a listing\nexperimentFilePath=b fileSize=2\n"
    )
    result = cli(
        "catalog",
        "import",
        "dm-listing",
        listing,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "daq-8idi",
    )
    assert result.exit_code == 1
    assert f"{listing}:2: error: expected key=value, got 'this is not a listing'" in result.output
    assert set(catalog_files(engine)) == {("Smith-Mar18", "a"), ("Smith-Mar18", "b")}


def test_csv_import_with_location_and_bad_rows(site_dir: Path, engine: Engine) -> None:
    setup_smith(site_dir)
    source = site_dir / "files.csv"
    source.write_text(
        "experimentName,experimentFilePath,fileSize,md5Sum,fileModificationTime,sample\n"
        "Smith-Mar18,a.tif,100,9a87108d6d0bb3bdd16d58b8c7cd6855,2018-03-02T10:00:00Z,s1\n"
        "Smith-Mar18,b.tif,x,,,\n"
        'Smith-Mar18,"c, d.tif",300,,1520937600,\n'
        "Smith-Mar18,e.tif,1,,,,extra\n"
    )
    result = cli("catalog", "import", "csv", source, "--location", "voyager")
    assert result.exit_code == 1
    assert f"{source}:3: error: fileSize must be a whole number of bytes, not 'x'" in result.output
    assert f"{source}:5: error: more fields than the header's 6" in result.output
    files = catalog_files(engine)
    assert files[("Smith-Mar18", "a.tif")]["meta"] == {"sample": "s1"}
    assert files[("Smith-Mar18", "a.tif")]["modified"] == 1519984800.0
    assert files[("Smith-Mar18", "c, d.tif")]["size"] == 300
    assert set(files) == {("Smith-Mar18", "a.tif"), ("Smith-Mar18", "c, d.tif")}
    assert (
        catalog_replicas(engine)[("Smith-Mar18", "a.tif", "voyager")]["path"]
        == "8IDI/Smith-Mar18/a.tif"
    )


def test_csv_without_required_columns(site_dir: Path, engine: Engine) -> None:
    source = site_dir / "files.csv"
    source.write_text("path,size\na,1\n")
    result = cli("catalog", "import", "csv", source)
    assert result.exit_code == 1
    assert (
        f"{source}:1: error: the header row lacks experimentName, experimentFilePath, fileSize"
        in result.output
    )


def test_stats_match_python_for_random_sizes(site_dir: Path, engine: Engine) -> None:
    setup_smith(site_dir)
    sizes = [14, 823569, 251666432, 9634554, 3, 77, 1 << 33]
    listing = site_dir / "l.txt"
    listing.write_text(
        "".join(f"experimentFilePath=f{i} fileSize={s}\n" for i, s in enumerate(sizes))
    )
    cli(
        "catalog",
        "import",
        "dm-listing",
        listing,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "daq-8idi",
    )
    result = cli("catalog", "stats", "--format", "key-per-line")
    assert result.exit_code == 0
    got = dict(line.split("=", 1) for line in result.output.splitlines())
    assert list(got) == [
        "nFiles",
        "collectionSize",
        "minFileSize",
        "maxFileSize",
        "averageFileSize",
        "stdDevFileSize",
    ]
    assert int(got["nFiles"]) == len(sizes)
    assert int(got["collectionSize"]) == sum(sizes)
    # key-per-line prints 12 significant digits, as dm-get-file-collection-stats does
    assert float(got["averageFileSize"]) == pytest.approx(statistics.fmean(sizes), rel=1e-11)
    assert float(got["stdDevFileSize"]) == pytest.approx(statistics.pstdev(sizes), rel=1e-11)
    exact = json.loads(cli("catalog", "stats", "--format", "json").stdout)
    assert exact["averageFileSize"] == pytest.approx(statistics.fmean(sizes), rel=1e-15)
    assert exact["stdDevFileSize"] == pytest.approx(statistics.pstdev(sizes), rel=1e-12)
    table = cli("catalog", "stats", "--experiment", "Smith-Mar18")
    assert "collectionSize" in table.output and str(sum(sizes)) in table.output
    unknown = cli("catalog", "stats", "--experiment", "Nobody")
    assert unknown.exit_code == 1 and "experiment 'Nobody' is not in the catalog" in unknown.output


def test_missing_source_file_is_a_clear_error(site_dir: Path, engine: Engine) -> None:
    result = cli("catalog", "import", "jsonl", site_dir / "nope.jsonl")
    assert result.exit_code == 1
    assert f"cannot read {site_dir / 'nope.jsonl'}: No such file or directory" in result.output


def test_listing_copied_to_site_dir_keeps_line_numbers(site_dir: Path, engine: Engine) -> None:
    setup_smith(site_dir)
    copy = site_dir / "copy.txt"
    shutil.copy(DATA / "smith-mar18-listing-2.txt", copy)
    result = cli(
        "catalog",
        "import",
        "dm-listing",
        copy,
        "--experiment",
        "Smith-Mar18",
        "--location",
        "tape",
        "--format",
        "json",
    )
    report = json.loads(result.stdout)[0]
    assert report["bad_lines"] == 4 and report["files"] == 12
    assert [p["span"]["line"] for p in report["problems"]] == [4, 7, 11, 12]


def test_a_listing_adds_to_what_the_catalog_knows_and_erases_nothing(
    site_dir: Path, engine: Engine
) -> None:
    replica = {"location": "daq-8idi", "path": "8IDI/Smith-Mar18/a.tif", "verified": True}
    record = {
        "record": "file",
        "experimentName": "Smith-Mar18",
        "experimentFilePath": "a.tif",
        "fileSize": 10,
        "md5Sum": "9a87108d6d0bb3bdd16d58b8c7cd6855",
        "fileModificationTime": 1520937600.0,
        "sample": "s1",
        "replicas": [replica],
    }
    assert (
        cli(
            "catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", [SMITH, record])
        ).exit_code
        == 0
    )
    before = catalog_replicas(engine)[("Smith-Mar18", "a.tif", "daq-8idi")]
    listing = site_dir / "l.txt"
    listing.write_text("experimentFilePath=a.tif fileSize=10\n")
    args = ("--experiment", "Smith-Mar18", "--location", "daq-8idi")
    assert cli("catalog", "import", "dm-listing", listing, *args).exit_code == 0
    row = catalog_files(engine)[("Smith-Mar18", "a.tif")]
    assert (row["md5"], row["modified"], row["meta"]) == (
        "9a87108d6d0bb3bdd16d58b8c7cd6855",
        1520937600.0,
        {"sample": "s1"},
    )
    after = catalog_replicas(engine)[("Smith-Mar18", "a.tif", "daq-8idi")]
    assert (after["state"], after["verified_at"]) == ("verified", before["verified_at"])

    # The same listing placing the file elsewhere is a different replica: not verified.
    assert (
        cli("catalog", "import", "dm-listing", listing, *args, "--path-prefix", "moved").exit_code
        == 0
    )
    moved = catalog_replicas(engine)[("Smith-Mar18", "a.tif", "daq-8idi")]
    assert (moved["path"], moved["state"], moved["verified_at"]) == ("moved/a.tif", "present", None)

    partial = {"record": "experiment", "name": "Smith-Mar18", "description": "new text"}
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "e2.jsonl", [partial])).exit_code
        == 0
    )

    with engine.connect() as conn:
        exp = conn.execute(select(experiments)).mappings().one()
    assert (exp["station"], exp["type"], exp["description"]) == ("8IDI", "XPCS", "new text")
    assert exp["users"] == ["asmith", "jgray"] and exp["meta"] == {"esafId": 204711}
