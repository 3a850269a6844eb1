"""Reconciliation: the rules against the catalog and the storage state -> a Plan.

The database narrows, Python decides. Each selected rule's `where` is pushed down as
SQL together with "this file may need something" (no verified replica where the rule
wants one, a replica where it releases, no job for this content, ...), so one query
over files streams just the candidates, in file order, with every enabled rule's
match flag computed by the database (a `where` that reads `usage`, `used`, `free` or
`time_to_full` stays in Python, lowered again as the plan's own copies and deletes
change those). For each candidate, Python takes the flags (and evaluates whatever part
of a rule SQL could not express), the file's replicas, and
decides per spec/rules.md section 5: the desired replicas and locks of every enabled
rule, copies with their sources, deletes only above the safety floor, expires,
workflow runs. Threshold releases and fixity checks need a global order (`order by`,
least recently verified), so they run after, each as its own ordered query that
stops as soon as it has enough. Alarms and grants are per location and per experiment.

The planner writes nothing. Given the same catalog, config, rules and `now`, it makes
the same plan: every order it depends on is spelled out (file id, config order,
location order, `order by` then file id).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    and_,
    any_,
    bindparam,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from policyd.catalog.db import shown
from policyd.catalog.schema import actions as actions_table
from policyd.catalog.schema import (
    alarm_states,
    experiments,
    files,
    grants,
    jobs,
    locations,
    notices,
    replicas,
)
from policyd.gcpause import gc_paused
from policyd.grammar import ast
from policyd.planner import pg_reader, sqlite_reader
from policyd.planner.fingerprint import catalog_fingerprint
from policyd.planner.layout import (
    DEFAULT_LAYOUT,
    NO_STATION_LAYOUT,
    Template,
    TemplateError,
    reads_file_meta,
)
from policyd.planner.plan import (
    Action,
    AlarmChange,
    Blocked,
    Notice,
    Plan,
    PlanError,
    Suspended,
    iso,
)
from policyd.planner.prefetch import prefetched
from policyd.planner.reader import (
    Catalog,
    Processing,
    ReaderProcess,
    Request,
    driver_statement,
    ids_of,
    json_ids,
    processed,
    read_batches,
    result_processing,
)
from policyd.planner.storage import StorageState
from policyd.rules import ir, model
from policyd.rules.pyeval import Evaluator, ReplicaView, Row, compile_python
from policyd.rules.sqlgen import (
    MASKED_IDS,
    CatalogLocations,
    Pushdown,
    Sources,
    SqlCompiler,
    bit_count,
    experiment_columns,
    file_columns,
    has_bit,
    pushdown,
)
from policyd.rules.typecheck import expression_text
from policyd.stations.config import SiteConfig
from policyd.units import format_duration

BATCH = 2000
#: A started reader process, and how it reaches the catalog.
Reader = tuple[ReaderProcess, Catalog]
#: A catalog with at least this many files has its file pass read by a reader process
#: (reader.py), which reads while the planner decides.
READER_FROM_FILES = 50_000
#: About how many files a PostgreSQL reader process reads per id range of its file query.
RANGE_FILES = 100_000
#: For the transactions the planner reads PostgreSQL in. JIT-compiling the planner's
#: wide expressions costs seconds per query. And the planner reads every row its
#: cursors return: they are planned for all of their rows, not the first tenth;
#: otherwise the file pass walks the files' primary key in order, a heap visit per
#: file, where a scan and a sort of the few candidates is a fraction of that (steady
#: state at 1M files: 3.1 s -> 1.4 s).
PG_SETTINGS = {"jit": "off", "cursor_tuple_fraction": "1.0"}
#: For the reader process's file query, an id range at a time: a bitmap scan of the
#: range reads the table's pages in order, where an index scan visits the heap per row
#: (1M files: 1.0 s against 1.4 s).
PG_CHUNK_SETTINGS = {"enable_indexscan": "off"}
GOOD = ("present", "verified")
#: The replica states each of a file row's masks has a bit for (migration 0003).
MASKS = {frozenset({"verified"}): "verified_on", frozenset({*GOOD, "corrupt"}): "held_on"}
#: Each file rule's match flag for a row, as the database gives it: true, false, 1, 0
#: or null. Read for its truth, and the key of the rules a row hits.
Flags = tuple[object, ...]
#: What a row without replicas or jobs holds (shared: nothing changes them).
NO_REPLICAS: tuple[Replica, ...] = ()
NO_JOBS: frozenset[tuple[str, str]] = frozenset()
#: The kinds of action that change what a later pass may do to a file.
FILE_STATE_KINDS = frozenset({"verify", "copy", "delete", "expire"})
#: Functions whose value changes as the plan copies and deletes (spec/rules.md 5).
STORAGE_FUNCTIONS = frozenset({"usage", "used", "free", "time_to_full"})


@dataclass(slots=True)
class Replica(ReplicaView):
    """A replica as the planner reads it: what predicates see, and its size and last
    verification for the safety floor. One object serves both, so a row's replicas are
    built once."""

    size: int | None
    verified_at: float | None


@dataclass
class FileRule:
    """One file-level statement of a rule, compiled for this plan."""

    rule: model.Rule
    statement: model.Statement
    where: ir.Node
    push: Pushdown
    residual: Evaluator | None
    flag: str
    selected: bool
    dynamic: bool = False  # the where reads storage: decided per file with the plan so far
    index: int = 0  # its flag's place in a row's flags
    verb: str = field(init=False)
    name: str = field(init=False)
    # the database's flag decides the match alone
    flag_decides: bool = field(init=False)

    def __post_init__(self) -> None:
        self.verb = self.statement.verb
        self.name = self.rule.name
        self.flag_decides = self.residual is None and not self.dynamic


@dataclass
class Matched:
    """What one set of matching rules asks of a file, whatever the file."""

    key: tuple[int, ...]  # the rules' indexes
    protected: list[FileRule]
    expires: list[FileRule]  # selected
    winner: FileRule | None  # the place rule whose layout and location win
    releasing: set[str]  # locations a matching release or archive frees
    wishes: list[FileRule]  # archive and replicate rules, in rule order
    acts: list[FileRule]  # selected archive, release (without `when`) and run rules

    @classmethod
    def of(cls, key: tuple[int, ...], matched: list[FileRule]) -> Matched:
        places = [fr for fr in matched if fr.verb == "place"]
        winner = max(places, key=lambda fr: (fr.rule.priority, -fr.rule.order), default=None)
        releasing: set[str] = set()
        for fr in matched:
            s = fr.statement
            if isinstance(s, model.Release):
                releasing.update(s.from_)
            elif isinstance(s, model.Archive):
                releasing.update(s.release_from)
        return cls(
            key=key,
            protected=[fr for fr in matched if fr.verb == "protect"],
            expires=[fr for fr in matched if fr.selected and fr.verb == "expire"],
            winner=winner,
            releasing=releasing,
            wishes=[fr for fr in matched if fr.verb in ("archive", "replicate")],
            acts=[
                fr
                for fr in matched
                if fr.selected
                and (
                    fr.verb in ("archive", "run")
                    or (fr.verb == "release" and fr.statement.when is None)  # type: ignore[union-attr]
                )
            ],
        )


@dataclass(slots=True)
class Planned:
    """What the plan already does to one file, for the passes after the first. A plan
    keeps one per file it acts on, so the few locations go in tuples, not sets."""

    verified: dict[str, str] = field(default_factory=dict)  # location -> verify action id
    deleted: tuple[str, ...] = ()
    # (source location, copy, its verify) of the copies the plan makes
    reads: tuple[tuple[str, str, str], ...] = ()
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Making:
    """What a file's wanted replicas come to: the same for every file with the same
    matching rules, replica states and pinning, so it is worked out once for them all
    (unless a `replicate` chose by free space, which the plan itself changes)."""

    # location -> the rules that want a replica there; shared by every file of its key,
    # so never written after it is made
    want: dict[str, list[FileRule]]
    # (the rule that makes it, location, copy source, a present replica to verify)
    steps: tuple[tuple[FileRule, str, str | None, bool], ...]


@dataclass
class PlanOptions:
    now: float
    rules: Sequence[str] = ()  # full or short names; empty means every rule
    station: str | None = None
    # the caller writes the plan as JSON: encode actions while waiting for the catalog
    json: bool = False


LIVE_REASON = "reads usage, used, free or time_to_full, which change as the plan copies and deletes"


class RuleSelectionError(ValueError):
    """`--rule` names no rule, or a short name more than one."""


def select_rules(rules: Sequence[model.Rule], names: Sequence[str]) -> set[str]:
    """Full names of the rules `--rule` picks (a short name where it is unambiguous)."""
    if not names:
        return {r.name for r in rules}
    chosen: set[str] = set()
    for name in names:
        exact = [r for r in rules if r.name == name]
        short = [r for r in rules if r.short_name == name]
        found = exact or short
        if not found:
            known = ", ".join(r.name for r in rules) or "none"
            raise RuleSelectionError(f"no rule named {name!r} (rules: {known})")
        if len(found) > 1:
            names_found = ", ".join(r.name for r in found)
            raise RuleSelectionError(
                f"{name!r} names several rules: {names_found}; give the full name"
            )
        chosen.add(found[0].name)
    return chosen


class Planner:
    def __init__(
        self,
        config: SiteConfig,
        engine: Engine,
        rules: Sequence[model.Rule],
        options: PlanOptions,
        progress: Callable[[int], None] | None = None,
        *,
        every_field: bool = False,
    ) -> None:
        """With `every_field`, rows carry every field whatever the rules read in Python
        (explain shows them all)."""
        self.config = config
        self.engine = engine
        self.now = options.now
        self.station = options.station
        self.json = options.json
        self.rules = [r for r in rules if not r.disabled]
        self.selected = select_rules(self.rules, options.rules)
        if self.station is not None:
            self.selected = {
                r.name
                for r in self.rules
                if r.name in self.selected and r.station in (None, self.station)
            }
        self.progress = progress
        self.storage = StorageState(config, engine, self.now)
        roots = {
            name: str(loc.root_path) for name, loc in config.locations.items() if loc.root_path
        }
        self.bindings = ir.Bindings(self.now, config.tzinfo, self.storage.value, roots)
        self.location_ids, tiers = _catalog_locations(engine)
        self.location_names = {v: k for k, v in self.location_ids.items()}
        self.sources = Sources(files, experiments, CatalogLocations(self.location_ids, tiers))
        self.min_copies = max(config.safety.min_copies, 1)
        self.grace = float(config.safety.release_grace or 0.0)
        self.grace_text = format_duration(self.grace)
        self.location_order = {name: i for i, name in enumerate(config.locations)}
        self.plan = Plan(
            config.site,
            self.now,
            "",
            max_delete_per_run=config.safety.max_delete_per_run,
        )
        # (experiment, path) -> what the plan does to the file, for the passes after
        # the first; read off the plan's actions when one of them first needs it
        self._planned: dict[tuple[str, str], Planned] | None = None
        self.templates: dict[str, Template] = {}
        self.summaries: dict[tuple[int, ...], Matched] = {}
        # flags -> the rules they hit, and what those ask when the flags decide them all
        self.by_flags: dict[Flags, tuple[list[FileRule], Matched | None]] = {}
        self.makings: dict[tuple[object, ...], Making] = {}
        self.error_keys: set[tuple[str, str | None, str | None, str]] = set()
        # storage changes made by the plan so far, and the storage-reading wheres lowered
        # at a given count of them
        self.storage_version = 0
        self.live: dict[str, tuple[int, Evaluator]] = {}
        self.with_cache: dict[str, list[tuple[str, Evaluator]]] = {}
        self.location_tiers = {name: loc.tier or "" for name, loc in config.locations.items()}
        self.experiment_rows: dict[int, Row] = {}
        batch_ids = _batch_ids(engine)
        self.replica_query = (
            select(
                replicas.c.file_id,
                replicas.c.location_id,
                replicas.c.state,
                replicas.c.path,
                replicas.c.size,
                replicas.c.verified_at,
            )
            .where(batch_ids(replicas.c.file_id))
            .order_by(replicas.c.file_id, replicas.c.location_id)
        )
        self.job_query = select(jobs.c.file_id, jobs.c.workflow, jobs.c.content).where(
            batch_ids(jobs.c.file_id)
        )
        self.ids_value = _ids_value(engine)
        self.notice_sent: dict[tuple[str, str, str], float] = {}
        self.pending_notices: dict[tuple[str, str, str], Notice] = {}
        self.file_rules = self._compile_file_rules()
        # the flags of the run rules: only the files one of them hits need their jobs
        self.run_flags = [fr.index for fr in self.file_rules if fr.verb == "run"]
        self.file_meta = every_field or self._reads_file_meta()

    # ---- compiling the rules

    def _compile_file_rules(self) -> list[FileRule]:
        out: list[FileRule] = []
        for rule in self.rules:
            for statement in rule.statements:
                if statement.verb not in model.FILE_VERBS and statement.verb != "verify":
                    continue
                where = ir.lower(statement.where, self.bindings, rule.station)  # type: ignore[union-attr]
                dynamic = any(
                    isinstance(node, ast.Call) and node.name in STORAGE_FUNCTIONS
                    for node in ast.walk(statement.where)  # type: ignore[union-attr]
                )
                if dynamic:
                    push, residual = Pushdown(None, where, [LIVE_REASON]), None
                else:
                    push = pushdown(where, self.sources)
                    residual = None if push.residual is None else compile_python(push.residual)
                out.append(
                    FileRule(
                        rule,
                        statement,
                        where,
                        push,
                        residual,
                        f"m{len(out)}",
                        rule.name in self.selected,
                        dynamic,
                        len(out),
                    )
                )
        return out

    def _reads_file_meta(self) -> bool:
        """Whether anything the planner evaluates in Python may read file.meta: a
        rule's residual or storage-reading where, a run's `with`, a layout."""
        nodes: list[ir.Node] = []
        for fr in self.file_rules:
            if fr.push.residual is not None:  # a storage-reading where is all residual
                nodes.append(fr.push.residual)
            s = fr.statement
            if isinstance(s, model.Run):
                nodes += [ir.lower_value(expr, self.bindings) for _, expr in s.with_]
            elif isinstance(s, model.Place):
                try:
                    if self.template(s.at).reads_file_meta:
                        return True
                except TemplateError:
                    continue  # renders nothing: each file it places gets the error
        return any(reads_file_meta(node) for node in nodes)

    def storage_change(self, location: str, station: str | None, size: int) -> None:
        """The plan adds (or, negative, frees) `size` bytes on `location`."""
        self.storage.add(location, station, size)
        self.storage_version += 1

    def error(self, error: PlanError) -> None:
        """Add a plan error once: a rule that fails the same way for several locations
        of one file (or several grants of one experiment) says so once."""
        key = (error.rule, error.experiment, error.file, error.message)
        if key not in self.error_keys:
            self.error_keys.add(key)
            self.plan.errors.append(error)

    def template(self, text: str) -> Template:
        if text not in self.templates:
            self.templates[text] = Template(text, self.config.tzinfo)
        return self.templates[text]

    # ---- catalog lookups

    def _replica_exists(self, names: Sequence[str], states: Sequence[str]) -> ColumnElement[bool]:
        ids = [self.location_ids[n] for n in names if n in self.location_ids]
        mask = MASKS.get(frozenset(states))
        if mask is not None and all(i < MASKED_IDS for i in ids):
            return has_bit(files.c[mask], ids) if ids else false()
        return exists().where(
            replicas.c.file_id == files.c.id,
            replicas.c.location_id.in_(ids),
            replicas.c.state.in_(states),
        )

    def _verified_count(self, names: Sequence[str]) -> ColumnElement[int]:
        ids = [self.location_ids[n] for n in names if n in self.location_ids]
        if all(i < MASKED_IDS for i in ids):
            return bit_count(files.c.verified_on, ids)
        return (
            select(func.count())
            .where(
                replicas.c.file_id == files.c.id,
                replicas.c.location_id.in_(ids),
                replicas.c.state == "verified",
            )
            .scalar_subquery()
        )

    def _candidate(self, fr: FileRule) -> ColumnElement[bool] | None:
        """SQL for "this file may need an action from this rule" (a superset)."""
        s = fr.statement
        where = fr.push.sql if fr.push.sql is not None else true()
        match s:
            case model.Place(on=on):
                need = ~self._replica_exists([on], ["verified"])
            case model.Replicate(copies=copies, on=on):
                need = self._verified_count(on) < copies
            case model.Archive(to=to, release_from=release_from):
                need = or_(
                    ~self._replica_exists([to], ["verified"]),
                    self._replica_exists(release_from, [*GOOD, "corrupt"]),
                )
            case model.Release(from_=from_, when=None):
                need = self._replica_exists(from_, [*GOOD, "corrupt"])
            case model.Expire():
                need = true()
            case model.Run(workflow=workflow):
                need = or_(
                    files.c.md5.is_(None),
                    ~exists().where(
                        jobs.c.file_id == files.c.id,
                        jobs.c.workflow == workflow,
                        jobs.c.content == files.c.md5,
                    ),
                )
            case _:
                return None
        return and_(where, need)

    def rows(
        self, conn: Connection, query: Any, reader: Reader | None = None
    ) -> Iterator[tuple[Row, Flags]]:
        """Rows of `query` (file columns and flags) with their experiment's fields, their
        replicas and jobs, batched: the query reads each file's own columns, and the few
        experiments are read once and shared by their files' rows. `reader`: the reader
        process to read them through; `query` is then the file pass's, in file id order
        alone, which a PostgreSQL reader reads an id range at a time."""
        # A large catalog's file pass is read by a process of its own (reader.py). Other
        # reads: PostgreSQL works in its own process while the planner decides, so a
        # thread reads ahead; SQLite works in this one, under the GIL for every row it
        # returns, so a thread would only take turns with the planner.
        if reader is not None:
            source = self._reader_batches(conn, query, *reader)
        elif conn.dialect.name == "postgresql":
            source = prefetched(self._read_ahead(query))
        else:
            source = self._batches(conn, query)
        names, tiers = self.location_names, self.location_tiers
        for columns, batch, replica_rows, job_rows in source:
            width = len(columns) - len(self.file_rules)
            keys = columns[:width]
            experiment_at = keys.index("experiment.id")
            self._load_experiments(conn, {r[experiment_at] for r in batch})
            by_file: dict[int, list[Replica]] = {}
            for file_id, location_id, state, path, size, verified_at in replica_rows:
                name = names.get(location_id)
                if name is None:
                    continue
                replica = Replica(name, tiers.get(name, ""), state, path, size, verified_at)
                listed = by_file.get(file_id)
                if listed is None:
                    by_file[file_id] = [replica]
                else:
                    listed.append(replica)
            job_content: dict[int, set[tuple[str, str]]] = {}
            for file_id, workflow, content in job_rows:
                job_content.setdefault(file_id, set()).add((workflow, content))
            experiments_by_id = self.experiment_rows
            for values in batch:
                file_id = values[0]
                row = experiments_by_id[values[experiment_at]].copy()
                row.update(zip(keys, values[:width], strict=True))
                row["replicas"] = by_file.get(file_id, NO_REPLICAS)
                row["_jobs"] = job_content.get(file_id, NO_JOBS)
                yield row, values[width:]

    def _batches(self, conn: Connection, query: Any) -> Iterator[Any]:
        """`query`'s batches with their replicas and jobs: (columns, rows, replica
        rows, job rows)."""
        result = conn.execute(query.execution_options(stream_results=True, yield_per=BATCH))
        keys = list(result.keys())
        runs = [len(keys) - len(self.file_rules) + i for i in self.run_flags]
        for batch in result.partitions():
            listed = {"ids": self.ids_value([r[0] for r in batch])}
            replica_rows = conn.execute(self.replica_query, listed).all()
            run_ids = ids_of(batch, runs)
            job_rows = (
                conn.execute(self.job_query, {"ids": self.ids_value(run_ids)}).all()
                if run_ids
                else []
            )
            yield keys, batch, replica_rows, job_rows

    def _start_reader(self, conn: Connection) -> Reader | None:
        """The reader process that reads the file pass, started, and how it reaches the
        catalog: for a catalog of READER_FROM_FILES files or more (below that,
        starting the process costs more than it saves)."""
        url, dialect = conn.engine.url, conn.dialect
        in_file = url.database not in (None, "", ":memory:") and not url.query
        if dialect.name == "sqlite" and in_file:
            database = str(Path(str(url.database)).resolve())
            reader = (sqlite_reader.PROGRAM, sqlite_reader.HINT)
            where: Catalog = {"source": database, "database": database}
        elif dialect.name == "postgresql" and dialect.driver == "psycopg2":
            _, connect = dialect.create_connect_args(url)
            reader = (pg_reader.PROGRAM, pg_reader.HINT)
            where = {"source": shown(url), "connect": connect, "settings": set_local(PG_SETTINGS)}
        else:
            return None
        most = conn.execute(select(func.max(files.c.id))).scalar_one_or_none() or 0
        if most < READER_FROM_FILES:
            return None
        return ReaderProcess(*reader), where

    def _reader_batches(
        self, conn: Connection, query: Any, reader: ReaderProcess, where: Catalog
    ) -> Iterator[Any]:
        """`_batches`, read by a reader process."""
        dialect = conn.dialect
        keys = list(query.selected_columns.keys())
        width = len(keys) - len(self.file_rules)
        lookups = [driver_statement(self.replica_query, dialect, ("ids",))]
        if self.run_flags:
            jobs_lookup = driver_statement(self.job_query, dialect, ("ids",))
            jobs_lookup["when"] = [width + i for i in self.run_flags]
            lookups.append(jobs_lookup)
        if dialect.name != "postgresql":
            statement = driver_statement(query, dialect)
        else:
            # an id range at a time: a sorted query's first row comes once the whole
            # scan is done, and the planner would wait for it with nothing to do
            ranged = query.where(
                files.c.id >= bindparam("chunk_low", None, type_=files.c.id.type),
                files.c.id < bindparam("chunk_high", None, type_=files.c.id.type),
            )
            statement = driver_statement(ranged, dialect, ("chunk_low", "chunk_high"))
        request: Request = {**where, "query": statement, "lookups": lookups, "batch": BATCH}
        if dialect.name == "postgresql":
            # ids have gaps: ranges are sized by the files' count as last analyzed
            analyzed = literal_column(
                "(SELECT reltuples FROM pg_class WHERE oid = 'files'::regclass)"
            )
            request["chunks"] = {
                "bounds": driver_statement(
                    select(func.min(files.c.id), func.max(files.c.id), analyzed), dialect
                ),
                "files": RANGE_FILES,
                "settings": set_local(PG_CHUNK_SETTINGS),
            }
        # the file columns' result processing (the flags are used as the driver gives them)
        processing: Processing = []

        def columns(codes: list[Any]) -> None:
            processing[:] = result_processing(query, dialect, width, codes)

        idle = self.plan.encode_ahead if self.json else None
        reading = read_batches(reader, request, columns, idle)
        for batch, (replica_rows, *job_rows) in reading:
            if processing:
                batch = [processed(row, processing) for row in batch]
            yield keys, batch, replica_rows, job_rows[0] if job_rows else []

    def _read_ahead(self, query: Any) -> Callable[[Callable[[Any], bool]], None]:
        """What reads `_batches` on a connection of its own, for `prefetched`."""

        def produce(put: Callable[[Any], bool]) -> None:
            with self.engine.connect() as conn:
                session_settings(conn)
                for item in self._batches(conn, query):
                    if not put(item):
                        return

        return produce

    def _load_experiments(self, conn: Connection, ids: set[int]) -> None:
        missing = [i for i in ids if i not in self.experiment_rows]
        if not missing:
            return
        query = select(experiments.c.id, *experiment_columns(self.sources)).where(
            experiments.c.id.in_(missing)
        )
        for values in conn.execute(query):
            self.experiment_rows[values[0]] = dict(values._mapping)
            del self.experiment_rows[values[0]]["id"]

    def file_query(self, condition: ColumnElement[bool] | None, expired_too: bool = False) -> Any:
        columns = file_columns(self.sources, meta=self.file_meta)
        columns += [
            (fr.push.sql if fr.push.sql is not None else true()).label(fr.flag)
            for fr in self.file_rules
        ]
        query = select(*columns).select_from(
            files.join(experiments, experiments.c.id == files.c.experiment_id)
        )
        if not expired_too:
            query = query.where(files.c.expired_at.is_(None))
        if condition is not None:
            query = query.where(condition)
        if self.station is not None:
            query = query.where(experiments.c.station == self.station)
        return query

    # ---- one file

    def matches(self, fr: FileRule, row: Row, flags: Flags) -> bool:
        if not flags[fr.index]:
            return False
        return fr.flag_decides or self.where_holds(fr, row)

    def matching(self, row: Row, flags: Flags) -> list[FileRule]:
        """The file rules whose `where` holds for the row, in rule order."""
        return self.matched(row, flags)[0]

    def matched(self, row: Row, flags: Flags) -> tuple[list[FileRule], Matched]:
        """The matching rules and what they ask. Where the database's flags decide every
        rule they hit, both are worked out once per set of flags."""
        known = self.by_flags.get(flags)
        if known is None:
            hits = [fr for fr, hit in zip(self.file_rules, flags, strict=True) if hit]
            decided = self.summary(hits) if all(fr.flag_decides for fr in hits) else None
            known = self.by_flags[flags] = (hits, decided)
        hits, decided = known
        if decided is not None:
            return hits, decided
        matched = [fr for fr in hits if fr.flag_decides or self.where_holds(fr, row)]
        return matched, self.summary(matched)

    def where_holds(self, fr: FileRule, row: Row) -> bool:
        """The part of the rule's `where` the database did not decide, on `row`: the
        residual, or the whole condition with storage as the plan has left it so far."""
        if fr.dynamic:
            version, test = self.live.get(fr.flag, (-1, None))
            if test is None or version != self.storage_version:
                statement = fr.statement
                node = ir.lower(statement.where, self.bindings, fr.rule.station)  # type: ignore[union-attr]
                test = compile_python(node)
                self.live[fr.flag] = (self.storage_version, test)
            return bool(test(row))
        return fr.residual is None or bool(fr.residual(row))

    def summary(self, matched: list[FileRule]) -> Matched:
        """What a set of matching rules asks of a file, worked out once per set: most
        files of a catalog match one of a few sets."""
        key = tuple(fr.index for fr in matched)
        found = self.summaries.get(key)
        if found is None:
            found = self.summaries[key] = Matched.of(key, matched)
        return found

    def layout(self, row: Row, matched: list[FileRule]) -> tuple[FileRule | None, str]:
        return self.layout_of(row, self.summary(matched))

    def layout_of(self, row: Row, m: Matched) -> tuple[FileRule | None, str]:
        winner = m.winner
        if winner is not None:
            return winner, winner.statement.at  # type: ignore[union-attr]
        default = DEFAULT_LAYOUT if row.get("experiment.station") else NO_STATION_LAYOUT
        return None, default

    def desired(
        self, row: Row, matched: list[FileRule], reps: dict[str, Replica]
    ) -> dict[str, list[FileRule]]:
        """Location -> the rules that want a replica there, first wish first (the locks)."""
        return self.wanted(self.summary(matched), reps, self.pinned(row))[0]

    def pinned(self, row: Row) -> bool:
        return (row.get("experiment.pinned_until") or 0) > self.now

    def wanted(
        self, m: Matched, reps: dict[str, Replica], pinned: bool
    ) -> tuple[dict[str, list[FileRule]], bool]:
        """`desired`, and whether free space chose between locations."""
        want: dict[str, list[FileRule]] = {}
        by_space = False
        if m.winner is not None:
            want[m.winner.statement.on] = [m.winner]  # type: ignore[union-attr]
        for fr in m.wishes:
            s = fr.statement
            if isinstance(s, model.Archive):
                want.setdefault(s.to, []).append(fr)
            else:
                targets, spaced = self.replicate_targets(s, reps, want, m.releasing, pinned)  # type: ignore[arg-type]
                by_space = by_space or spaced
                for location in targets:
                    want.setdefault(location, []).append(fr)
        return want, by_space

    def replicate_targets(
        self,
        s: model.Replicate,
        reps: dict[str, Replica],
        want: dict[str, list[FileRule]],
        releasing: set[str],
        pinned: bool,
    ) -> tuple[list[str], bool]:
        """Existing replicas (and ones other rules already want and this plan makes)
        count first, then the locations with the most free space, config order breaking
        ties. Of more existing replicas than it needs, the rule counts those other rules
        want, then those no matching rule releases, verified before present, in config
        order. Also says whether free space ordered more than one location.

        A replica another rule wants but this plan does not make (that rule is not
        selected, or it is an archive of a pinned experiment) is no copy yet: counted,
        it would let a release take an existing replica the rule needs."""
        have = [
            loc
            for loc in s.on
            if (loc in reps and reps[loc].state in GOOD)
            or any(_makes(fr, pinned) for fr in want.get(loc, ()))
        ]
        have.sort(
            key=lambda loc: (
                loc not in want,
                loc in releasing,
                loc not in reps or reps[loc].state != "verified",
            )
        )
        chosen = have[: s.copies]
        needed = s.copies - len(chosen)
        if needed <= 0:
            return chosen, False
        rest = [loc for loc in s.on if loc not in chosen and loc in self.config.locations]
        if len(rest) < 2:
            return chosen + rest, False
        rest.sort(key=lambda loc: (-(self.storage.free(loc) or 0), self.location_order[loc]))
        return chosen + rest[:needed], True

    def plan_file(self, row: Row, flags: Flags) -> None:
        replicas: Sequence[Replica] = row["replicas"]
        reps = {r.location: r for r in replicas}
        _, m = self.matched(row, flags)
        protected = m.protected
        pinned = self.pinned(row)

        if m.expires and any(
            self.plan_expire(fr, row, reps, protected, pinned) for fr in m.expires
        ):
            return

        making = self.making(m, reps, replicas, pinned)
        want = making.want
        state = Planned()
        if making.steps:
            _, layout = self.layout_of(row, m)
            for acting, location, source, present in making.steps:
                self.plan_replica(acting, row, reps, location, layout, state, source, present)

        for fr in m.acts:
            s = fr.statement
            if isinstance(s, model.Archive):
                archived = (
                    s.to in reps and reps[s.to].state == "verified"
                ) or s.to in state.verified
                if archived:
                    for location in s.release_from:
                        self.plan_delete(
                            fr, row, reps, location, want, protected, pinned, state, s.notify
                        )
            elif isinstance(s, model.Release):
                for location in s.from_:
                    self.plan_delete(
                        fr, row, reps, location, want, protected, pinned, state, s.notify
                    )
            elif isinstance(s, model.Run):
                self.plan_run(fr, row, reps, state)

    def planned(self, row: Row) -> Planned:
        """What the plan already does to the file of `row`, for the passes after the
        file pass; changes made to it stay for the next pass."""
        found = self.planned_if_any(row)
        if found is None:
            found = self._by_file()[(row["experiment.name"], row["file.path"])] = Planned()
        return found

    def planned_if_any(self, row: Row) -> Planned | None:
        """`planned`, or None for a file the plan does nothing to yet."""
        return self._by_file().get((row["experiment.name"], row["file.path"]))

    def _by_file(self) -> dict[tuple[str, str], Planned]:
        if self._planned is None:
            self._planned = _planned_by_file(self.plan.actions)
        return self._planned

    def making(
        self, m: Matched, reps: dict[str, Replica], replicas: Sequence[Replica], pinned: bool
    ) -> Making:
        """What the file's wanted replicas come to, worked out once per (matching rules,
        replica states, pinned)."""
        key = (m.key, tuple([(r.location, r.state) for r in replicas]), pinned)
        found = self.makings.get(key)
        if found is not None:
            return found
        want, by_space = self.wanted(m, reps, pinned)
        steps: list[tuple[FileRule, str, str | None, bool]] = []
        for location, wanting in want.items():
            # The first rule that makes what it wants makes the replica; the others'
            # wishes still lock it.
            acting = next((fr for fr in wanting if _makes(fr, pinned)), None)
            existing = reps.get(location)
            if acting is None or (existing is not None and existing.state == "verified"):
                continue
            if existing is not None and existing.state == "present":
                steps.append((acting, location, None, True))
            else:
                steps.append((acting, location, self.source(reps, location), False))
        made = Making(want, tuple(steps))
        if not by_space:
            self.makings[key] = made
        return made

    def plan_replica(
        self,
        fr: FileRule,
        row: Row,
        reps: dict[str, Replica],
        location: str,
        layout: str,
        state: Planned,
        source: str | None,
        present: bool,
    ) -> None:
        """Verify the present replica on `location`, or copy the file there from
        `source` and verify the copy."""
        verb = fr.verb
        experiment, path = row["experiment.name"], row["file.path"]
        if present:
            action = self.plan.new_action(
                "verify", fr.name, verb, experiment, file=path, target=location
            )
            state.verified[location] = action.id
            return
        if source is None:
            self.error(
                PlanError(fr.name, experiment, path, "no present or verified replica to copy from")
            )
            return
        existing = reps.get(location)
        if existing is not None:
            target_path = existing.path
        else:
            try:
                target_path = self.template(layout).render(row)
            except TemplateError as exc:
                self.error(PlanError(fr.name, experiment, path, str(exc)))
                return
        size = int(row["file.size"] or 0)
        # A corrupt replica's bytes are already counted; the copy overwrites them.
        replaced = (
            0 if existing is None or existing.state == "missing" else _replica_bytes(existing, row)
        )
        copy = self.plan.new_action(
            "copy",
            fr.name,
            verb,
            experiment,
            file=path,
            source=source,
            target=location,
            path=target_path,
            bytes=size,
        )
        verify = self.plan.new_action(
            "verify", fr.name, verb, experiment, file=path, target=location, after=(copy.id,)
        )
        state.verified[location] = verify.id
        state.reads += ((source, copy.id, verify.id),)
        self.storage_change(location, row.get("experiment.station"), size - replaced)

    def source(self, reps: dict[str, Replica], target: str) -> str | None:
        """Not tape first, then the target's site, then config order."""
        target_site = (
            self.config.locations[target].site if target in self.config.locations else None
        )
        candidates = [
            r.location
            for r in reps.values()
            if r.state in GOOD and r.location in self.config.locations
        ]
        if not candidates:
            return None

        def preference(name: str) -> tuple[int, int, int]:
            loc = self.config.locations[name]
            return (loc.tier == "tape", loc.site != target_site, self.location_order[name])

        return min(candidates, key=preference)

    def floor_problem(
        self, reps: dict[str, Replica], location: str, state: Planned
    ) -> tuple[str | None, tuple[str, ...]]:
        """Why deleting the replica on `location` would break the safety floor, or the
        actions the delete must wait for."""
        others = [
            r
            for r in reps.values()
            if r.location != location and r.state == "verified" and r.location not in state.deleted
        ]
        # without release_grace a verified replica counts whenever it was verified (a
        # plan made --at a past time still sees replicas verified since)
        old = (
            others
            if self.grace <= 0
            else [r for r in others if (r.verified_at or 0) <= self.now - self.grace]
        )
        if len(old) >= self.min_copies:
            return None, ()
        planned = {loc: aid for loc, aid in state.verified.items() if loc != location}
        required = self.min_copies
        if self.grace > 0 and len(others) + len(planned) >= required:
            return f"release_grace: the copies it relies on are not {self.grace_text} old yet", ()
        if len(old) + len(planned) >= required:
            return None, _ordered_ids(planned.values())
        remaining = len(others) + len(planned)
        noun = "replica" if remaining == 1 else "replicas"
        return f"min_copies: {remaining} verified {noun} would remain, {required} required", ()

    def plan_delete(
        self,
        fr: FileRule,
        row: Row,
        reps: dict[str, Replica],
        location: str,
        want: dict[str, list[FileRule]],
        protected: list[FileRule],
        pinned: bool,
        state: Planned,
        notify: model.NotifyBefore | None,
    ) -> int:
        """Plan the delete of the file's replica on `location` if every rule of the
        floor allows it. The delete waits for the copies it relies on and for the copies
        that read the replica it removes. Returns the bytes of a delete that only its
        notice holds back (0 otherwise), which a threshold release counts as freed."""
        replica = reps.get(location)
        if replica is None or replica.state == "missing" or location in state.deleted:
            return 0
        if location in want or location in state.verified:
            return 0
        experiment, path = row["experiment.name"], row["file.path"]
        reason: str | None = None
        after: tuple[str, ...] = ()
        if protected:
            reason = f"protected by rule {protected[0].name}"
        elif pinned:
            reason = f"experiment pinned until {iso(row['experiment.pinned_until'])}"
        else:
            reason, after = self.floor_problem(reps, location, state)
        size = _replica_bytes(replica, row)
        announced = 0
        if reason is None and notify is not None:
            reason = self.notice_wait(fr, experiment, notify, size)
            announced = size
        if reason is not None:
            self.plan.blocked.append(Blocked(fr.name, experiment, path, location, reason))
            return announced
        self.plan.new_action(
            "delete",
            fr.name,
            "release",
            experiment,
            file=path,
            target=location,
            bytes=size,
            after=_ordered_ids(
                [*after, *(c for s, c, v in state.reads if s == location and v not in after)]
            ),
        )
        state.deleted += (location,)
        self.storage_change(location, row.get("experiment.station"), -size)
        return 0

    def notice_wait(
        self, fr: FileRule, experiment: str, notify: model.NotifyBefore, size: int
    ) -> str | None:
        """Why a delete waits for its notice (None once the notice is old enough)."""
        key = (fr.name, experiment, notify.channel)
        sent = self.notice_sent.get(key)
        if sent is not None:
            if sent <= self.now - notify.before:
                return None
            until = iso(sent + notify.before)
            return f"notice to {notify.channel} sent {iso(sent)}; deletes wait until {until}"
        notice = self.pending_notices.get(key)
        if notice is None:
            notice = Notice(
                fr.name, experiment, notify.channel, 0, 0, iso(self.now + notify.before)
            )
            self.pending_notices[key] = notice
            self.plan.notices.append(notice)
        notice.files += 1
        notice.bytes += size
        return f"waits for the notice to {notify.channel} ({format_duration(notify.before)} ahead)"

    def plan_expire(
        self,
        fr: FileRule,
        row: Row,
        reps: dict[str, Replica],
        protected: list[FileRule],
        pinned: bool,
    ) -> bool:
        experiment, path = row["experiment.name"], row["file.path"]
        reason = None
        if protected:
            reason = f"protected by rule {protected[0].name}"
        elif pinned:
            reason = f"experiment pinned until {iso(row['experiment.pinned_until'])}"
        size = sum(_replica_bytes(r, row) for r in reps.values() if r.state != "missing")
        notify = fr.statement.notify  # type: ignore[union-attr]
        if reason is None and notify is not None:
            reason = self.notice_wait(fr, experiment, notify, size)
        if reason is not None:
            self.plan.blocked.append(Blocked(fr.name, experiment, path, "*", reason))
            return False
        self.plan.new_action("expire", fr.name, "expire", experiment, file=path, bytes=size)
        for r in reps.values():
            if r.state != "missing":
                self.storage_change(
                    r.location, row.get("experiment.station"), -_replica_bytes(r, row)
                )
        return True

    def plan_run(self, fr: FileRule, row: Row, reps: dict[str, Replica], state: Planned) -> None:
        s: model.Run = fr.statement  # type: ignore[assignment]
        md5 = row.get("file.md5")
        content = md5 if md5 else f"size={row.get('file.size')},modified={row.get('file.modified')}"
        if (s.workflow, content) in row["_jobs"]:
            return
        after: tuple[str, ...] = ()
        local = [n for n, loc in self.config.locations.items() if loc.root_path is not None]
        ready = [n for n in local if n in reps and reps[n].state == "verified"]
        if not ready:
            waiting = [state.verified[n] for n in local if n in state.verified]
            if not waiting:
                self.error(
                    PlanError(
                        fr.name,
                        row["experiment.name"],
                        row["file.path"],
                        "no verified replica on a file:// location for the workflow to read",
                    )
                )
                return
            after = (waiting[0],)
        args = {name: _jsonable(fn(row)) for name, fn in self.with_values(fr)}
        self.plan.new_action(
            "workflow",
            fr.name,
            "run",
            row["experiment.name"],
            file=row["file.path"],
            workflow=s.workflow,
            args=args,
            after=after,
        )

    def with_values(self, fr: FileRule) -> list[tuple[str, Evaluator]]:
        if fr.flag not in self.with_cache:
            s: model.Run = fr.statement  # type: ignore[assignment]
            self.with_cache[fr.flag] = [
                (name, compile_python(ir.lower_value(expr, self.bindings)))
                for name, expr in s.with_
            ]
        return self.with_cache[fr.flag]

    # ---- the passes

    def prepare(self) -> None:
        """Read what every pass looks up: location ids and the notices already sent."""
        with self.engine.connect() as conn:
            self.notice_sent = {
                (rule, name, channel): sent
                for rule, name, channel, sent in conn.execute(
                    select(
                        notices.c.rule, experiments.c.name, notices.c.channel, notices.c.sent_at
                    ).join(experiments, experiments.c.id == notices.c.experiment_id)
                )
            }

    def run(self) -> Plan:
        query = self.file_pass_query()
        reader = None
        if query is not None:  # started first: it loads while the planner gets ready
            with self.engine.connect() as conn:
                reader = self._start_reader(conn)
        try:
            self.plan.catalog_fingerprint = catalog_fingerprint(self.engine)
            self.prepare()
            with self.engine.connect() as conn:
                session_settings(conn)
                self.plan.suspended = suspended_actions(conn)
                if query is not None:
                    self.file_pass(conn, query, reader)
                self.threshold_pass(conn)
                self.verify_pass(conn)
                self.grant_pass(conn)
                self.alarm_pass(conn)
            return self.plan
        finally:
            if reader is not None:  # ended already, unless the plan failed before it read
                reader[0].close()

    def file_pass_query(self) -> Any:
        """The file pass's candidates, in file id order; None without a rule that asks
        for one."""
        by_station: dict[str | None, list[ColumnElement[bool]]] = {}
        for fr in self.file_rules:
            if fr.selected and (c := self._candidate(fr)) is not None:
                by_station.setdefault(fr.rule.station, []).append(c)
        if not by_station:
            return None
        # A station's rules behind one test of the station (their own conditions test
        # it again): a file is checked against its own station's rules only, where a
        # flat OR would try every rule of every station on it.
        candidates = [
            or_(*conditions)
            if station is None
            else and_(experiments.c.station == station, or_(*conditions))
            for station, conditions in by_station.items()
        ]
        return self.file_query(or_(*candidates)).order_by(files.c.id)

    def file_pass(self, conn: Connection, query: Any, reader: Reader | None) -> None:
        for count, (row, flags) in enumerate(self.rows(conn, query, reader), 1):
            self.plan_file(row, flags)
            if self.progress is not None and count % 10000 == 0:
                self.progress(count)

    def threshold_pass(self, conn: Connection) -> None:
        for fr in self.file_rules:
            s = fr.statement
            if not (fr.selected and isinstance(s, model.Release) and s.when is not None):
                continue
            if not self._holds(s.when):
                continue
            usage = _first_usage_call(s.when)
            order_value, _ = SqlCompiler(self.sources).value(
                ir.lower_value(s.order_by, self.bindings), "any"
            )
            order = order_value.desc() if s.descending else order_value.asc()
            where = fr.push.sql if fr.push.sql is not None else true()
            query = self.file_query(
                and_(where, self._replica_exists(s.from_, [*GOOD, "corrupt"]))
            ).order_by(order.nulls_first(), files.c.id)
            # Deletes that wait for their notice will free this much once it is old: they
            # count toward the low mark, so the notice announces only what is needed.
            announced = 0
            for row, flags in self.rows(conn, query):
                if self._released_enough(s, usage, announced):
                    break
                if not self.where_holds(fr, row):
                    continue
                reps = {r.location: r for r in row["replicas"]}
                matched = self.matching(row, flags)
                protected = [f for f in matched if isinstance(f.statement, model.Protect)]
                pinned = self.pinned(row)
                state = self.planned(row)
                if state.expired:
                    continue
                want = self.desired(row, matched, reps)
                for location in s.from_:
                    held = self.plan_delete(
                        fr, row, reps, location, want, protected, pinned, state, s.notify
                    )
                    if usage is not None and usage[0] == location:
                        announced += (
                            held if usage[1] in (None, row.get("experiment.station")) else 0
                        )

    def _holds(self, expr: ast.Expr) -> bool:
        return condition_holds(expr, self.bindings)

    def _released_enough(
        self, s: model.Release, usage: tuple[str, str | None] | None, announced: int
    ) -> bool:
        if s.until is None or usage is None:
            return not self._holds(s.when)  # type: ignore[arg-type]
        limit = self.storage.limit(*usage)
        if not limit:
            return True
        return (self.storage.used(*usage) - announced) / limit <= s.until

    def verify_pass(self, conn: Connection) -> None:
        counts: dict[int, int] = {}  # location id -> its replicas, for each rule's sample
        for fr in self.file_rules:
            s = fr.statement
            if not (fr.selected and isinstance(s, model.Verify)) or s.on not in self.location_ids:
                continue
            location_id = self.location_ids[s.on]
            at_location = replicas.c.location_id == location_id
            verified_at = replicas.c.verified_at
            never, before = verified_at.is_(None), verified_at < self.now - s.every
            # Nothing due is the usual case, and the (location, verified_at) index answers
            # it, one probe per half of "never or before" (in any state: a superset). The
            # query below may first scan every file for the rule's own condition:
            # PostgreSQL overestimates the never verified replicas of a location whose
            # replicas are all verified, and reads the files first (0.18 s at 1M files).
            maybe = or_(exists().where(at_location, never), exists().where(at_location, before))
            if not conn.execute(select(maybe)).scalar_one():
                continue
            on_location = and_(at_location, replicas.c.state.in_(GOOD))
            total = counts.get(location_id)
            if total is None:
                total = counts[location_id] = conn.execute(
                    select(func.count()).where(on_location)
                ).scalar_one()
            limit = total if s.sample is None else math.ceil(total * s.sample)
            if limit <= 0:
                continue
            due = or_(never, before)
            where = fr.push.sql if fr.push.sql is not None else true()
            query = (
                self.file_query(where)
                .join(replicas, replicas.c.file_id == files.c.id)
                .where(on_location, due)
                .order_by(replicas.c.verified_at.asc().nulls_first(), files.c.id)
            )
            taken = 0
            for row, _ in self.rows(conn, query):
                if taken >= limit:
                    break
                if not self.where_holds(fr, row):
                    continue
                planned = self.planned_if_any(row)
                if planned is not None and (
                    planned.expired or s.on in planned.verified or s.on in planned.deleted
                ):
                    continue
                action = self.plan.new_action(
                    "verify",
                    fr.name,
                    "verify",
                    row["experiment.name"],
                    file=row["file.path"],
                    target=s.on,
                )
                # a second verify rule on the location checks this replica no more
                (planned or self.planned(row)).verified[s.on] = action.id
                taken += 1

    def grant_pass(self, conn: Connection) -> None:
        statements = [
            (rule, index, s)
            for rule in self.rules
            for index, s in enumerate(rule.statements)
            if isinstance(s, model.Grant)
        ]
        if not statements:
            return
        # (rule, experiment, location, principal) -> (perms, the directory granted on)
        made: dict[tuple[str, str, str, str], tuple[str, str]] = {
            (rule, name, location, principal): (perms, path)
            for rule, name, location, principal, perms, path in conn.execute(
                select(
                    grants.c.rule,
                    experiments.c.name,
                    locations.c.name,
                    grants.c.principal,
                    grants.c.perms,
                    grants.c.path,
                )
                .join(experiments, experiments.c.id == grants.c.experiment_id)
                .join(locations, locations.c.id == grants.c.location_id)
            )
        }
        query = select(*experiment_columns(self.sources))
        query = query.select_from(experiments).order_by(experiments.c.name)
        if self.station is not None:
            query = query.where(experiments.c.station == self.station)
        wanted: set[tuple[str, str, str, str]] = set()
        rows = [dict(r._mapping) for r in conn.execute(query)]
        for rule, _, s in statements:
            test = compile_python(ir.lower(s.while_, self.bindings)) if s.while_ else None
            for row in rows:
                if rule.station is not None and row["experiment.station"] != rule.station:
                    continue
                if test is not None and not test(row):
                    continue
                directory = self.experiment_directory(row, s.at, rule)
                if directory is None:
                    continue
                for principal in _principals(s, row):
                    key = (rule.name, row["experiment.name"], s.at, principal)
                    wanted.add(key)
                    perms = ",".join(s.perms)
                    if rule.name in self.selected and made.get(key, ("", ""))[0] != perms:
                        self.plan.new_action(
                            "acl",
                            rule.name,
                            "grant",
                            row["experiment.name"],
                            op="grant",
                            target=s.at,
                            path=directory,
                            principal=principal,
                            perms=s.perms,
                        )
        by_name = {r["experiment.name"]: r for r in rows}
        rules = {r.name: r for r in self.rules}
        for key, (perms, path) in sorted(made.items()):
            rule_name, experiment, location, principal = key
            if key in wanted or rule_name not in self.selected or experiment not in by_name:
                continue
            # The ACL is undone where it was made, whatever the layout says today.
            directory = path or self.experiment_directory(
                by_name[experiment], location, rules.get(rule_name)
            )
            self.plan.new_action(
                "acl",
                rule_name,
                "revoke",
                experiment,
                op="revoke",
                target=location,
                path=directory,
                principal=principal,
                perms=tuple(perms.split(",")),
            )

    def experiment_directory(self, row: Row, location: str, rule: model.Rule | None) -> str | None:
        """The layout up to its first file segment, from the highest-priority place rule
        on `location` in the experiment's scope (the default layout otherwise)."""
        places = [
            fr
            for fr in self.file_rules
            if isinstance(fr.statement, model.Place)
            and fr.statement.on == location
            and fr.rule.station in (None, row.get("experiment.station"))
        ]
        if places:
            text = max(places, key=lambda fr: (fr.rule.priority, -fr.rule.order)).statement.at  # type: ignore[union-attr]
        else:
            text = DEFAULT_LAYOUT if row.get("experiment.station") else NO_STATION_LAYOUT
        try:
            return self.template(text).render(row, upto_file=True)
        except TemplateError as exc:
            self.error(PlanError(rule.name if rule else "", row["experiment.name"], None, str(exc)))
            return None

    def alarm_pass(self, conn: Connection) -> None:
        states = {
            (rule, statement): (state, since)
            for rule, statement, state, since in conn.execute(
                select(
                    alarm_states.c.rule,
                    alarm_states.c.statement,
                    alarm_states.c.state,
                    alarm_states.c.condition_since,
                )
            )
        }
        for rule in self.rules:
            if rule.name not in self.selected:
                continue
            for index, s in enumerate(rule.statements):
                if not isinstance(s, model.Alarm):
                    continue
                raised_state, since = states.get((rule.name, index), ("clear", None))
                holds = self._holds(s.when)
                value = self._alarm_value(s.when)
                text = expression_text(s.when)
                if raised_state != "raised":
                    held_long_enough = s.for_ <= 0 or (
                        since is not None and since <= self.now - s.for_
                    )
                    if holds and held_long_enough:
                        message = f"{text}" + (f" ({value})" if value else "")
                        self.plan.alarms.append(
                            AlarmChange(
                                rule.name, index, "raise", s.severity, s.notify, value, message
                            )
                        )
                else:
                    clears = self._holds(s.clear_when) if s.clear_when is not None else not holds
                    if clears:
                        message = f"cleared: {text}" + (f" ({value})" if value else "")
                        self.plan.alarms.append(
                            AlarmChange(
                                rule.name, index, "clear", s.severity, s.notify, value, message
                            )
                        )

    def _alarm_value(self, expr: ast.Expr) -> str | None:
        return alarm_value(expr, self.bindings)


