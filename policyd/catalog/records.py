"""Turning DM-shaped records into catalog rows, and saying precisely why a record is bad.

The DM's formats are lenient by nature (a file record is any key/value bag), so keys
we do not model are kept as metadata rather than rejected. The keys we do model are
checked strictly: a wrong size or checksum in the catalog would later decide what
gets deleted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

import orjson

from policyd.catalog.schema import REPLICA_STATES
from policyd.units import MAX_SIZE

MD5_RE = re.compile(r"[0-9a-fA-F]{32}")

FILE_KEYS = frozenset(
    {
        "record",
        "experimentName",
        "experimentFilePath",
        "fileSize",
        "md5Sum",
        "fileCreationTime",
        "fileModificationTime",
        "replicas",
        "_id",
    }
)


class BadRecord(ValueError):
    """A record that cannot go into the catalog; the message says which key and why."""


class ReplicaRow(NamedTuple):
    location: str
    path: str
    state: str


class FileRow(NamedTuple):
    """A validated file record, laid out as the `files` table's columns after
    experiment_id (so the writer appends it to the experiment id as it is), with the
    metadata already JSON text. Tuples, because a parsing process may ship them to
    the writing one by the million."""

    experiment: str
    path: str
    name: str
    ext: str
    size: int
    md5: str | None
    created: float | None
    modified: float | None
    meta_json: str | None
    replicas: list[ReplicaRow]


def name_and_ext(path: str) -> tuple[str, str]:
    """`file.name` and `file.ext` (rules.md section 4): the last segment, and what
    follows its last dot ("" for none, and for a dot-file such as `.hidden`)."""
    name = path.rpartition("/")[2]
    dot = name.rfind(".")
    return name, (name[dot + 1 :] if dot > 0 else "")


def dump_json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


@dataclass(slots=True)
class ExperimentRow:
    name: str
    station: str | None
    type: str | None
    description: str | None
    start: float | None
    end: float | None
    users: list[str] | None
    meta: dict[str, Any] | None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_time(value: Any, key: str, tz: tzinfo) -> float | None:
    """Epoch seconds from the DM's epoch floats or ISO 8601 text (naive = site timezone)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRecord(f"{key} must be a time (ISO 8601 or epoch seconds), not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise BadRecord(f"{key} must be a finite time, not {value!r}")
        return float(value)
    if isinstance(value, datetime):
        # BSON dates (Mongo) arrive as naive datetimes in UTC, unlike naive ISO text
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip()
        number = _float_or_none(text)
        if number is not None:
            if not math.isfinite(number):
                raise BadRecord(f"{key} must be a finite time, not {value!r}")
            return number
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadRecord(
                f"{key} {value!r} is not a time: write ISO 8601 "
                "(2018-03-01T08:00:00Z) or epoch seconds"
            ) from None
    else:
        raise BadRecord(f"{key} must be a time (ISO 8601 or epoch seconds), not {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def parse_size(value: Any, key: str = "fileSize", from_text: bool = False) -> int:
    """Whole bytes; digits in text only for formats that have no numbers (listings, csv)."""
    text = value.strip() if from_text and isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):  # Mongo's Int64 too
        size = int(value)
    elif type(value) is float and value.is_integer():
        size = int(value)
    elif text and text.lstrip("-").isascii() and text.lstrip("-").isdigit():
        size = int(text)
    else:
        raise BadRecord(f"{key} must be a whole number of bytes, not {value!r}")
    if size < 0:
        raise BadRecord(f"{key} must not be negative, got {size}")
    if size > MAX_SIZE:
        raise BadRecord(f"{key} {size} is larger than the catalog can hold (2^63 - 1 bytes)")
    return size


def parse_md5(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or MD5_RE.fullmatch(value) is None:
        shown = value if not isinstance(value, str) else f"{value!r} ({len(value)} characters)"
        raise BadRecord(f"md5Sum must be 32 hexadecimal digits, got {shown}")
    return value.lower()


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_relative_path(value: Any, key: str) -> str:
    """Catalog paths become storage paths later: they must not climb out of a location,
    and two spellings of one file (`a/./b`, `a//b`) must not become two records."""
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} must be a non-empty text, not {value!r}")
    segments = value.split("/")
    if value[0] == "/" or any(s in ("", ".", "..") for s in segments):
        raise BadRecord(
            f"{key} {value!r} must be a relative path without '.', '..' or empty segments"
        )
    if CONTROL.search(value):
        raise BadRecord(f"{key} {value!r} holds a control character (newline, tab, NUL, ...)")
    return value


