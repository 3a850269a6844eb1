"""The files' replica masks (migration 0003) stay equal to what the replicas table says,
whatever writes it: single rows, many rows per statement, upserts, moves and deletes."""

from __future__ import annotations

import random
from pathlib import Path

from alembic import command
from sqlalchemy import Engine, create_engine, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from policyd.catalog.db import _alembic_config, open_catalog
from policyd.catalog.schema import experiments, files, locations, replicas

STATES = ["present", "verified", "corrupt", "missing"]
HELD = {"present", "verified", "corrupt"}


def expected_masks(engine: Engine) -> dict[int, tuple[int, int]]:
    """(verified_on, held_on) of every file, computed in Python from its replicas."""
    with engine.connect() as conn:
        out = {file_id: (0, 0) for (file_id,) in conn.execute(select(files.c.id))}
        for file_id, location_id, state in conn.execute(
            select(replicas.c.file_id, replicas.c.location_id, replicas.c.state)
        ):
            v, h = out[file_id]
            bit = 1 << location_id if location_id < 63 else 0
            out[file_id] = (v | bit if state == "verified" else v, h | bit if state in HELD else h)
    return out


def stored_masks(engine: Engine) -> dict[int, tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(files.c.id, files.c.verified_on, files.c.held_on))
        return {file_id: (v, h) for file_id, v, h in rows}


def seed(engine: Engine, location_ids: list[int], count: int) -> list[int]:
    with engine.begin() as conn:
        for id_ in location_ids:
            conn.execute(insert(locations).values(id=id_, name=f"loc{id_}", url=f"file:/l{id_}"))
        exp = conn.execute(insert(experiments).values(name="E1")).inserted_primary_key[0]
        conn.execute(
            insert(files),
            [
                {"experiment_id": exp, "path": f"f{i}", "name": f"f{i}", "ext": ""}
                for i in range(count)
            ],
        )
        return list(conn.execute(select(files.c.id).order_by(files.c.id)).scalars())


def test_masks_follow_every_kind_of_replica_write(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rng = random.Random(7)
    location_ids = [1, 2, 5, 62, 63, 70]  # 63 and 70 have no bit
    file_ids = seed(engine, location_ids, 12)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    for _ in range(25):
        with engine.begin() as conn:
            op = rng.choice(["insert many", "upsert", "update", "move", "delete", "drop file"])
            existing = conn.execute(select(replicas.c.file_id, replicas.c.location_id)).all()
            if op == "insert many" or not existing:
                taken = set(existing)
                fresh = {(rng.choice(file_ids), rng.choice(location_ids)) for _ in range(6)}
                rows = [
                    {"file_id": f, "location_id": loc, "path": "p", "state": rng.choice(STATES)}
                    for f, loc in sorted(fresh - taken)
                ]
                if rows:
                    conn.execute(insert(replicas), rows)
            elif op == "upsert":
                f, loc = rng.choice(existing)
                stmt = dialect.insert(replicas).values(
                    file_id=f, location_id=loc, path="p", state=rng.choice(STATES)
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["file_id", "location_id"],
                        set_={"state": stmt.excluded.state},
                    )
                )
            elif op == "update":
                chosen = rng.sample(existing, min(3, len(existing)))
                conn.execute(
                    update(replicas)
                    .where(replicas.c.file_id.in_([f for f, _ in chosen]))
                    .values(state=rng.choice(STATES))
                )
            elif op == "move":
                f, loc = rng.choice(existing)
                taken = set(existing)
                where = (replicas.c.file_id == f, replicas.c.location_id == loc)
                other_files = [g for g in file_ids if (g, loc) not in taken]
                other_places = [x for x in location_ids if (f, x) not in taken]
                if other_files and rng.random() < 0.5:
                    conn.execute(update(replicas).where(*where).values(file_id=other_files[0]))
                elif other_places:
                    conn.execute(update(replicas).where(*where).values(location_id=other_places[0]))
            elif op == "delete":
                conn.execute(
                    delete(replicas).where(replicas.c.file_id.in_(rng.sample(file_ids, 3)))
                )
            else:
                victim = file_ids.pop(rng.randrange(len(file_ids)))
                conn.execute(delete(replicas).where(replicas.c.file_id == victim))
                conn.execute(delete(files).where(files.c.id == victim))
        assert stored_masks(engine) == expected_masks(engine), op
    assert any(v for v, _ in stored_masks(engine).values())
    engine.dispose()


def test_upgrading_an_older_catalog_fills_the_masks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    cfg = _alembic_config()
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.exec_driver_sql("INSERT INTO locations (id, name, url) VALUES (3, 'a', 'file:/a')")
        conn.exec_driver_sql("INSERT INTO experiments (id, name) VALUES (1, 'E1')")
        for i in (1, 2):
            conn.exec_driver_sql(
                "INSERT INTO files (id, experiment_id, path, name, ext) "
                f"VALUES ({i}, 1, 'f{i}', 'f{i}', '')"
            )
        conn.exec_driver_sql(
            "INSERT INTO replicas (file_id, location_id, path, state) VALUES (1, 3, 'p', 'verified')"
        )
    old.dispose()
    engine = open_catalog(url)
    assert stored_masks(engine) == {1: (8, 8), 2: (0, 0)}
    engine.dispose()