def condition_holds(expr: ast.Expr, bindings: ir.Bindings) -> bool:
    """A condition over `now` and the location functions (alarms, threshold `when`)."""
    return bool(compile_python(ir.lower(expr, bindings))({}))


def alarm_value(expr: ast.Expr, bindings: ir.Bindings) -> str | None:
    """The value of a condition's first function call, as plans and notices show it."""
    call = next((n for n in ast.walk(expr) if isinstance(n, ast.Call)), None)
    if call is None:
        return None
    value = compile_python(ir.lower_value(call, bindings))({})
    if value is None:
        return None
    if call.name == "usage":
        return f"{value * 100:.1f}%"
    if call.name == "time_to_full":
        return format_duration(float(value))
    if call.name in ("used", "free"):
        return f"{int(value)} B"
    return str(value)


def session_settings(conn: Connection) -> None:
    """For the transaction the planner reads in."""
    if conn.dialect.name == "postgresql":
        for setting in set_local(PG_SETTINGS):
            conn.execute(text(setting))


def set_local(settings: dict[str, str]) -> list[str]:
    """The statements that set `settings` for the transaction."""
    return [f"SET LOCAL {name} = {value}" for name, value in settings.items()]


def _batch_ids(engine: Engine) -> Callable[[ColumnElement[Any]], ColumnElement[bool]]:
    """`column IN` a batch's ids, given as one parameter: an array on PostgreSQL, a
    JSON list on SQLite. An expanding IN would render two thousand placeholders per
    batch, which costs the client more than the lookup costs the database."""
    if engine.dialect.name == "postgresql":
        param = bindparam("ids", type_=ARRAY(BigInteger))
        return lambda column: column == any_(param)
    listed = select(literal_column("value")).select_from(func.json_each(bindparam("ids")))
    return lambda column: column.in_(listed.scalar_subquery())


