"""The three backends of the predicate IR select exactly the same files.

Each corner case of spec/rules.md section 4 is a row: an expression and the files it
must select from one hand-made catalog, checked on Python (the reference), SQLite,
PostgreSQL (whose test database has an ICU collation, so text order must be asked
for) and the Mongo filter on mongomock. The hypothesis test at the end does the same
for random catalogs and random well-typed expressions, with no expected answer but
agreement.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import mongomock
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mongomock.database import Database
from sqlalchemy import Engine

from policyd.catalog.db import open_catalog
from policyd.grammar.dsl import parse_expression
from policyd.rules import ir, mongo_filter, pyeval
from policyd.rules.typecheck import FILE_WHERE, check_expression
from tests.rules.backend_helpers import (
    BINDINGS,
    DAY,
    NOW,
    SITE_TZ,
    Catalog,
    Experiment,
    File,
    load_mongo,
    load_sql,
    lower,
    select_mongo,
    select_python,
    select_sql,
)

MD5 = "0123456789abcdef0123456789abcdef"
JAN31_LOCAL = datetime(2026, 1, 31, tzinfo=SITE_TZ).timestamp()  # 06:00Z
JAN31_UTC = datetime(2026, 1, 31, tzinfo=UTC).timestamp()
JUL1_LOCAL = datetime(2026, 7, 1, tzinfo=SITE_TZ).timestamp()  # 05:00Z, summer time

E1 = Experiment(
    "E1", users=["d64944", "alice"], meta={"doi": "10.1/x", "n": 5}, start=NOW - 400 * DAY
)
E2 = Experiment("E2", station="1ID", users=[], start=NOW - 300 * DAY, end=NOW - 200 * DAY)
E3 = Experiment(
    "E3", station=None, meta={"doi": None, "flag": True}, start=NOW - 10 * DAY, end=NOW + 10 * DAY
)

FILES = {
    "f1": File(
        "E1",
        "scan1/a.h5",
        size=10_000_000_001,
        md5=MD5,
        created=JAN31_LOCAL,
        modified=NOW - 100 * DAY,
        meta={"sample": "x", "n": 3, "flag": True, "beam-energy": 8},
        verified_on=("voyager",),
    ),
    "f2": File(
        "E1",
        "scan1/sub/b.H5",
        size=500,
        created=JAN31_UTC,
        modified=NOW - 10 * DAY,
        meta={"sample": "y", "n": "3", "flag": "true"},
    ),
    "f3": File(
        "E1",
        "a.h5",
        size=0,
        created=JUL1_LOCAL,
        modified=NOW - 91 * DAY,
        meta={"sample": None, "n": 3.5, "flag": 1},
    ),
    "f4": File("E1", "scratch/x*y?.tif", size=None),
    "f5": File(
        "E2",
        "scratch/b/c.tif",
        size=10_000_000_000,
        modified=NOW - 89 * DAY,
        meta={"n": False, "tags": ["x", "y"]},
        verified_on=("tape",),
    ),
    "f6": File("E2", ".hidden", size=1, meta={"sample": "X"}),
    "f7": File("E2", "a/b", size=2, meta={"sample": ["x"]}),
    "f8": File("E2", "line\nbreak/f.h5", size=3, meta={"sample": {"k": "x"}}),
    "f9": File("E3", "é/Zeta.h5", size=4, meta={"n": -1}),
    "f10": File("E3", "scan2/a.b.tar.gz", size=5, meta={"n": 10}),
    "f11": File("E3", "a/x/y/b", size=6),
    "f12": File("E3", "dir/x.", size=7),
    "f13": File("E3", "back\\slash/a[1].h5", size=8),
}
CATALOG = Catalog([E1, E2, E3], list(FILES.values()))
LABEL = {(f.experiment, f.path): label for label, f in FILES.items()}
ALL = " ".join(FILES)

# (expression, the labels of the files it selects)
CASES: list[tuple[str, str]] = [
    # null is a value for == and !=; ordering, like, matches, in with null are false;
    # `not` is plain negation
    ("not (experiment.end > now)", "f1 f2 f3 f4 f5 f6 f7 f8"),
    ("experiment.end > now", "f9 f10 f11 f12 f13"),
    ("experiment.end is null", "f1 f2 f3 f4"),
    ('file.meta.sample != "x"', "f2 f3 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ('file.meta.sample == "x"', "f1"),
    ("file.meta.sample is null", "f3 f4 f5 f9 f10 f11 f12 f13"),
    ("file.meta.sample is not null", "f1 f2 f6 f7 f8"),
    ('not (file.meta.sample like "*")', "f3 f4 f5 f7 f8 f9 f10 f11 f12 f13"),
    ("file.meta.sample == experiment.meta.doi", "f5 f9 f10 f11 f12 f13"),
    ("file.size is null", "f4"),
    ("file.md5 is null", "f2 f3 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    (f'file.md5 == "{MD5}"', "f1"),
    ('file.md5 > "0"', "f1"),
    ("experiment.meta.doi is not null", "f1 f2 f3 f4"),
    ("experiment.meta.n == 5", "f1 f2 f3 f4"),
    ("experiment.meta.flag", "f9 f10 f11 f12 f13"),
    ("experiment.active", "f1 f2 f3 f4 f9 f10 f11 f12 f13"),
    ("not experiment.active", "f5 f6 f7 f8"),
    ('station == "8IDI"', "f1 f2 f3 f4"),
    ('station != "8IDI"', "f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("file.meta.fileSize is null", ALL),
    # metadata of mixed JSON types: text, number, bool, null, list, object, missing
    ("file.meta.n > 3", "f3 f10"),
    ("not (file.meta.n > 3)", "f1 f2 f4 f5 f6 f7 f8 f9 f11 f12 f13"),
    ("file.meta.n == 3", "f1"),
    ('file.meta.n == "3"', "f2"),
    ("file.meta.n < 0", "f9"),
    ("file.meta.n == false", "f5"),
    ("file.meta.flag == true", "f1"),
    ("file.meta.flag", "f1"),
    ("file.meta.flag != true", "f2 f3 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ('file.meta.tags == ["x", "y"]', "f5"),
    ('file.meta["beam-energy"] > 7', "f1"),
    # arithmetic with null gives null, and the comparison false
    ("file.size + 1 B > 0 B", "f1 f2 f3 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("not (file.size + 1 B > 0 B)", "f4"),
    ("file.meta.n + 1 > 4", "f3 f10"),
    ("not (file.meta.n - 1 < 100)", "f2 f4 f5 f6 f7 f8 f11 f12 f13"),
    # time arithmetic
    ("age(file.modified) > 90 days", "f1 f3"),
    ("not (age(file.modified) > 90 days)", "f2 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("file.modified < now - 90 days", "f1 f3"),
    ("file.modified + 30 days < now", "f1 f3 f5"),
    ("now - file.modified >= 89 days", "f1 f3 f5"),
    ("experiment.end > now - 180 days", "f9 f10 f11 f12 f13"),
    ("experiment.end is null or experiment.end > now - 180 days", "f1 f2 f3 f4 f9 f10 f11 f12 f13"),
    # time literals: without an offset in the site timezone (with its summer time)
    ("file.created == 2026-01-31", "f1"),
    ("file.created == 2026-01-31T06:00:00Z", "f1"),
    ("file.created == 2026-01-31T00:00:00Z", "f2"),
    ("file.created == 2026-01-31T01:00:00+01:00", "f2"),
    ("file.created == 2026-07-01", "f3"),
    ("file.created < 2026-01-31", "f2"),
    ("file.created >= 2026-01-31T00:00", "f1 f3"),
    # like: `*` not across `/`, `**` across, `?` one character, escapes, name-only
    ('file.path like "*.h5"', "f1 f3 f8 f9 f13"),
    ('file.path like "*.H5"', "f2"),
    ('file.path like "scan1/*"', "f1"),
    ('file.path like "scan1/**"', "f1 f2"),
    ('file.path like "SCAN1/**"', ""),
    ('file.path like "a/**/b"', "f7 f11"),
    ('file.path like "**/b"', "f7 f11"),
    ('file.path like "?.h5"', "f1 f3 f8"),
    ('file.path like "scratch/x\\\\*y\\\\?.tif"', "f4"),
    ('file.path like "scratch/x?y?.tif"', "f4"),
    ('file.path like "scratch/x\\\\*y\\\\*.tif"', ""),
    ('file.path like "back\\\\\\\\slash/*"', "f13"),
    ('file.path like "a**"', "f1 f3 f10 f13"),
    ('file.path like "*"', ALL),
    ('file.path like "**"', ALL),
    ('file.name like "a*"', "f1 f3 f10 f13"),
    ('file.path like "line?break/*"', "f8"),
    # file.dir, file.name, file.ext
    ('file.dir == ""', "f3 f6"),
    ('file.dir == "scan1"', "f1"),
    ('file.dir == "a/x/y"', "f11"),
    ('file.dir in ["a", "scratch"]', "f4 f7"),
    ('file.dir like "scan*"', "f1 f10"),
    ('file.dir like "scan1/**"', "f2"),
    ('file.dir like "**"', ALL),
    ('file.name == "b"', "f7 f11"),
    ('file.name in ["a.h5", ".hidden"]', "f1 f3 f6"),
    ('file.name != "a.h5"', "f2 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ('file.ext == "h5"', "f1 f3 f8 f9 f13"),
    ('file.ext == ""', "f6 f7 f11 f12"),
    ('file.ext == "gz"', "f10"),
    ('file.ext == "tar.gz"', ""),
    ('file.ext in ["tif", "H5"]', "f2 f4 f5"),
    # matches: an unanchored search, `^` and `$` the ends of the text, `.` any character
    ('file.path matches "h5$"', "f1 f3 f8 f9 f13"),
    ('file.path matches "^scan"', "f1 f2 f10"),
    ('file.path matches "line.break"', "f8"),
    ('file.path matches "^break"', ""),
    ('file.path matches "line$"', ""),
    ('file.path matches "é"', "f9"),
    ('file.path matches "[A-Z]"', "f2 f9"),
    ('file.path matches "\\\\d/"', "f1 f2 f10"),
    ('file.meta.sample matches "^x$"', "f1"),
    # in: constant lists and experiment.users
    ('file.ext in ["h5", "tif"]', "f1 f3 f4 f5 f8 f9 f13"),
    ('"d64944" in experiment.users', "f1 f2 f3 f4"),
    ('not ("d64944" in experiment.users)', "f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("file.meta.n in [3, 10]", "f1 f10"),
    ('file.meta.sample in ["x", "X"]', "f1 f6"),
    ('file.meta.sample in ["x", null]', "f1"),
    ('not (file.meta.sample in ["x"])', "f2 f3 f4 f5 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("file.meta.n in [false]", "f5"),
    # sizes and units; bare numbers are bytes
    ("file.size > 10 GB", "f1"),
    ("file.size >= 10 GB", "f1 f5"),
    ("file.size < 1 KiB", "f2 f3 f6 f7 f8 f9 f10 f11 f12 f13"),
    ("file.size <= 2", "f3 f6 f7"),
    ("file.size == 0", "f3"),
    # percent: a fraction
    ("file.meta.n > 50%", "f1 f3 f10"),
    ('usage("voyager") > 80%', ALL),
    ('usage("voyager") > 95%', ""),
    # text order is by code point ("X" < "a"), whatever the database's collation
    ('file.meta.sample < "a"', "f6"),
    ('file.path > "scan1/sub"', "f2 f4 f5 f9 f10"),
    ('experiment.name < "E2"', "f1 f2 f3 f4"),
    # what only some backends express is left to the Python residual
    ("copies() >= 1", "f1 f5"),
    ('copies(tier = "tape") == 1', "f5"),
    ('file.size > 1 KB and (copies() == 0 or file.meta.sample == "x")', "f1"),
]


def expected(labels: str) -> frozenset[tuple[str, str]]:
    return frozenset((FILES[x].experiment, FILES[x].path) for x in labels.split())


def shown(selected: frozenset[tuple[str, str]]) -> str:
    return " ".join(sorted(LABEL[key] for key in selected))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def sql_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One catalog database per backend for the whole module; tests load what they need."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('backends') / 'catalog.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = open_catalog(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def mongo_db() -> Database:
    db: Database = mongomock.MongoClient().dm
    return db


@pytest.fixture
def sql_catalog(sql_engine: Engine) -> Engine:
    """`sql_engine` holding CATALOG (the hypothesis test loads others in between)."""
    load_sql(sql_engine, CATALOG)
    return sql_engine


@pytest.fixture
def mongo_catalog(mongo_db: Database) -> Database:
    load_mongo(mongo_db, CATALOG)
    return mongo_db


def _case_id(case: tuple[str, str]) -> str:
    return case[0]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_python_and_mongo(case: tuple[str, str], mongo_catalog: Database) -> None:
    text, labels = case
    node = lower(text)
    assert shown(select_python(node, CATALOG)) == shown(expected(labels))
    assert shown(select_mongo(mongo_catalog, node, CATALOG)) == shown(expected(labels))


def test_sql(sql_catalog: Engine) -> None:
    """Every case on one database (a test per case would reload it each time)."""
    wrong = []
    for text, labels in CASES:
        got = shown(select_sql(sql_catalog, lower(text), CATALOG))
        if got != shown(expected(labels)):
            wrong.append(f"{text}: got {got!r}, want {labels!r}")
    assert not wrong, "\n".join(wrong)


# ---- what the Mongo filter says itself, and what it leaves to Python

PUSHED_WHOLE = [
    "not (experiment.end > now)",
    'file.meta.sample != "x"',
    "file.meta.sample == experiment.meta.doi",
    "age(file.modified) > 90 days",
    'file.path like "a/**/b"',
    'file.path like "*.h5"',
    'file.dir like "**"',
    'file.ext == ""',
    'file.name in ["a.h5", ".hidden"]',
    'file.path matches "line$"',
    'file.meta.sample in ["x", "X"]',
    "file.size > 10 GB",
    '"d64944" in experiment.users',
]
LEFT_TO_PYTHON = [
    ("copies() >= 1", "Copies"),
    ("file.modified + 30 days < now", "Arith"),
    # bound, `end - X > d` is not made `X < end - d`: exact in reals, not in floats
    ("experiment.end - file.modified > 10 days", "Arith"),
    ('file.path matches "\\\\d"', "Unicode class"),
    ("file.path < file.name or file.size > 1 B", "two values of the document"),
    ('file.name < "b"', "ordering on file.name"),
    ('file.meta.tags == ["x", "y"]', "comparing lists"),
]


@pytest.mark.parametrize("text", PUSHED_WHOLE)
def test_mongo_pushes_these_whole(text: str) -> None:
    for experiment in CATALOG.experiments:
        split = mongo_filter.pushdown(lower(text), experiment.values())
        assert split.residual is None, split.reasons


@pytest.mark.parametrize(("text", "reason"), LEFT_TO_PYTHON)
def test_mongo_leaves_these_to_python(text: str, reason: str) -> None:
    split = mongo_filter.pushdown(lower(f"file.size > 1 B and ({text})"), E2.values())
    assert split.residual is not None
    assert split.filter == {"fileSize": {"$type": "number", "$not": {"$type": "array"}, "$gt": 1}}
    assert any(reason in r for r in split.reasons), split.reasons


def test_mongo_binds_the_experiment_and_folds() -> None:
    node = lower("experiment.end is null or file.size > 5 B")
    assert mongo_filter.pushdown(node, E1.values()).filter == mongo_filter.EVERYTHING
    split = mongo_filter.pushdown(lower("experiment.end is null and file.size > 5 B"), E2.values())
    assert split.filter == mongo_filter.NOTHING
    assert split.residual is None


def test_mongo_regex_end_is_the_end_of_the_text() -> None:
    """PCRE's `\\Z` also matches before a final newline; the filter must not."""
    assert mongo_filter.pcre("(?s)a\\Z") == "(?s)a(?!.)"
    assert mongo_filter.pcre("(?s)a\\\\Z") == "(?s)a\\\\Z"
    assert mongo_filter.pcre("\\v") == "\\x0b"
    with pytest.raises(ir.Unsupported):
        mongo_filter.pcre("\\w+")


