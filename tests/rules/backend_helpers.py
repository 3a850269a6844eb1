"""One small catalog, loaded into SQL and Mongo, and one selection function per backend.

The backend tests compare the sets of files each backend selects for an expression:
Python on rows built straight from the catalog below (the reference), SQL through
`sqlgen.pushdown` and Mongo through `mongo_filter.pushdown`, each followed, as the
planner does, by the Python residual on the rows the database returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from mongomock.database import Database
from sqlalchemy import Engine, delete, insert, select

from policyd.catalog.records import name_and_ext
from policyd.catalog.schema import experiments, files, locations, replicas
from policyd.grammar.dsl import parse_expression
from policyd.rules import ir, mongo_filter, pyeval, sqlgen
from policyd.rules.typecheck import FILE_WHERE, check_expression

#: The evaluation time of every test: 2026-05-28T20:26:40Z.
NOW = 1_780_000_000.0
DAY = 86_400.0
#: A site timezone with an offset (and summer time), so that a time literal without
#: one is visibly not UTC.
SITE_TZ = ZoneInfo("America/Chicago")
#: Every location is 90% full.
BINDINGS = ir.Bindings(
    now=NOW, tz=SITE_TZ, location_value=lambda fn, loc, station: 0.9 if fn == "usage" else None
)

Selected = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Experiment:
    name: str
    station: str | None = "8IDI"
    type: str | None = None
    description: str | None = None
    start: float | None = NOW - 400 * DAY
    end: float | None = None
    users: list[str] | None = None
    meta: dict[str, Any] | None = None
    pinned_until: float | None = None

    def values(self) -> dict[str, Any]:
        """The experiment's fields as a `pyeval` row (and `mongo_filter.bind`) reads them."""
        return {
            "experiment.name": self.name,
            "experiment.station": self.station,
            "experiment.type": self.type,
            "experiment.description": self.description,
            "experiment.start": self.start,
            "experiment.end": self.end,
            "experiment.users": self.users,
            "experiment.meta": self.meta,
            "experiment.pinned_until": self.pinned_until,
        }


@dataclass(frozen=True)
class File:
    experiment: str
    path: str
    size: int | None = 1000
    md5: str | None = None
    created: float | None = None
    modified: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    verified_on: tuple[str, ...] = ()  # locations holding a verified replica

    def row(self, experiment: Experiment) -> dict[str, Any]:
        name, ext = name_and_ext(self.path)
        return {
            **experiment.values(),
            "file.path": self.path,
            "file.name": name,
            "file.dir": self.path[: len(self.path) - len(name) - 1] if "/" in self.path else "",
            "file.ext": ext,
            "file.size": self.size,
            "file.md5": self.md5,
            "file.created": self.created,
            "file.modified": self.modified,
            "file.meta": self.meta,
            "replicas": self.replicas(),
        }

    def replicas(self) -> tuple[pyeval.ReplicaView, ...]:
        return tuple(
            pyeval.ReplicaView(loc, LOCATIONS[loc], "verified", self.path)
            for loc in self.verified_on
        )

    def document(self) -> dict[str, Any]:
        """The DM file document: a catalog field that is null is left out, metadata
        that is null is kept as null, so that both kinds of missing are exercised."""
        doc: dict[str, Any] = {"experimentFilePath": self.path}
        for key, value in (
            ("fileSize", self.size),
            ("md5Sum", self.md5),
            ("fileCreationTime", self.created),
            ("fileModificationTime", self.modified),
        ):
            if value is not None:
                doc[key] = value
        doc.update(self.meta)
        return doc


LOCATIONS = {"voyager": "disk", "tape": "tape"}


@dataclass(frozen=True)
class Catalog:
    experiments: Sequence[Experiment]
    files: Sequence[File]

    def experiment(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)


def lower(text: str) -> ir.Node:
    """The IR of a `where` condition, which must be well typed."""
    expr, problems = parse_expression(text, "t.policy")
    assert expr is not None, problems
    _, diagnostics = check_expression(expr, FILE_WHERE)
    assert not diagnostics, [d.message for d in diagnostics]
    return ir.lower(expr, BINDINGS)


# ---- Python