def check_name(value: Any, key: str) -> str:
    """Experiment and station names are path segments of the default layout."""
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{key} must be a non-empty text, not {value!r}")
    if value in (".", "..") or "/" in value or CONTROL.search(value):
        raise BadRecord(
            f"{key} {value!r} cannot name a folder: no '/', control characters, '.' or '..'"
        )
    return value


PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable(value: Any) -> Any:
    """Metadata must round-trip through JSON columns; Mongo hands us richer types."""
    if type(value) in PLAIN:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def file_row(
    record: dict[str, Any],
    tz: tzinfo,
    experiment: str | None = None,
    known_locations: frozenset[str] | None = None,
    from_text: bool = False,
) -> FileRow:
    """Validate one DM file record; `experiment` fills in for listings that omit it."""
    exp = record.get("experimentName", experiment)
    if experiment is not None and exp != experiment:
        raise BadRecord(
            f"experimentName {exp!r} is not {experiment!r}, the experiment being imported"
        )
    if exp is None:
        raise BadRecord("missing key experimentName")
    if not isinstance(exp, str) or not exp:
        raise BadRecord(f"experimentName must be a non-empty text, not {exp!r}")
    if "experimentFilePath" not in record:
        raise BadRecord("missing key experimentFilePath")
    path = check_relative_path(record["experimentFilePath"], "experimentFilePath")
    if "fileSize" not in record:
        raise BadRecord("missing key fileSize")
    size = parse_size(record["fileSize"], from_text=from_text)
    md5 = parse_md5(record.get("md5Sum"))
    created = parse_time(record.get("fileCreationTime"), "fileCreationTime", tz)
    modified = parse_time(record.get("fileModificationTime"), "fileModificationTime", tz)
    meta = {k: jsonable(v) for k, v in record.items() if k not in FILE_KEYS}
    raw_replicas = record.get("replicas")
    if isinstance(raw_replicas, str) and from_text:  # a csv cell holding the JSON list
        try:
            raw_replicas = orjson.loads(raw_replicas)
        except orjson.JSONDecodeError:
            raise BadRecord("replicas must be a JSON list of {location, path, verified}") from None
    if raw_replicas is None:
        reps = []
    elif isinstance(raw_replicas, list):
        reps = [replica_row(r, i, known_locations) for i, r in enumerate(raw_replicas)]
    else:
        raise BadRecord("replicas must be a list of {location, path, verified}")
    if md5 is None and any(r.state == "verified" for r in reps):
        raise BadRecord(
            "a replica is marked verified but the file has no md5Sum: verified means its "
            "checksum matched the file's md5 (give md5Sum, or leave verified out)"
        )
    name, ext = name_and_ext(path)
    meta_json = dump_json(meta or None)
    if meta_json is not None and "\\u0000" in meta_json:
        raise BadRecord("a metadata value holds a NUL character, which the catalog cannot store")
    return FileRow(exp, path, name, ext, size, md5, created, modified, meta_json, reps)


def plain_path(path: Any) -> bool:
    """The common case of check_relative_path, without building a message."""
    return (
        type(path) is str
        and path != ""
        and path[0] not in "/."
        and path[-1] != "/"
        and "//" not in path
        and "/." not in path
        and CONTROL.search(path) is None
    )


TIME_TYPES = frozenset({float, int, type(None)})