def _ids_value(engine: Engine) -> Callable[[list[int]], object]:
    if engine.dialect.name == "postgresql":
        return lambda ids: ids
    return json_ids


def _catalog_locations(engine: Engine) -> tuple[dict[str, int], dict[str, str | None]]:
    """Ids and tiers of the catalog's locations, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(locations.c.id, locations.c.name, locations.c.tier)).all()
    return {name: id_ for id_, name, _ in rows}, {name: tier for _, name, tier in rows}


def _planned_by_file(actions: Sequence[Action]) -> dict[tuple[str, str], Planned]:
    """What the actions so far do to each file, by (experiment, path). Read off the plan
    rather than kept as the file pass goes: most plans have no later pass that reads
    it, and a record per file acted on was a tenth of a large plan's memory. A copy's
    verify is the verify that waits for it alone."""
    out: dict[tuple[str, str], Planned] = {}
    copied_from: dict[str, str] = {}  # copy action id -> its source location
    for action in actions:
        if action.file is None or action.kind not in FILE_STATE_KINDS:
            continue
        key = (action.experiment, action.file)
        state = out.get(key)
        if state is None:
            state = out[key] = Planned()
        target = action.target or ""
        if action.kind == "verify":
            state.verified[target] = action.id
            if len(action.after) == 1 and action.after[0] in copied_from:
                copy = action.after[0]
                state.reads += ((copied_from.pop(copy), copy, action.id),)
        elif action.kind == "copy":
            copied_from[action.id] = action.source or ""
        elif action.kind == "delete":
            state.deleted += (target,)
        else:
            state.expired = True
    return out


def _makes(fr: FileRule, pinned: bool) -> bool:
    """Whether the rule makes in this plan the replica it wants: it is selected, and it
    is not an archive of a pinned experiment (archive skips those)."""
    return fr.selected and not (pinned and isinstance(fr.statement, model.Archive))


def _replica_bytes(replica: Replica, row: Row) -> int:
    """The bytes a replica takes, as the storage state counts them."""
    return int(replica.size if replica.size is not None else row.get("file.size") or 0)


def _ordered_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """Action ids without repeats, in plan order."""
    return tuple(sorted(set(ids), key=lambda a: int(a[1:])))


def suspended_actions(conn: Connection) -> list[Suspended]:
    """Actions earlier applies suspended, unless a later action on the same file and
    location of the same kind has been done since (oldest first)."""
    t = actions_table
    rows = conn.execute(
        select(
            t.c.kind,
            t.c.rule,
            t.c.experiment,
            t.c.file,
            t.c.target,
            t.c.attempts,
            t.c.last_error,
            t.c.plan_id,
            t.c.state,
            t.c.updated_at,
        )
        .where(t.c.state.in_(("suspended", "done")))
        .order_by(t.c.updated_at, t.c.id)
    ).all()
    latest: dict[tuple[str, str | None, str | None, str | None], Suspended | None] = {}
    for kind, rule, experiment, file, target, attempts, error, plan_id, state, _ in rows:
        key = (kind, experiment, file, target)
        if state == "done":
            latest[key] = None
        else:
            latest[key] = Suspended(kind, rule, experiment, file, target, attempts, error, plan_id)
    return [item for item in latest.values() if item is not None]


def _principals(s: model.Grant, row: Row) -> list[str]:
    out: list[str] = []
    for p in s.principals:
        if p.kind == "experiment-users":
            out += [f"user:{u}" for u in row.get("experiment.users") or [] if isinstance(u, str)]
        else:
            out.append(f"{p.kind}:{p.name}")
    return list(dict.fromkeys(out))


def _first_usage_call(expr: ast.Expr) -> tuple[str, str | None] | None:
    for node in ast.walk(expr):
        if isinstance(node, ast.Call) and node.name == "usage" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Literal) and isinstance(first.value, str):
                station = next(
                    (
                        k.value.value
                        for k in node.kwargs
                        if k.name == "station" and isinstance(k.value, ast.Literal)
                    ),
                    None,
                )
                return first.value, station  # type: ignore[return-value]
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def make_plan(
    config: SiteConfig,
    engine: Engine,
    rules: Sequence[model.Rule],
    options: PlanOptions,
    progress: Callable[[int], None] | None = None,
) -> Plan:
    # A plan keeps every action, row and replica it makes until it returns: the
    # collector's passes over them would free nothing.
    with gc_paused():
        return Planner(config, engine, rules, options, progress).run()
