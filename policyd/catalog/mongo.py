"""Reading a DM metadata catalog from MongoDB: one collection per experiment.

The DM station keeps each experiment's file metadata in a collection named after the
experiment; each document is a DM file record (experimentFilePath, fileSize, md5Sum,
...). Documents stream through a cursor in batches, so memory does not grow with the
collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import tzinfo
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError
from sqlalchemy import Engine

from policyd.catalog.importers import (
    ImportReport,
    ImportUsageError,
    Loader,
    Parsed,
    Placement,
    clean_prefix,
)
from policyd.catalog.records import BadRecord, file_row
from policyd.diagnostics import Diagnostic

CURSOR_BATCH = 2000


def parse_collection(
    db: Database[Any], name: str, tz: tzinfo, locations: frozenset[str]
) -> Iterator[Parsed]:
    """Documents in `_id` order so two imports of one catalog report the same numbers."""
    cursor = db[name].find({}, batch_size=CURSOR_BATCH).sort("_id", 1)
    for number, doc in enumerate(cursor, 1):
        doc.setdefault("experimentName", name)
        try:
            yield number, 0, file_row(doc, tz, experiment=name, known_locations=locations)
        except BadRecord as bad:
            yield number, 0, BadRecord(f"document _id={doc.get('_id')}: {bad}")


def import_mongo(
    engine: Engine,
    url: str,
    *,
    tz: tzinfo,
    locations: frozenset[str],
    now: float,
    database: str | None = None,
    experiments: list[str] | None = None,
    location: str | None = None,
    path_prefix: str | None = None,
    on_problem: Callable[[Diagnostic], None] | None = None,
    client: MongoClient[Any] | None = None,
) -> list[ImportReport]:
    """One report per collection; an experiment unknown to the catalog is reported, skipped."""
    placement = Placement(location, clean_prefix(path_prefix)) if location else None
    label = without_credentials(url)
    try:
        client = client or MongoClient(url, serverSelectionTimeoutMS=5000)
        db = client[database] if database else client.get_default_database(default="dm")
        names = experiments or sorted(
            n for n in db.list_collection_names() if not n.startswith("system.")
        )
    except (ConfigurationError, InvalidURI, ValueError) as exc:
        raise ImportUsageError(f"{label!r} is not a usable MongoDB URL: {exc}") from None
    except PyMongoError as exc:
        raise ImportUsageError(
            f"cannot reach MongoDB at {label}: {str(exc).split(', Timeout:')[0]}"
        ) from None
    reports = []
    for name in names:
        source = f"{label.rstrip('/')}/{name}"
        report = ImportReport("mongo", source)
        loader = Loader(engine, report, now, placement, on_problem)
        if name not in loader.writer.experiment_ids:
            loader.problem(
                0,
                0,
                f"collection {name!r} names no experiment in the catalog; skipped",
                'import the experiment records first (jsonl with "record": "experiment")',
            )
            reports.append(report)
            continue
        try:
            reports.append(loader.run(parse_collection(db, name, tz, locations)))
        except PyMongoError as exc:
            raise ImportUsageError(
                f"reading {source} failed: {exc}; what was read before is kept "
                "(an import is an upsert: run it again to finish)"
            ) from None
    return reports


def without_credentials(url: str) -> str:
    """Reports and messages name the server, never its password."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