def test_mongo_reads_odd_documents_as_document_row() -> None:
    """Documents the SQL catalog could not hold (a text size, an empty md5, an array
    where a number belongs) are read by the filter exactly as `document_row` reads
    them, so the filter and the Python residual agree on them."""
    db: Database = mongomock.MongoClient().dm
    odd = [
        {"experimentFilePath": "a", "fileSize": "12", "md5Sum": ""},
        {"experimentFilePath": "b", "fileSize": True, "md5Sum": None},
        {"experimentFilePath": "c", "fileSize": [5, 50], "fileModificationTime": "2026-01-01"},
        {"experimentFilePath": "d", "fileSize": 5.0, "md5Sum": MD5.upper()},
        {"experimentFilePath": "e", "fileSize": 50, "fileModificationTime": [1.0]},
    ]
    db.odd.insert_many(odd)
    experiment = Experiment("odd").values()
    texts = {
        "file.size > 1 B": "d e",
        "file.size is null": "a b c",
        "not (file.size == 5)": "a b c e",
        "not (file.md5 is null)": "d",
        "file.modified is null": "a b c d e",
        'file.md5 like "*"': "d",
    }
    for text, want in texts.items():
        node = lower(text)
        split = mongo_filter.pushdown(node, experiment)
        assert split.residual is None, text
        found = sorted(d["experimentFilePath"] for d in db.odd.find(split.filter))
        test = pyeval.compile_python(node)
        by_row = sorted(
            d["experimentFilePath"] for d in odd if test(mongo_filter.document_row(d, experiment))
        )
        assert " ".join(found) == want, text
        assert by_row == found, text


