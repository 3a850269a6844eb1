"""Shared fixtures: a catalog on SQLite and on the real PostgreSQL, and a site on disk."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from policyd.catalog.db import open_catalog
from policyd.catalog.schema import SPEC_TABLES, metadata

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

PG_ADMIN_URL = os.environ.get(
    "POLICYD_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "no server here"
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    problem = _pg_reachable()
    if problem is not None:
        if os.environ.get("POLICYD_REQUIRE_PG") == "1":
            pytest.fail(f"POLICYD_REQUIRE_PG=1 but PostgreSQL is not reachable: {problem}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {problem}")
    name = f"policyd_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # A natural-language collation, as production servers have: code that relies
        # on byte order must ask for it (COLLATE "C"), and the tests then notice.
        try:
            conn.execute(
                text(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                    "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
            )
        except Exception:  # a server without ICU: its default collation will do
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    open_catalog(url).dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def truncate_pg(url: str) -> None:
    engine = create_engine(url)
    # the digest of the sums' triggers describes the schema, not the data: it stays
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables if t.name not in SPEC_TABLES)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test runs against SQLite and PostgreSQL, each starting from an empty catalog."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url = request.getfixturevalue("pg_database")
    truncate_pg(url)
    return url


SITE_CONFIG = """\
site: test
timezone: America/Chicago
catalog: sqlite:///catalog.db
locations:
  daq-8idi: {{url: "file:storage/daq-8idi", tier: daq, site: 8idi, capacity: 20 TB}}
  voyager: {{url: "file:storage/voyager", tier: disk, site: aps, capacity: 1.5 PB}}
  tape: {{url: "file:storage/tape", tier: tape, site: aps, capacity: 10 PB}}
{extra}"""


@pytest.fixture
def site_dir(tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site config folder with three file:// locations, its catalog at `catalog_url`."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "policyd.yaml").write_text(SITE_CONFIG.format(extra=""))
    for name in ("daq-8idi", "voyager", "tape"):
        (root / "storage" / name).mkdir(parents=True)
    monkeypatch.setenv("POLICYD_CATALOG", catalog_url)
    monkeypatch.setenv("POLICYD_CONFIG", str(root / "policyd.yaml"))
    return root


@pytest.fixture
def engine(site_dir: Path) -> Iterator[Engine]:
    from policyd.site import open_site

    site = open_site(site_dir / "policyd.yaml")
    yield site.engine
    site.engine.dispose()