def select_python(node: ir.Node, catalog: Catalog) -> Selected:
    test = pyeval.compile_python(node)
    return frozenset(
        (f.experiment, f.path)
        for f in catalog.files
        if test(f.row(catalog.experiment(f.experiment)))
    )


# ---- SQL


def load_sql(engine: Engine, catalog: Catalog) -> None:
    """Replace the catalog's experiments and files (one database serves many examples)."""
    with engine.begin() as conn:
        for table in (replicas, files, experiments, locations):
            conn.execute(delete(table))
        conn.execute(
            insert(locations),
            [
                {"id": i, "name": name, "url": f"file:///{name}", "tier": tier}
                for i, (name, tier) in enumerate(LOCATIONS.items(), 1)
            ],
        )
        location_ids = {name: i for i, name in enumerate(LOCATIONS, 1)}
        ids = {}
        for i, e in enumerate(catalog.experiments, 1):
            ids[e.name] = i
            conn.execute(
                insert(experiments).values(
                    id=i,
                    name=e.name,
                    station=e.station,
                    type=e.type,
                    description=e.description,
                    start=e.start,
                    end=e.end,
                    users=e.users,
                    meta=e.meta,
                    pinned_until=e.pinned_until,
                )
            )
        for i, f in enumerate(catalog.files, 1):
            name, ext = name_and_ext(f.path)
            conn.execute(
                insert(files).values(
                    id=i,
                    experiment_id=ids[f.experiment],
                    path=f.path,
                    name=name,
                    ext=ext,
                    size=f.size,
                    md5=f.md5,
                    created=f.created,
                    modified=f.modified,
                    meta=f.meta or None,
                )
            )
            for location in f.verified_on:
                conn.execute(
                    insert(replicas).values(
                        file_id=i,
                        location_id=location_ids[location],
                        path=f.path,
                        state="verified",
                    )
                )


def select_sql(engine: Engine, node: ir.Node, catalog: Catalog) -> Selected:
    """The files SQL selects, asserted the same whether `copies()` compiles to a
    subquery over replicas or to a bit count of the files' masks."""
    plain = _select_sql(engine, node, catalog, sqlgen.Sources(files, experiments))
    ids = {name: i for i, name in enumerate(LOCATIONS, 1)}
    located = sqlgen.CatalogLocations(ids, dict(LOCATIONS))
    masked = _select_sql(engine, node, catalog, sqlgen.Sources(files, experiments, located))
    assert masked == plain, "copies() as a bit count disagrees with its subquery"
    return plain


def _select_sql(
    engine: Engine, node: ir.Node, catalog: Catalog, sources: sqlgen.Sources
) -> Selected:
    split = sqlgen.pushdown(node, sources)
    query = select(*sqlgen.row_columns(sources)).join(
        experiments, experiments.c.id == files.c.experiment_id
    )
    if split.sql is not None:
        query = query.where(split.sql)
    residual = pyeval.compile_python(split.residual) if split.residual is not None else None
    by_key = {(f.experiment, f.path): f for f in catalog.files}
    selected = set()
    with engine.connect() as conn:
        for result in conn.execute(query).mappings():
            key = (result["experiment.name"], result["file.path"])
            row = {**result, "replicas": by_key[key].replicas()}
            if residual is None or residual(row):
                selected.add(key)
    return frozenset(selected)


# ---- Mongo


def load_mongo(db: Database, catalog: Catalog) -> None:
    """One collection per experiment, as the DM keeps them."""
    for name in db.list_collection_names():
        db.drop_collection(name)
    for e in catalog.experiments:
        documents = [f.document() for f in catalog.files if f.experiment == e.name]
        if documents:
            db[e.name].insert_many(documents)


def select_mongo(db: Database, node: ir.Node, catalog: Catalog) -> Selected:
    by_key = {(f.experiment, f.path): f for f in catalog.files}
    selected = set()
    for e in catalog.experiments:
        split = mongo_filter.pushdown(node, e.values())
        residual = pyeval.compile_python(split.residual) if split.residual is not None else None
        for doc in db[e.name].find(split.filter):
            path = doc["experimentFilePath"]
            row = mongo_filter.document_row(doc, e.values(), by_key[(e.name, path)].replicas())
            if residual is None or residual(row):
                selected.add((e.name, path))
    return frozenset(selected)