def fast_file_row(record: dict[str, Any], known_locations: frozenset[str] | None) -> FileRow | None:
    """A jsonl file record in the usual shape, accepted with a few type tests; anything
    else (and every record with a problem) returns None and goes through file_row,
    which accepts a superset of this and words the errors."""
    exp = record.get("experimentName")
    path = record.get("experimentFilePath")
    size = record.get("fileSize")
    md5 = record.get("md5Sum")
    created = record.get("fileCreationTime")
    modified = record.get("fileModificationTime")
    raw_replicas = record.get("replicas", ())
    if not (
        type(exp) is str
        and exp
        and plain_path(path)
        and type(size) is int
        and 0 <= size <= MAX_SIZE
        and (md5 is None or (type(md5) is str and MD5_RE.fullmatch(md5) is not None))
        and type(created) in TIME_TYPES
        and type(modified) in TIME_TYPES
        and type(raw_replicas) in (list, tuple)
    ):
        return None
    reps = []
    for raw in raw_replicas:
        if type(raw) is not dict or "state" in raw:
            return None
        location = raw.get("location")
        rpath = raw.get("path")
        verified = raw.get("verified", False)
        if not (
            type(location) is str
            and location
            and (known_locations is None or location in known_locations)
            and plain_path(rpath)
            and type(verified) is bool
        ):
            return None
        if verified and md5 is None:
            return None
        reps.append(ReplicaRow(location, rpath, "verified" if verified else "present"))
    meta = {k: v for k, v in record.items() if k not in FILE_KEYS}
    meta_json = orjson.dumps(meta, default=str).decode() if meta else None
    if meta_json is not None and "\\u0000" in meta_json:
        return None
    name, ext = name_and_ext(path)
    return FileRow(
        exp,
        path,
        name,
        ext,
        size,
        md5.lower() if md5 else None,
        None if created is None else float(created),
        None if modified is None else float(modified),
        meta_json,
        reps,
    )


def replica_row(raw: Any, index: int, known_locations: frozenset[str] | None) -> ReplicaRow:
    where = f"replicas[{index}]"
    if not isinstance(raw, dict):
        raise BadRecord(f"{where} must be an object with location, path and verified")
    location = raw.get("location")
    if not isinstance(location, str) or not location:
        raise BadRecord(f"{where} is missing key location")
    if known_locations is not None and location not in known_locations:
        raise BadRecord(
            f"{where}.location {location!r} is not a location of the site config "
            f"(known: {', '.join(sorted(known_locations)) or 'none'})"
        )
    path = check_relative_path(raw.get("path"), f"{where}.path")
    if "state" in raw:
        state = raw["state"]
        if state not in REPLICA_STATES:
            raise BadRecord(f"{where}.state must be one of {', '.join(REPLICA_STATES)}")
    else:
        verified = raw.get("verified", False)
        if not isinstance(verified, bool):
            raise BadRecord(f"{where}.verified must be true or false, not {verified!r}")
        state = "verified" if verified else "present"
    return ReplicaRow(location, path, state)


def _named(value: Any, key: str) -> str | None:
    """The DM service nests some names (`experimentStation: {name: ...}`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    raise BadRecord(f"{key} must be a name or an object with a name, not {value!r}")


EXPERIMENT_KEYS = frozenset(
    {
        "record",
        "name",
        "station",
        "stationName",
        "experimentStation",
        "experimentType",
        "type",
        "description",
        "startDate",
        "endDate",
        "users",
        "experimentUsernameList",
        "_id",
    }
)


def experiment_row(record: dict[str, Any], tz: tzinfo) -> ExperimentRow:
    """Accepts both our jsonl experiment record and the DM service's experiment JSON."""
    if "name" not in record:
        raise BadRecord("missing key name (the experiment's name)")
    name = check_name(record["name"], "name")
    station = _named(
        record.get("station", record.get("experimentStation", record.get("stationName"))),
        "station",
    )
    if station is not None:
        station = check_name(station, "station")
    exp_type = _named(record.get("experimentType", record.get("type")), "experimentType")
    description = record.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRecord(f"description must be text, not {description!r}")
    users = record.get("users", record.get("experimentUsernameList"))
    if users is not None and (
        not isinstance(users, list) or not all(isinstance(u, str) for u in users)
    ):
        raise BadRecord("users must be a list of user names")
    start = parse_time(record.get("startDate"), "startDate", tz)
    end = parse_time(record.get("endDate"), "endDate", tz)
    meta = {k: jsonable(v) for k, v in record.items() if k not in EXPERIMENT_KEYS}
    row = ExperimentRow(name, station, exp_type, description, start, end, users, meta or None)
    if "\x00" in repr(row):
        raise BadRecord("a value holds a NUL character, which the catalog cannot store")
    return row


def record_kind(record: dict[str, Any]) -> str:
    """`record` says the kind; the DM service's own JSON has no such key, so infer it."""
    kind = record.get("record")
    if kind is not None:
        if kind not in ("file", "experiment"):
            raise BadRecord(f"record must be 'file' or 'experiment', not {kind!r}")
        return kind
    if "experimentFilePath" in record:
        return "file"
    if "name" in record and (
        "experimentStation" in record or "stationName" in record or "station" in record
    ):
        return "experiment"
    raise BadRecord('cannot tell the record\'s kind: add "record": "file" or "experiment"')