# ---- random catalogs and expressions


def quoted(text: str) -> str:
    """`text` as a DSL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Awkward paths: glob and LIKE wildcards, a backslash, a newline, dots, non-ASCII
# letters, upper case, a top-level name, a dot-file.
PATHS = [
    "a.h5",
    "scan1/a.h5",
    "scan1/sub/B.H5",
    "a/b",
    "a/x/b",
    ".hidden",
    "dir/x.",
    "scratch/%_x*y?.tif",
    "back\\slash/a[1].h5",
    "line\nbreak/f.h5",
    "é/Zeta.tar.gz",
    "scan 2/..h5",
]
TEXTS = ["x", "X", "", "a.h5", "h5", "scan1", "a/b", "é", "E1", "8IDI", "d64944", "B", "a"]
JSON_VALUES = st.one_of(
    st.sampled_from(TEXTS),
    st.integers(-3, 12),
    st.sampled_from([0.5, 3.5, -1.25, 1e10]),
    st.booleans(),
    st.none(),
    st.sampled_from([["x"], [1, "x"], [], {"k": "x"}]),
)
TIMES = st.one_of(
    st.none(),
    st.builds(
        lambda days, frac: NOW + days * DAY + frac,
        st.integers(-400, 60),
        st.sampled_from([0.0, 0.25, 3600.0]),
    ),
)
USERS = ["d64944", "alice", "Bob"]


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    names = draw(
        st.lists(st.sampled_from(["E1", "e-2", "é 3"]), min_size=1, max_size=3, unique=True)
    )
    exps = [
        Experiment(
            name,
            station=draw(st.sampled_from(["8IDI", "1ID", None])),
            type=draw(st.sampled_from([None, "x", "B"])),
            description=draw(st.sampled_from([None, "", "a.h5"])),
            start=draw(TIMES),
            end=draw(TIMES),
            users=draw(st.one_of(st.none(), st.lists(st.sampled_from(USERS), unique=True))),
            meta=draw(
                st.one_of(
                    st.none(),
                    st.dictionaries(
                        st.sampled_from(["doi", "n", "flag", "sample"]), JSON_VALUES, max_size=3
                    ),
                )
            ),
            pinned_until=draw(TIMES),
        )
        for name in names
    ]
    files = []
    for e in exps:
        for path in draw(st.lists(st.sampled_from(PATHS), max_size=4, unique=True)):
            files.append(
                File(
                    e.name,
                    path,
                    size=draw(st.sampled_from([None, 0, 1, 999, 1000, 10**10, 10**10 + 1, 2**40])),
                    md5=draw(st.sampled_from([None, MD5, "f" * 32])),
                    created=draw(TIMES),
                    modified=draw(TIMES),
                    meta=draw(
                        st.dictionaries(
                            st.sampled_from(["sample", "n", "flag", "tags", "beam-energy"]),
                            JSON_VALUES,
                            max_size=3,
                        )
                    ),
                    verified_on=tuple(
                        draw(st.lists(st.sampled_from(["voyager", "tape"]), unique=True))
                    ),
                )
            )
    return Catalog(exps, files)


def _values(attributes: list[str], literals: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(attributes + literals)


META = [
    "file.meta.sample",
    "file.meta.n",
    "file.meta.flag",
    "file.meta.tags",
    'file.meta["beam-energy"]',
    "file.meta.fileSize",
    "experiment.meta.doi",
    "experiment.meta.n",
    "experiment.meta.sample",
]
text_values = st.one_of(
    _values(
        [
            "file.path",
            "file.name",
            "file.dir",
            "file.ext",
            "file.md5",
            "experiment.name",
            "experiment.type",
            "experiment.station",
            "experiment.description",
            "station",
        ],
        [quoted(t) for t in TEXTS],
    ),
    st.sampled_from(META),
)
number_values = st.one_of(
    _values(META, ["0", "3", "-1", "3.5", "0.5", "12", "10000000000", "-file.meta.n"]),
    st.builds(
        lambda m, op, n: f"({m} {op} {n})",
        st.sampled_from(META),
        st.sampled_from("+-"),
        st.sampled_from(["1", "0.5"]),
    ),
)
size_values = st.one_of(
    _values(["file.size"], ["0 B", "1 KB", "999", "10 GB", "1 KiB", "1 TiB"]),
    st.builds(
        lambda op, n: f"(file.size {op} {n})",
        st.sampled_from("+-"),
        st.sampled_from(["1 B", "1 KB"]),
    ),
)
base_times = _values(
    ["file.created", "file.modified", "experiment.start", "experiment.end", "now"],
    ["2026-01-31", "2026-01-31T12:00:00Z", "2025-06-01T08:30:00-05:00", "2026-05-28T15:26:40"],
)
time_values = st.one_of(
    base_times,
    st.builds(
        lambda t, op, d: f"({t} {op} {d})",
        base_times,
        st.sampled_from("+-"),
        st.sampled_from(["30 days", "1 h", "0.25 s"]),
    ),
)
duration_values = st.one_of(
    st.sampled_from(["90 days", "1 h", "0 s", "10 days"]),
    st.builds(lambda t: f"age({t})", base_times),
    st.builds(lambda a, b: f"({a} - {b})", base_times, base_times),
)
bool_values = st.sampled_from(
    [
        "experiment.active",
        "experiment.pinned",
        "file.meta.flag",
        "experiment.meta.flag",
        "true",
        "false",
    ]
)
any_values = st.one_of(
    text_values, number_values, size_values, time_values, duration_values, bool_values
)
lists = st.sampled_from(
    [
        '["x", "X"]',
        "[1, 3.5, 10]",
        "[]",
        '["d64944", null]',
        "[true]",
        '["h5", "tif", ""]',
        '["scan1", "a", ""]',
        "experiment.users",
        "file.meta.tags",
        "experiment.meta.sample",
    ]
)
GLOB_PIECES = [
    "*",
    "**",
    "?",
    "/",
    "a",
    ".h5",
    "scan1",
    "b",
    "\\*",
    "é",
    "x",
    "\\\\",
    "**/",
    ".",
    "%",
    "[",
]
REGEX_PIECES = [
    "^",
    "$",
    ".",
    "a",
    "h5",
    "\\.",
    "[a-c]",
    "(a|b)",
    "*",
    "+",
    "/",
    "é",
    "\\d",
    "[^/]",
    "x?",
    "\\n",
    "B",
]
globs = st.lists(st.sampled_from(GLOB_PIECES), min_size=1, max_size=5).map(
    lambda p: quoted("".join(p))
)
regexes = st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=5).map(
    lambda p: quoted("".join(p))
)
ORDER = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


def _compare(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, op, b: f"{a} {op} {b}", values, ORDER, values)


atoms = st.one_of(
    _compare(text_values),
    _compare(number_values),
    _compare(st.one_of(size_values, st.sampled_from(["0", "1000", "1.5"]))),
    _compare(time_values),
    _compare(duration_values),
    st.builds(lambda a, op, b: f"{a} {op} {b}", st.sampled_from(META), ORDER, any_values),
    st.builds(
        lambda a, op, b: f"{a} {op} {b}", bool_values, st.sampled_from(["==", "!="]), bool_values
    ),
    st.builds(lambda a, g: f"{a} like {g}", text_values, globs),
    st.builds(lambda a, r: f"{a} matches {r}", text_values, regexes),
    st.builds(
        lambda a, b: f"{a} in {b}", st.one_of(text_values, number_values, bool_values), lists
    ),
    st.builds(lambda a, n: f"{a} is {n}null", any_values, st.sampled_from(["", "not "])),
    bool_values,
    st.sampled_from(["copies() >= 1", 'copies(tier = "tape") == 0', 'usage("voyager") > 80%']),
)
conditions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=6,
)


def well_typed(text: str) -> ir.Node | None:
    """The IR of `text` where `check` accepts it (the planner is given checked rules)."""
    expr, _ = parse_expression(text, "t.policy")
    if expr is None or check_expression(expr, FILE_WHERE)[1]:
        return None
    return ir.lower(expr, BINDINGS)


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(catalog=catalogs(), texts=st.lists(conditions, min_size=1, max_size=6))
def test_backends_agree(
    sql_engine: Engine, mongo_db: Database, catalog: Catalog, texts: list[str]
) -> None:
    """Several expressions per catalog: loading it is the slow part."""
    nodes = [(text, node) for text in texts if (node := well_typed(text)) is not None]
    assume(nodes)
    load_sql(sql_engine, catalog)
    load_mongo(mongo_db, catalog)
    for text, node in nodes:
        want = select_python(node, catalog)
        assert select_sql(sql_engine, node, catalog) == want, text
        assert select_mongo(mongo_db, node, catalog) == want, text
