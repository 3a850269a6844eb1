"""The scan's merge is only right if the walk and the catalog sort paths alike.

Hypothesis builds trees with awkward names (prefixes of each other, dots, dashes,
capitals, spaces, non-ASCII) and catalog replicas some of which are gone from disk;
on both databases the scan must refresh exactly those present and mark exactly the
others missing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from policyd.site import open_site
from tests.catalog.helpers import SMITH, catalog_replicas, cli, file_record, write_jsonl
from tests.conftest import SITE_CONFIG, truncate_pg

NAME = st.sampled_from(
    ["a", "a-b", "a.txt", "a b", "A", "b", "ä", "a0", "a_", "Z", "é.h5", "a.b.c"]
)
PATHS = st.lists(
    st.lists(NAME, min_size=1, max_size=3).map("/".join), min_size=1, max_size=25, unique=True
)


def plant(root: Path, rel: str) -> bool:
    """Write a file at rel unless a file/folder clash makes it impossible."""
    target = root / rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            return False
        target.write_bytes(b"x")
        return True
    except (NotADirectoryError, FileExistsError):
        return False


# catalog_url is per test, not per example: each example makes its own site and, on
# PostgreSQL, empties the catalog first, so nothing carries over between examples.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(on_disk=PATHS, in_catalog=PATHS)
def test_scan_refreshes_present_and_marks_the_rest_missing(
    catalog_url: str, on_disk: list[str], in_catalog: list[str]
) -> None:
    if catalog_url.startswith("postgresql"):
        truncate_pg(catalog_url)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        url = catalog_url if catalog_url.startswith("postgresql") else f"sqlite:///{site / 'c.db'}"
        config_text = SITE_CONFIG.format(extra="").replace("sqlite:///catalog.db", url)
        (site / "policyd.yaml").write_text(config_text)
        root = site / "storage" / "voyager"
        root.mkdir(parents=True)
        layout = "8IDI/Smith-Mar18"
        planted = {p for p in on_disk if plant(root / layout, p)}
        records = [SMITH] + [
            file_record(f"c{i}", replicas=[{"location": "voyager", "path": f"{layout}/{p}"}])
            for i, p in enumerate(in_catalog)
        ]
        config = site / "policyd.yaml"
        assert (
            cli(
                "catalog", "import", "jsonl", write_jsonl(site / "c.jsonl", records), "-c", config
            ).exit_code
            == 0
        )
        result = cli("catalog", "import", "scan", "voyager", "-c", config)
        assert result.exit_code == 0, result.output
        engine: Engine = open_site(config).engine
        found = catalog_replicas(engine)
        engine.dispose()
    for i, path in enumerate(in_catalog):
        replica = found[("Smith-Mar18", f"c{i}", "voyager")]
        assert replica["path"] == f"{layout}/{path}"
        assert replica["state"] == ("present" if path in planted else "missing"), path
    new = {p for p in planted if p not in in_catalog}
    assert {("Smith-Mar18", p, "voyager") for p in new} <= set(found)
    assert len(found) == len(in_catalog) + len(new)
