"""What the catalog's triggers keep stays equal to what the tables say, whatever writes
them: single rows, many rows per statement, upserts, moves, file size changes, file
deletes. The replica masks (migration 0003), the usage totals (0004) and the plan
fingerprint's sums (0005)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from sqlalchemy import Engine, create_engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from policyd.catalog.db import _alembic_config, open_catalog
from policyd.catalog.schema import (
    catalog_sum_changes,
    catalog_sums_spec,
    experiments,
    files,
    grants,
    jobs,
    locations,
    notices,
    replicas,
    usage_changes,
)
from policyd.catalog.sums import catalog_sums_now, fold_catalog, kept_sums, scanned_sums
from policyd.catalog.usage import fold_usage, usage_sums

STATES = ["present", "verified", "corrupt", "missing"]
HELD = {"present", "verified", "corrupt"}
LOCATION_IDS = [1, 2, 5, 62, 63, 70]  # 63 and 70 have no mask bit


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


def expected_usage(engine: Engine) -> set[tuple[int, int, int, int]]:
    """Bytes and count of the replicas not missing, per location and experiment."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                replicas.c.location_id,
                files.c.experiment_id,
                func.sum(func.coalesce(replicas.c.size, files.c.size, 0)),
                func.count(),
            )
            .join(files, files.c.id == replicas.c.file_id)
            .where(replicas.c.state != "missing")
            .group_by(replicas.c.location_id, files.c.experiment_id)
        )
        return {(loc, exp, int(b), int(n)) for loc, exp, b, n in rows}


def stored_usage(engine: Engine) -> set[tuple[int, int, int, int]]:
    with engine.connect() as conn:
        return set(usage_sums(conn))


def seed(engine: Engine, count: int) -> list[int]:
    with engine.begin() as conn:
        for id_ in LOCATION_IDS:
            conn.execute(insert(locations).values(id=id_, name=f"loc{id_}", url=f"file:/l{id_}"))
        exps = [
            conn.execute(insert(experiments).values(name=name)).inserted_primary_key[0]
            for name in ("E1", "E2")
        ]
        conn.execute(
            insert(files),
            [
                {
                    "experiment_id": exps[i % 2],
                    "path": f"f{i}",
                    "name": f"f{i}",
                    "ext": "",
                    "size": 100 * i if i % 3 else None,
                }
                for i in range(count)
            ],
        )
        return list(conn.execute(select(files.c.id).order_by(files.c.id)).scalars())


def random_writes(engine: Engine, rounds: int, check: Callable[[str], None]) -> None:
    """`rounds` random writes of every kind a catalog sees, `check` after each."""
    rng = random.Random(7)
    file_ids = seed(engine, 12)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    kinds = ["insert many", "upsert", "update", "move", "resize", "delete", "drop file", "fold"]
    kinds += ["experiment", "job", "grant", "notice"]
    for round_ in range(rounds):
        op = rng.choice(kinds)
        if op == "fold":
            fold_catalog(engine)
            check(op)
            continue
        if op in ("experiment", "job", "grant", "notice"):
            with engine.begin() as conn:
                other_writes(conn, op, round_, rng, file_ids)
            check(op)
            continue
        with engine.begin() as conn:
            existing = conn.execute(
                select(replicas.c.file_id, replicas.c.location_id).order_by(
                    replicas.c.file_id, replicas.c.location_id
                )
            ).all()
            taken = set(existing)
            if op == "insert many" or not existing:
                fresh = {(rng.choice(file_ids), rng.choice(LOCATION_IDS)) for _ in range(6)}
                rows = [
                    {
                        "file_id": f,
                        "location_id": loc,
                        "path": "p",
                        "state": rng.choice(STATES),
                        "size": rng.choice([None, 7, 1000]),
                    }
                    for f, loc in sorted(fresh - taken)
                ]
                if rows:
                    conn.execute(insert(replicas), rows)
            elif op == "upsert":
                f, loc = rng.choice(existing)
                stmt = dialect.insert(replicas).values(
                    file_id=f, location_id=loc, path="p", state=rng.choice(STATES), size=3
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["file_id", "location_id"],
                        set_={"state": stmt.excluded.state, "size": stmt.excluded.size},
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
                where = (replicas.c.file_id == f, replicas.c.location_id == loc)
                other_files = [g for g in file_ids if (g, loc) not in taken]
                other_places = [x for x in LOCATION_IDS if (f, x) not in taken]
                if other_files and rng.random() < 0.5:
                    conn.execute(update(replicas).where(*where).values(file_id=other_files[0]))
                elif other_places:
                    conn.execute(update(replicas).where(*where).values(location_id=other_places[0]))
            elif op == "resize":
                stmt = dialect.insert(files).values(
                    experiment_id=1, path="f1", name="f1", ext="", size=rng.randrange(1, 500)
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["experiment_id", "path"], set_={"size": stmt.excluded.size}
                    )
                )
                conn.execute(
                    update(files)
                    .where(files.c.id.in_(rng.sample(file_ids, 3)))
                    .values(size=files.c.size + 1)
                )
            elif op == "delete":
                conn.execute(
                    delete(replicas).where(replicas.c.file_id.in_(rng.sample(file_ids, 3)))
                )
            elif len(file_ids) > 4:
                victim = file_ids.pop(rng.randrange(len(file_ids)))
                conn.execute(delete(files).where(files.c.id == victim))
        check(op)


