"""A folder the scan cannot read must not turn its replicas `missing`.

Permissions only bind an unprivileged user, so when the tests run as root the scan
runs as `nobody` in a real subprocess (setpriv), against a real folder with mode 000.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.catalog.helpers import SMITH, catalog_replicas, cli, file_record, write_jsonl


def as_unprivileged(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "policyd", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root needs setpriv (util-linux) to drop privileges")
        command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[None]:
    """Let an unprivileged user traverse to tmp_path (pytest makes its folders 0700)."""
    changed = []
    for folder in [tmp_path, *tmp_path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
            changed.append((folder, mode))
    yield
    for folder, mode in changed:
        folder.chmod(mode)


@pytest.mark.usefixtures("reachable")
def test_unreadable_folder_leaves_its_replicas_alone_and_fails_the_scan(
    tmp_path: Path, site_dir: Path, engine: Engine, catalog_url: str
) -> None:
    base = "8IDI/Smith-Mar18"
    records = [
        SMITH,
        file_record("open/a.h5", replicas=[{"location": "voyager", "path": f"{base}/open/a.h5"}]),
        file_record(
            "closed/b.h5", replicas=[{"location": "voyager", "path": f"{base}/closed/b.h5"}]
        ),
        file_record("gone/c.h5", replicas=[{"location": "voyager", "path": f"{base}/gone/c.h5"}]),
    ]
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records)).exit_code == 0
    )
    root = site_dir / "storage" / "voyager" / base
    (root / "open").mkdir(parents=True)
    (root / "open" / "a.h5").write_bytes(b"a")
    (root / "closed").mkdir()
    (root / "closed" / "b.h5").write_bytes(b"b")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    (root / "closed").chmod(0o000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYD_")}
    env.update(POLICYD_CONFIG=str(site_dir / "policyd.yaml"), POLICYD_CATALOG=catalog_url)
    try:
        result = as_unprivileged(["catalog", "import", "scan", "voyager"], env)
    finally:
        (root / "closed").chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert f"cannot read {base}/closed: Permission denied" in result.stderr
    states = {k[1]: v["state"] for k, v in catalog_replicas(engine).items()}
    assert states == {"open/a.h5": "present", "closed/b.h5": "present", "gone/c.h5": "missing"}
