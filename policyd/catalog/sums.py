"""Per-table sums of the rows a plan reads, kept by triggers: the plan fingerprint's input.

A plan carries a hash of these sums and `apply` compares it with the catalog's (see
policyd/planner/fingerprint.py for why sums). Computed by scanning, they are a pass
over every replica and every file: most of a plan with nothing to do. So triggers on
the six tables append each write's difference to `catalog_sum_changes` (one row: the
table, then its count and term sums), `fold_sums` moves the changes into
`catalog_sums`, and a reader adds the two, which is exact whether or not a fold ran.

`TERMS` is the one definition of what is summed: the scans (whole catalog, or one
file's and experiment's rows for apply's per-action differences) and the triggers are
both compiled from it. The triggers' SQL is hashed into `catalog_sums_spec` when they
are made; a catalog whose triggers were made from other terms is read by scanning
until a migration makes them anew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    FromClause,
    case,
    cast,
    column,
    delete,
    func,
    select,
    table,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from policyd.catalog.schema import (
    SUM_VALUES,
    catalog_sum_changes,
    catalog_sums,
    catalog_sums_spec,
    experiments,
    files,
    grants,
    jobs,
    notices,
    replicas,
)
from policyd.catalog.usage import fold_usage

Terms = Callable[[Any], list[ColumnElement[Any]]]


def _whole(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """Times as whole seconds, so every sum is an exact integer."""
    return cast(value, BigInteger)


def _state_code(t: Any) -> ColumnElement[Any]:
    return case(
        (t.c.state == "verified", 1),
        (t.c.state == "present", 2),
        (t.c.state == "missing", 3),
        else_=4,
    )


#: Table -> the terms summed over its rows (besides the count), in fingerprint order.
TERMS: Final[dict[str, Terms]] = {
    "experiments": lambda t: [
        t.c.id,
        _whole(t.c.end),
        _whole(t.c.pinned_until),
        func.length(t.c.station),
    ],
    "files": lambda t: [
        t.c.id,
        t.c.size,
        _whole(t.c.modified),
        func.length(t.c.md5),
        _whole(t.c.expired_at),
    ],
    "replicas": lambda t: [
        t.c.id * _state_code(t),
        t.c.location_id * t.c.file_id,
        _whole(t.c.verified_at),
        func.length(t.c.path),
    ],
    "jobs": lambda t: [func.length(t.c.id)],
    "grants": lambda t: [t.c.id],
    "notices": lambda t: [_whole(t.c.sent_at)],
}
TABLES: Final = {
    "experiments": experiments,
    "files": files,
    "replicas": replicas,
    "jobs": jobs,
    "grants": grants,
    "notices": notices,
}
WIDTHS: Final = tuple(1 + len(TERMS[name](TABLES[name])) for name in TERMS)
_VALUES: Final = SUM_VALUES


def table_sums(name: str, source: FromClause | None = None) -> list[ColumnElement[Any]]:
    """count(*) and the coalesced sum of each term of `name`'s rows in `source`."""
    terms = TERMS[name](TABLES[name] if source is None else source)
    return [func.count(), *(func.coalesce(func.sum(term), 0) for term in terms)]


# ---- the triggers


def _row(name: str, alias: str) -> Any:
    """The table's columns under `alias` (NEW, OLD, a transition table)."""
    return table(alias, *(column(c.name, c.type) for c in TABLES[name].columns))