def other_writes(conn: Any, op: str, round_: int, rng: random.Random, file_ids: list[int]) -> None:
    """Writes to the tables only the fingerprint's sums read."""
    if op == "experiment":
        conn.execute(
            update(experiments)
            .where(experiments.c.id == rng.choice([1, 2]))
            .values(
                end=rng.choice([None, 1.5e9, 1.7e9 + round_]), station=rng.choice([None, "8IDI"])
            )
        )
    elif op == "job":
        conn.execute(
            insert(jobs).values(
                id=f"job-{round_}",
                workflow="w",
                file_id=rng.choice(file_ids),
                status="pending",
                submitted_at=1.0,
            )
        )
        conn.execute(delete(jobs).where(jobs.c.id == f"job-{round_ - 5}"))
    elif op == "grant":
        conn.execute(
            insert(grants).values(
                rule="r",
                experiment_id=1,
                location_id=1,
                path="p",
                principal=f"user:{round_}",
                perms="r",
                granted_at=1.0,
            )
        )
        if round_ % 2:
            conn.execute(delete(grants).where(grants.c.principal == f"user:{round_ - 1}"))
    else:
        stmt = (sqlite if conn.dialect.name == "sqlite" else postgresql).insert(notices)
        stmt = stmt.values(rule="r", experiment_id=2, channel="ops", sent_at=1000.0 + round_)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["rule", "experiment_id", "channel"],
                set_={"sent_at": stmt.excluded.sent_at},
            )
        )


def test_fingerprint_sums_follow_every_write_and_every_fold(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    seen = []

    def check(op: str) -> None:
        with engine.connect() as conn:
            kept, scanned = kept_sums(conn), scanned_sums(conn)
        assert kept == scanned, op
        seen.append(tuple(scanned))

    random_writes(engine, 80, check)
    assert len(set(seen)) > 40  # the writes moved the sums
    fold_catalog(engine)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(catalog_sum_changes)).scalar() == 0
    check("last fold")
    engine.dispose()


def test_sums_made_from_other_terms_are_not_trusted(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    seed(engine, 3)
    with engine.begin() as conn:
        digest = conn.execute(select(catalog_sums_spec.c.digest)).scalar_one()
        conn.execute(update(catalog_sums_spec).values(digest="0" * 64))
    try:
        with engine.connect() as conn:
            assert kept_sums(conn) is None
            assert catalog_sums_now(conn) == scanned_sums(conn)
    finally:  # the PostgreSQL database serves the whole session
        with engine.begin() as conn:
            conn.execute(update(catalog_sums_spec).values(digest=digest))
    engine.dispose()


def test_masks_follow_every_kind_of_replica_write(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)

    verified_seen = []

    def check(op: str) -> None:
        masks = stored_masks(engine)
        assert masks == expected_masks(engine), op
        verified_seen.append(any(v for v, _ in masks.values()))

    random_writes(engine, 80, check)
    assert sum(verified_seen) >= 3  # the workload did set bits
    engine.dispose()


def test_usage_totals_follow_every_write_and_every_fold(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)

    used_seen = []

    def check(op: str) -> None:
        usage = stored_usage(engine)
        assert usage == expected_usage(engine), op
        used_seen.append(bool(usage))

    random_writes(engine, 60, check)
    assert sum(used_seen) >= 10
    fold_usage(engine)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(usage_changes)).scalar() == 0
    check("last fold")
    engine.dispose()


