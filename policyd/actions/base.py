"""The executor interface: one small class per action kind, behind one registry.

The runner (`runner.py`) knows the plan's DAG, the ledger and the catalog; it does not
know which storage an action talks to. An executor knows one kind of action: how to
check, on the catalog and on storage, that it may still run; how to carry it out; and
what the catalog must record afterwards. Work that moves bytes (`execute`) runs in a
worker thread with no database connection; the catalog change (`record`) runs in the
runner's transaction together with the ledger event, so the two never disagree. An
executor whose work must happen under a per-file lock together with its re-checks
(delete, expire) sets `locked = True` and does everything in `apply`, inside that
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from policyd.actions.context import ExecContext
    from policyd.actions.stores import Landed


@dataclass(frozen=True)
class Step:
    """One action of a plan as the runner hands it over (`action` is its JSON object)."""

    plan_id: str
    action: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.action["id"])

    @property
    def kind(self) -> str:
        return str(self.action["kind"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.action.get(key, default)


class ActionFailed(Exception):
    """An action did not happen. `retryable` says whether trying again may help (a full
    disk, a lost connection) or not (a checksum mismatch, a refused delete)."""

    def __init__(self, message: str, *, retryable: bool = True, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable and not refused
        self.refused = refused


def refused(message: str) -> ActionFailed:
    """A safety re-check that no longer holds: recorded in the ledger, never retried."""
    return ActionFailed(message, retryable=False, refused=True)


@dataclass
class Result:
    """What an action found out (checksums, sizes) for `record`, and a note for people.
    `landed` is a local copy written and checked but not yet durable nor in place: the
    runner settles it (with the others that finished meanwhile) before `record`."""

    facts: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    bytes: int = 0
    landed: Landed | None = None


class Executor:
    """One action kind. `options` names the apply options it reads (for `--help` and the
    docs); `locked` executors run entirely inside the runner's transaction."""

    kind: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    locked: ClassVar[bool] = False
    #: At most this many actions go to one `execute_batch` call; 1 means one `execute`
    #: per action. A service that runs many files as one job (a Globus task) takes, in
    #: one call, the ready actions that use the same `locations` (a batch counts once
    #: toward the per-location limits).
    batch: ClassVar[int] = 1

    @classmethod
    def handles(cls, schemes: frozenset[str]) -> bool:
        """Whether this executor serves an action touching locations of these URL
        schemes; the ones here serve everything but Globus, which has its own."""
        return "globus" not in schemes

    def __init__(self, ctx: ExecContext) -> None:
        self.ctx = ctx

    def locations(self, step: Step) -> tuple[str, ...]:
        """The locations the action uses, for the per-location parallelism limits."""
        return tuple(v for v in (step.get("source"), step.get("target")) if v)

    def known(self, step: Step) -> Result | None:
        """The outcome of an action that needs no work now and changes nothing in the
        catalog (a verify of the bytes its copy checked as it wrote them), or None. The
        runner records it at once by its events alone (`record` is not called), without
        a worker: it takes no slot of `--parallel`."""
        return None

    def execute(self, step: Step) -> Result:
        """The work, in a worker thread, without the catalog (unlocked executors)."""
        raise ActionFailed(f"{self.kind} runs inside the catalog transaction", retryable=False)

    def execute_batch(self, steps: list[Step]) -> list[Result | ActionFailed]:
        """The work of several actions in one worker thread: an outcome per step, in
        order (an exception fails them all). For executors with `batch` > 1."""
        raise ActionFailed(f"{self.kind} does not batch", retryable=False)

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        """The catalog change after `execute`, in the runner's transaction."""
        raise ActionFailed(f"{self.kind} records nothing after execute", retryable=False)

    def apply(self, conn: Connection, step: Step) -> Result:
        """Check, act and record under the file's lock (locked executors)."""
        raise ActionFailed(f"{self.kind} does not run in the transaction", retryable=False)


#: Action kind -> its executors; `handles` picks the one for an action's locations.
EXECUTORS: dict[str, list[type[Executor]]] = {}


def register(cls: type[Executor]) -> type[Executor]:
    EXECUTORS.setdefault(cls.kind, []).append(cls)
    return cls


def executor_class(kind: str, schemes: frozenset[str]) -> type[Executor] | None:
    return next((c for c in EXECUTORS.get(kind, ()) if c.handles(schemes)), None)


ExecutorFactory = Callable[["ExecContext"], Executor]