def _sql(element: ColumnElement[Any], dialect: Dialect) -> str:
    return str(element.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _insert_columns(width: int) -> str:
    return "INSERT INTO catalog_sum_changes (tbl, " + ", ".join(_VALUES[:width]) + ")"


def _sqlite_triggers(index: int, name: str) -> list[str]:
    dialect = sqlite.dialect()
    insert = _insert_columns(WIDTHS[index])

    def terms(alias: str) -> list[str]:
        return [_sql(func.coalesce(t, 0), dialect) for t in TERMS[name](_row(name, alias))]

    new, old = terms("new"), terms("old")
    # spelled out: SQLite's IS NOT rendering drops literal_binds inside its operands
    raw_new = [_sql(t, dialect) for t in TERMS[name](_row(name, "new"))]
    raw_old = [_sql(t, dialect) for t in TERMS[name](_row(name, "old"))]
    changed = " OR ".join(f"({a}) IS NOT ({b})" for a, b in zip(raw_new, raw_old, strict=True))
    differences = [f"({a}) - ({b})" for a, b in zip(new, old, strict=True)]
    return [
        f"CREATE TRIGGER {name}_sums_insert AFTER INSERT ON {name} BEGIN\n"
        f"  {insert} VALUES ({index}, 1, {', '.join(new)});\nEND",
        f"CREATE TRIGGER {name}_sums_delete AFTER DELETE ON {name} BEGIN\n"
        f"  {insert} VALUES ({index}, -1, {', '.join(f'-({v})' for v in old)});\nEND",
        f"CREATE TRIGGER {name}_sums_update AFTER UPDATE ON {name}\n"
        f"WHEN {changed} BEGIN\n"
        f"  {insert} VALUES ({index}, 0, {', '.join(differences)});\nEND",
    ]


def _postgresql_triggers(index: int, name: str) -> list[str]:
    dialect = postgresql.dialect()
    insert = _insert_columns(WIDTHS[index])
    width = WIDTHS[index]

    def sums(alias: str) -> str:
        values = ", ".join(_sql(v, dialect) for v in table_sums(name, _row(name, alias)))
        return f"SELECT {values} FROM {alias}"

    columns = ", ".join(_VALUES[:width])
    differences = ", ".join(f"n.{v} - o.{v}" for v in _VALUES[1:width])
    changed = " OR ".join(f"n.{v} != o.{v}" for v in _VALUES[1:width])
    bodies = {
        "insert": (
            f"{insert}\n  SELECT {index}, {columns}"
            f" FROM ({sums('new_rows')}) s ({columns}) WHERE s.n > 0;"
        ),
        "delete": (
            f"{insert}\n  SELECT {index}, "
            + ", ".join(f"-s.{v}" for v in _VALUES[:width])
            + f" FROM ({sums('old_rows')}) s ({columns}) WHERE s.n > 0;"
        ),
        "update": (
            f"{insert}\n  SELECT {index}, 0, {differences}\n"
            f"  FROM ({sums('new_rows')}) n ({columns}), ({sums('old_rows')}) o ({columns})\n"
            f"  WHERE {changed};"
        ),
    }
    tables = {
        "insert": "REFERENCING NEW TABLE AS new_rows",
        "delete": "REFERENCING OLD TABLE AS old_rows",
        "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    }
    out = []
    for event, body in bodies.items():
        function = f"policyd_{name}_sums_{event}"
        out.append(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n  {body}\n  RETURN NULL;\nEND $$"
        )
        out.append(
            f"CREATE TRIGGER {name}_sums_{event} AFTER {event.upper()} ON {name}\n"
            f"{tables[event]}\nFOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return out


def trigger_statements(dialect_name: str) -> list[str]:
    make = _postgresql_triggers if dialect_name == "postgresql" else _sqlite_triggers
    return [s for index, name in enumerate(TERMS) for s in make(index, name)]


def drop_statements(dialect_name: str) -> list[str]:
    out = []
    for name in TERMS:
        for event in ("insert", "delete", "update"):
            if dialect_name == "postgresql":
                out.append(f"DROP TRIGGER IF EXISTS {name}_sums_{event} ON {name}")
                out.append(f"DROP FUNCTION IF EXISTS policyd_{name}_sums_{event}()")
            else:
                out.append(f"DROP TRIGGER IF EXISTS {name}_sums_{event}")
    return out


def spec_digest(dialect_name: str) -> str:
    text = "\n".join(trigger_statements(dialect_name))
    return hashlib.sha256(text.encode()).hexdigest()


def install(conn: Connection) -> None:
    """(Re)make the triggers from TERMS and the totals from a scan: what a migration
    runs whenever TERMS change."""
    name = conn.dialect.name
    for statement in drop_statements(name):
        conn.exec_driver_sql(statement)
    conn.execute(delete(catalog_sum_changes))
    conn.execute(delete(catalog_sums))
    conn.execute(delete(catalog_sums_spec))
    for statement in trigger_statements(name):
        conn.exec_driver_sql(statement)
    for index, table_name in enumerate(TERMS):
        values = conn.execute(select(*table_sums(table_name))).one()
        row = dict(zip(_VALUES, (int(v) for v in values), strict=False))
        conn.execute(catalog_sums.insert().values(tbl=index, **row))
    conn.execute(catalog_sums_spec.insert().values(digest=spec_digest(name)))


# ---- reading and folding


def scanned_sums(conn: Connection) -> list[int]:
    """The sums by scanning every table."""
    out: list[int] = []
    for name in TERMS:
        out += [int(v) for v in conn.execute(select(*table_sums(name))).one()]
    return out


def kept_sums(conn: Connection) -> list[int] | None:
    """The sums the triggers keep, or None when they were made from other TERMS."""
    stored = conn.execute(select(catalog_sums_spec.c.digest)).scalars().all()
    if stored != [spec_digest(conn.dialect.name)]:
        return None
    both = union_all(
        select(catalog_sums.c.tbl, *(catalog_sums.c[v] for v in _VALUES)),
        select(catalog_sum_changes.c.tbl, *(catalog_sum_changes.c[v] for v in _VALUES)),
    ).subquery()
    rows = conn.execute(
        select(both.c.tbl, *(func.coalesce(func.sum(both.c[v]), 0) for v in _VALUES)).group_by(
            both.c.tbl
        )
    ).all()
    by_table = {tbl: [int(v) for v in values] for tbl, *values in rows}
    out: list[int] = []
    for index, width in enumerate(WIDTHS):
        out += by_table.get(index, [0] * len(_VALUES))[:width]
    return out


def catalog_sums_now(conn: Connection) -> list[int]:
    kept = kept_sums(conn)
    return kept if kept is not None else scanned_sums(conn)


def fold_sums(engine: Engine) -> None:
    """Move the pending changes into the totals, in one transaction (see fold_usage
    for why each dialect's form counts every change once)."""
    pending = select(
        catalog_sum_changes.c.tbl, *(func.sum(catalog_sum_changes.c[v]).label(v) for v in _VALUES)
    ).group_by(catalog_sum_changes.c.tbl)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            moved = (
                delete(catalog_sum_changes)
                .returning(catalog_sum_changes.c.tbl, *(catalog_sum_changes.c[v] for v in _VALUES))
                .cte("moved")
            )
            grouped = select(moved.c.tbl, *(func.sum(moved.c[v]) for v in _VALUES)).group_by(
                moved.c.tbl
            )
            insert = postgresql.insert(catalog_sums).from_select(["tbl", *_VALUES], grouped)
            conn.execute(_upsert(insert).add_cte(moved))
        else:
            insert = sqlite.insert(catalog_sums).from_select(["tbl", *_VALUES], pending)
            conn.execute(_upsert(insert))
            conn.execute(delete(catalog_sum_changes))


def fold_catalog(engine: Engine) -> None:
    """Fold what the triggers appended (sums and usage) after a bulk write."""
    fold_sums(engine)
    fold_usage(engine)


def _upsert(insert: Any) -> Any:
    return insert.on_conflict_do_update(
        index_elements=["tbl"],
        set_={v: catalog_sums.c[v] + insert.excluded[v] for v in _VALUES},
    )


__all__ = [
    "TERMS",
    "WIDTHS",
    "catalog_sums_now",
    "fold_catalog",
    "fold_sums",
    "install",
    "kept_sums",
    "scanned_sums",
    "table_sums",
]