def test_concurrent_folds_count_each_change_once(catalog_url: str) -> None:
    """Writers in many small transactions while two folders fold: on PostgreSQL they
    really overlap (on SQLite the writers take turns)."""
    engine = open_catalog(catalog_url)
    file_ids = seed(engine, 40)
    errors: list[BaseException] = []
    done = threading.Event()

    def write(location_id: int) -> None:
        try:
            for f in file_ids:
                with engine.begin() as conn:
                    conn.execute(
                        insert(replicas).values(
                            file_id=f, location_id=location_id, path="p", state="present"
                        )
                    )
        except BaseException as exc:
            errors.append(exc)

    def fold() -> None:
        try:
            while not done.is_set():
                fold_usage(engine)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(loc,)) for loc in (1, 2)]
    folders = [threading.Thread(target=fold) for _ in range(2)]
    for t in writers + folders:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in folders:
        t.join()
    assert not errors, errors
    assert stored_usage(engine) == expected_usage(engine)
    fold_usage(engine)
    assert stored_usage(engine) == expected_usage(engine)
    engine.dispose()


def test_upgrading_an_older_catalog_fills_masks_and_totals(tmp_path: Path) -> None:
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
                "INSERT INTO files (id, experiment_id, path, name, ext, size) "
                f"VALUES ({i}, 1, 'f{i}', 'f{i}', '', 50)"
            )
        conn.exec_driver_sql(
            "INSERT INTO replicas (file_id, location_id, path, state) VALUES (1, 3, 'p', 'verified')"
        )
    old.dispose()
    engine = open_catalog(url)
    assert stored_masks(engine) == {1: (8, 8), 2: (0, 0)}
    assert stored_usage(engine) == {(3, 1, 50, 1)}
    engine.dispose()


def test_an_import_keeps_what_the_triggers_keep(site_dir: Path, engine: Engine) -> None:
    """On SQLite an import's batches switch the triggers off and recompute: masks,
    usage and sums end as the tables say, through new files, re-imports that change
    sizes and states, and a record the database refuses (written one at a time)."""
    from tests.catalog.helpers import SMITH, cli, file_record, write_jsonl

    def replicas_of(i: int, verified: bool) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [
            {"location": "daq-8idi", "path": f"8IDI/S/f{i}.tif", "verified": verified}
        ]
        if i % 3 == 0:
            out.append({"location": "voyager", "path": f"8IDI/S/f{i}.tif"})
        return out

    first = [SMITH] + [
        file_record(f"f{i}.tif", size=100 + i, replicas=replicas_of(i, i % 2 == 0))
        for i in range(30)
    ]
    again = [SMITH] + [
        file_record(f"f{i}.tif", size=200 + i, replicas=replicas_of(i, True)) for i in range(10, 40)
    ]
    # a size SQLite cannot hold: the database refuses the batch, written again one by one
    too_big = orjson.dumps(file_record("bad.tif", size=1)).replace(
        b'"fileSize":1', b'"fileSize":1' + b"0" * 20
    )
    for n, records in enumerate((first, again)):
        source = write_jsonl(site_dir / f"c{n}.jsonl", records)
        if n == 1:
            source.write_bytes(source.read_bytes() + too_big + b"\n")
        result = cli("catalog", "import", "jsonl", source, "-c", site_dir / "policyd.yaml")
        assert result.exit_code in (0, 1), result.output
        assert stored_masks(engine) == expected_masks(engine)
        assert stored_usage(engine) == expected_usage(engine)
        with engine.connect() as conn:
            assert kept_sums(conn) == scanned_sums(conn)
    assert any(v for v, _ in stored_masks(engine).values())
    assert len(expected_usage(engine)) == 2  # daq-8idi and voyager
