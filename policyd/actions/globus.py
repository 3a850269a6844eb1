"""`globus://COLLECTION/path` locations: copies as Globus Transfer tasks, grants as
endpoint access rules, through globus-sdk.

Globus runs many files as one task on its own movers, so copies are batched: the
runner hands over, in one call, up to `BATCH_LIMIT` ready copies between the same two
locations (`Executor.batch`), and they become one task: `verify_checksum` (Globus
compares source and destination checksums and re-sends a file until they agree),
`sync_level` checksum (a file already at the destination with the same checksum is not
sent again, which is what a resumed apply needs), MD5 as the checksum algorithm, and,
for every file whose md5 the catalog knows, that md5 as the item's `external_checksum`,
so Globus also checks the bytes on both ends against the catalog. The task is polled
until it ends (or `GlobusCopy.timeout`, when it is cancelled) and each file's outcome
goes back to its own action: the task's successful transfers are copied and verified;
a file Globus skipped (`skip_source_errors`: missing or unreadable at the source) fails
its action for good; a file Globus did not send because the destination already had
its checksum is as good as its source (verified when the source is); in a failed task,
a file named by an error event gets that event's error (`EXTERNAL_CHECKSUM_MISMATCH`:
the source does not match the md5 and is marked corrupt) and the others are retried.
The Transfer API returns no per-file checksums, so the comparison with the catalog md5
is Globus's own, through `external_checksum`; policyd records the catalog md5 as the
replica's checksum. A file whose md5 is unknown is checked only source against
destination and recorded `present`.

A location that is not `globus://` takes part when its config names the Globus
collection serving its folder (`globus: globus://COLLECTION/PATH`). Paths are checked
as on every store (no `..`, no absolute path: spec/rules.md section 9, invariant 4).

Grants on a `globus://` location are access rules of its collection (a guest
collection: only those take rules) on the experiment directory with a trailing slash,
which Globus applies to everything below it, files written later included. `user:NAME`
becomes `identities.globus_identity` (e.g. `{user}@anl.gov`), resolved to its identity
id with Globus Auth (`provision`, so a user who never logged in still gets one);
`group:ID` must name a Globus group by its id. A grant whose equal rule is already
there adds nothing; a revoke deletes only a rule policyd recorded in `grants`, with the
permissions it recorded.

Credentials: `POLICYD_GLOBUS_TOKEN` (a Transfer access token) and, for grants to users,
`POLICYD_GLOBUS_AUTH_TOKEN`; otherwise `globus.token_file`, a JSON object by resource
server as globus-sdk's `OAuthTokenResponse.by_resource_server` gives it
(`{"transfer.api.globus.org": {"access_token": ..., "refresh_token": ...,
"expires_at_seconds": ...}, "auth.globus.org": {...}}`); a refresh token is used with
`globus.client_id`, the native app it was issued to. Tokens never appear in a message
or a log line (globus-sdk logs only a hash of them).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import unquote, urlsplit

# the SDK loads its parts on first use (its clients pull in requests): an apply
# without globus:// locations never pays for them
import globus_sdk
from sqlalchemy import select
from sqlalchemy.engine import Connection

from policyd.actions import catalog_ops as cat
from policyd.actions.acl_posix import PosixAcl
from policyd.actions.base import ActionFailed, Executor, Result, Step, refused, register
from policyd.actions.stores import segments
from policyd.catalog.schema import experiments, grants
from policyd.stations.config import SiteConfig

if TYPE_CHECKING:
    from policyd.actions.context import ExecContext

log = logging.getLogger("policyd.globus")

TOKEN_ENV: Final = "POLICYD_GLOBUS_TOKEN"
AUTH_TOKEN_ENV: Final = "POLICYD_GLOBUS_AUTH_TOKEN"
TRANSFER: Final = "transfer.api.globus.org"
AUTH: Final = "auth.globus.org"
#: Files in one Globus task at most; more ready copies make several tasks.
BATCH_LIMIT: Final = 1000
#: Checksums Globus computes on both endpoints (where an endpoint supports MD5;
#: the catalog's md5 is the one policyd can compare against).
CHECKSUM_ALGORITHM: Final = "MD5"


# ---- credentials


def authorizer(
    config: SiteConfig, resource_server: str, env: str
) -> globus_sdk.authorizers.GlobusAuthorizer:
    """The credentials for one Globus service: a token from `env`, else from the site's
    token file. Every problem is a clear, final error that never shows a token."""
    token = os.environ.get(env)
    if token:
        return globus_sdk.AccessTokenAuthorizer(token)
    if config.globus is None:
        raise ActionFailed(
            f"no Globus credentials: set {env} or give the site config "
            "`globus: {token_file: PATH}` (JSON with a transfer.api.globus.org token)",
            retryable=False,
        )
    path = config.globus.token_file
    entry = _token_file(path).get(resource_server)
    access = entry.get("access_token") if isinstance(entry, dict) else None
    refresh = entry.get("refresh_token") if isinstance(entry, dict) else None
    if not isinstance(access, str | None) or not isinstance(refresh, str | None):
        raise ActionFailed(f"{path}: the {resource_server} tokens are not text", retryable=False)
    if refresh:
        if config.globus.client_id is None:
            raise ActionFailed(
                f"{path} has a refresh token for {resource_server}: set globus.client_id "
                "to the id of the native app it was issued to, or give an access token",
                retryable=False,
            )
        expires = entry.get("expires_at_seconds") if isinstance(entry, dict) else None
        return globus_sdk.RefreshTokenAuthorizer(
            refresh,
            globus_sdk.NativeAppAuthClient(config.globus.client_id),
            access_token=access,
            expires_at=expires if isinstance(expires, int) else None,
        )
    if access:
        return globus_sdk.AccessTokenAuthorizer(access)
    raise ActionFailed(
        f"{path} has no {resource_server} token (an access_token or a refresh_token "
        f'under "{resource_server}"); {env} can give one instead',
        retryable=False,
    )


def _token_file(path: os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ActionFailed(
            f"cannot read the Globus token file {path}: {exc.strerror}", retryable=False
        ) from None
    except ValueError as exc:  # the position only: the text itself holds tokens
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise ActionFailed(
            f"the Globus token file {path} is not JSON{where}", retryable=False
        ) from None
    if not isinstance(data, dict):
        raise ActionFailed(f"the Globus token file {path} is not a JSON object", retryable=False)
    return data


def api_failure(
    doing: str, exc: globus_sdk.GlobusAPIError | globus_sdk.NetworkError
) -> ActionFailed:
    """A Globus error as an action failure: retried when waiting may help (the network,
    rate limits, the service's own errors), final when a person must act."""
    if isinstance(exc, globus_sdk.NetworkError):
        return ActionFailed(f"Globus could not be reached while {doing}: {exc}")
    status = exc.http_status
    hint = " (renew the Globus token)" if status == 401 else ""
    return ActionFailed(
        f"Globus refused {doing}: {status} {exc.code}: {exc.message}{hint}",
        retryable=status in (408, 409, 429) or status >= 500,
    )


class Clients:
    """The SDK clients of one apply, made on first use (worker threads share them)."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._transfer: globus_sdk.TransferClient | None = None
        self._auth: globus_sdk.AuthClient | None = None

    def transfer(self) -> globus_sdk.TransferClient:
        with self._lock:
            if self._transfer is None:
                self._transfer = globus_sdk.TransferClient(
                    authorizer=authorizer(self.config, TRANSFER, TOKEN_ENV)
                )
            return self._transfer

    def auth(self) -> globus_sdk.AuthClient:
        with self._lock:
            if self._auth is None:
                self._auth = globus_sdk.AuthClient(
                    authorizer=authorizer(self.config, AUTH, AUTH_TOKEN_ENV)
                )
            return self._auth


# ---- locations as Globus sees them


@dataclass(frozen=True)
class Collection:
    """A location on Globus: its collection and the folder of the location's root."""

    location: str
    id: str
    root: str  # absolute, without a trailing slash ("" for the collection's root)

    def path(self, rel: str, *, folder: bool = False) -> str:
        """The Globus path of `rel`, refused when it could leave the location's root."""
        segments(self.location, rel)
        return f"{self.root}/{rel}" + ("/" if folder else "")


def collection(config: SiteConfig, name: str) -> Collection:
    loc = config.locations.get(name)
    if loc is None:
        raise ActionFailed(f"location {name} is not in the site config", retryable=False)
    url = loc.url if loc.scheme == "globus" else loc.globus
    if url is None:
        raise ActionFailed(
            f"location {name} ({loc.scheme}://) is not on Globus: give it "
            "`globus: globus://COLLECTION/PATH` (the Globus collection serving its folder) "
            "for Globus to copy to and from it",
            retryable=False,
        )
    parts = urlsplit(url)
    return Collection(name, parts.netloc, unquote(parts.path).rstrip("/"))


# ---- copies


@dataclass(frozen=True)
class Item:
    """One copy of a batch, as submitted."""

    index: int
    source_path: str
    destination_path: str
    md5: str | None
    size: int | None
    source_state: str


@register
class GlobusCopy(Executor):
    """`copy` to, from or between `globus://` locations, batched into Globus tasks."""

    kind = "copy"
    batch = BATCH_LIMIT
    #: Seconds before the first poll of a task; the wait doubles up to `poll_max`.
    poll_first: ClassVar[float] = 5.0
    poll_max: ClassVar[float] = 60.0
    #: Seconds a task may run before it is cancelled and its copies retried.
    timeout: ClassVar[float] = 24 * 3600.0

    @classmethod
    def handles(cls, schemes: frozenset[str]) -> bool:
        return "globus" in schemes

    def __init__(self, ctx: ExecContext) -> None:
        super().__init__(ctx)
        self.clients = Clients(ctx.config)

    def execute_batch(self, steps: list[Step]) -> list[Result | ActionFailed]:
        source = collection(self.ctx.config, steps[0].get("source"))
        target = collection(self.ctx.config, steps[0].get("target"))
        client = self.clients.transfer()
        outcomes: dict[int, Result | ActionFailed] = {}
        items: list[Item] = []
        with self.ctx.engine.connect() as conn:
            for index, step in enumerate(steps):
                try:
                    items.append(_item(conn, index, step, source, target))
                except ActionFailed as exc:
                    outcomes[index] = exc
        if items:
            outcomes.update(self._run_task(client, source, target, items))
        return [outcomes[index] for index in range(len(steps))]

    def _run_task(
        self,
        client: globus_sdk.TransferClient,
        source: Collection,
        target: Collection,
        items: list[Item],
    ) -> dict[int, Result | ActionFailed]:
        try:
            task_id = str(client.submit_transfer(self._task(source, target, items))["task_id"])
            log.info(
                "Globus task %s: %d files, %s to %s",
                task_id,
                len(items),
                source.location,
                target.location,
            )
            ended = Ended.fetch(client, self._wait(client, task_id))
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            failure = api_failure("the transfer of a batch", exc)
            return {item.index: failure for item in items}
        except ActionFailed as exc:
            return {item.index: exc for item in items}
        return {item.index: ended.outcome(item, source, target) for item in items}

    def _task(
        self, source: Collection, target: Collection, items: list[Item]
    ) -> globus_sdk.TransferData:
        data = globus_sdk.TransferData(
            source.id,
            target.id,
            label=f"policyd {self.ctx.plan_id} {source.location} to {target.location}"[:128],
            sync_level="checksum",
            verify_checksum=True,
            preserve_timestamp=True,
            skip_source_errors=True,
            fail_on_quota_errors=True,
            notify_on_succeeded=False,
            notify_on_failed=False,
        )
        for item in items:
            extra: dict[str, Any] = {} if item.md5 is None else {"external_checksum": item.md5}
            data.add_item(
                item.source_path,
                item.destination_path,
                checksum_algorithm=CHECKSUM_ALGORITHM,
                **extra,
            )
        return data

    def _wait(self, client: globus_sdk.TransferClient, task_id: str) -> dict[str, Any]:
        """The task once it has ended; cancelled, and an error, after `timeout`."""
        deadline = time.monotonic() + self.timeout
        pause = self.poll_first
        while True:
            task = client.get_task(task_id)
            if task["status"] in ("SUCCEEDED", "FAILED"):
                return dict(task.data)
            left = deadline - time.monotonic()
            if left <= 0:
                client.cancel_task(task_id)
                raise ActionFailed(
                    f"Globus task {task_id} had not ended after {self.timeout:g} s "
                    f"({task['status']}: {task.get('nice_status') or 'no details'}); cancelled"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, self.poll_max)

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"), lock=True)
        ids = self.ctx.location_ids(conn)
        now = self.ctx.now()
        if result.facts.get("mismatch"):
            cat.mark_replica(conn, facts.id, ids[step.get("source")], "corrupt", now)
            return
        state = result.facts["state"]
        if state == "verified" and facts.md5 != result.facts["md5"]:
            raise ActionFailed("the file's md5 in the catalog changed while Globus copied it")
        cat.put_replica(
            conn,
            facts.id,
            ids[step.get("target")],
            step.get("path"),
            state,
            at=now,
            size=result.facts["size"],
            checksum=result.facts.get("md5"),
        )
        if result.facts.get("source_verified"):
            cat.mark_replica(conn, facts.id, ids[step.get("source")], "verified", now)
        if state == "verified":
            self.ctx.verified_by_copy.add(
                (step.get("experiment"), step.get("file"), step.get("target"))
            )


@dataclass(frozen=True)
class Ended:
    """What a task that ended did with its files."""

    task: dict[str, Any]
    moved: frozenset[str]  # destination paths transferred (and verified)
    skipped: dict[str, dict[str, Any]]  # source path -> why Globus skipped it
    errors: list[dict[str, Any]]  # error events of a failed task

    @classmethod
    def fetch(cls, client: globus_sdk.TransferClient, task: dict[str, Any]) -> Ended:
        task_id = task["task_id"]
        moved = frozenset(
            e["destination_path"]
            for e in client.paginated.task_successful_transfers(task_id).items()
        )
        skipped = {
            e["source_path"]: e for e in client.paginated.task_skipped_errors(task_id).items()
        }
        if task["status"] == "SUCCEEDED":
            return cls(task, moved, skipped, [])
        errors = [e for e in client.paginated.task_event_list(task_id).items() if e.get("is_error")]
        return cls(task, moved, skipped, errors)

    def outcome(self, item: Item, source: Collection, target: Collection) -> Result | ActionFailed:
        task_id = self.task["task_id"]
        if item.destination_path in self.moved:
            return _copied(item, task_id)
        error = self.skipped.get(item.source_path)
        if error is not None:
            return ActionFailed(
                f"Globus task {task_id} skipped {item.source_path} on {source.location}: "
                f"{error.get('error_code')} {error.get('error_details') or ''}".rstrip(),
                retryable=False,
            )
        if self.task["status"] == "SUCCEEDED":
            return _in_sync(item, task_id, target.location)
        return _failed(item, self.task, self.errors)


def _item(conn: Connection, index: int, step: Step, source: Collection, target: Collection) -> Item:
    try:
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"))
    except cat.NoSuchFile as exc:
        raise ActionFailed(str(exc), retryable=False) from None
    origin = cat.file_replicas(conn, facts.id).get(step.get("source"))
    if origin is None or origin.state not in ("present", "verified"):
        raise ActionFailed(
            f"no readable replica of the file on {step.get('source')} any more", retryable=False
        )
    return Item(
        index,
        source.path(origin.path),
        target.path(step.get("path")),
        facts.md5,
        facts.size if facts.size is not None else origin.size,
        origin.state,
    )


def _copied(item: Item, task_id: str) -> Result:
    """A file Globus transferred: with the md5 known, it checked both ends against it."""
    if item.md5 is None:
        return Result(
            {"state": "present", "size": item.size, "globus_task": task_id},
            f"copied by Globus task {task_id}, checked against the source only: the file's "
            "md5 is unknown, so the replica is recorded present",
            bytes=item.size or 0,
        )
    return Result(
        {
            "state": "verified",
            "md5": item.md5,
            "size": item.size,
            "globus_task": task_id,
            "source_verified": True,
        },
        f"copied by Globus task {task_id}; {CHECKSUM_ALGORITHM} of both ends matched the md5",
        bytes=item.size or 0,
    )


def _in_sync(item: Item, task_id: str, location: str) -> Result:
    """A file Globus did not send: the destination already had the source's checksum
    (sync_level checksum), as after a resumed apply. That makes it as good as the
    source: verified when the source is verified against the md5, present otherwise."""
    verified = item.md5 is not None and item.source_state == "verified"
    state = "verified" if verified else "present"
    return Result(
        {
            "state": state,
            "md5": item.md5 if verified else None,
            "size": item.size,
            "globus_task": task_id,
            "in_sync": True,
        },
        f"already on {location} with the source's checksum (Globus task {task_id} "
        f"compared them and sent nothing); recorded {state}, as the source is",
    )


def _failed(
    item: Item, task: dict[str, Any], events: list[dict[str, Any]]
) -> Result | ActionFailed:
    """A file a failed task did not transfer: the error an event names it with, or the
    task's own. A checksum mismatch against the md5 marks the source corrupt."""
    event = next((e for e in events if _names(e, item)), None)
    if event is not None and event.get("code") == "EXTERNAL_CHECKSUM_MISMATCH":
        return Result(
            {"mismatch": True, "expected": item.md5, "globus_task": task["task_id"]},
            f"Globus task {task['task_id']}: the {CHECKSUM_ALGORITHM} of {item.source_path} "
            f"is not the catalog's md5 {item.md5}",
        )
    error = event or task.get("fatal_error") or {}
    return ActionFailed(
        f"Globus task {task['task_id']} failed: "
        f"{error.get('code') or task['status']}: {error.get('description') or 'no details'}"
    )


def _names(event: dict[str, Any], item: Item) -> bool:
    """Whether an error event is about this file: Globus names it on a line of the
    event's details that ends with its path (`File: PATH`, `Command: STOR PATH`)."""
    for line in str(event.get("details") or "").splitlines():
        text = line.strip()
        for path in (item.source_path, item.destination_path):
            if text == path or text.endswith((f" {path}", f":{path}")):
                return True
    return False


# ---- verify


@register
class GlobusVerify(Executor):
    """`verify` of a replica on a `globus://` location. Globus has no call that
    re-reads a file and returns its checksum, so the one verification there is the
    copy's own (its checksums against the md5, in the same apply)."""

    kind = "verify"
    options: ClassVar[tuple[str, ...]] = ("paranoid",)

    @classmethod
    def handles(cls, schemes: frozenset[str]) -> bool:
        return "globus" in schemes

    def locations(self, step: Step) -> tuple[str, ...]:
        return (step.get("target"),)

    def execute(self, step: Step) -> Result:
        key = (step.get("experiment"), step.get("file"), step.get("target"))
        if key in self.ctx.verified_by_copy and not self.ctx.options.paranoid:
            return Result({"by_copy": True}, "verified by the Globus copy that wrote it")
        raise ActionFailed(
            f"policyd cannot re-read a replica on {step.get('target')} (globus://): Globus "
            "verifies checksums only while it copies",
            retryable=False,
        )

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        """Nothing to record: the copy recorded the replica verified."""


# ---- grants


def permissions(perms: list[str]) -> str:
    """Globus has read (`r`) and read-write (`rw`); write alone it cannot give."""
    if "write" in perms:
        if "read" not in perms:
            raise ActionFailed(
                "Globus cannot grant write without read: grant read, write", retryable=False
            )
        return "rw"
    return "r"


@register
class GlobusAcl(PosixAcl):
    """`acl` on a `globus://` location: an access rule of its collection. The `grants`
    table is written as for POSIX grants (`PosixAcl.record`): the planner reads one
    table for both."""

    @classmethod
    def handles(cls, schemes: frozenset[str]) -> bool:
        return "globus" in schemes

    def __init__(self, ctx: ExecContext) -> None:
        super().__init__(ctx)
        self.clients = Clients(ctx.config)
        self._identities: dict[str, str] = {}
        self._identities_lock = threading.Lock()

    def execute(self, step: Step) -> Result:
        where = collection(self.ctx.config, step.get("target"))
        path = where.path(step.get("path"), folder=True)
        granting = step.get("op") == "grant"
        wanted = permissions(step.get("perms", [])) if granting else ""
        kind, principal = self._principal(step.get("principal"))
        client = self.clients.transfer()
        try:
            rules = [
                r
                for r in client.endpoint_acl_list(where.id)
                if r.get("principal_type") == kind
                and r.get("principal") == principal
                and r.get("path") == path
            ]
            if granting:
                return self._grant(client, where, step, path, (kind, principal, wanted), rules)
            return self._revoke(client, where, step, path, rules)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            raise api_failure(f"the access rules of {where.location}", exc) from None

    def _grant(
        self,
        client: globus_sdk.TransferClient,
        where: Collection,
        step: Step,
        path: str,
        rule: tuple[str, str, str],
        rules: list[Any],
    ) -> Result:
        kind, principal, wanted = rule
        equal = next((r for r in rules if r.get("permissions") == wanted), None)
        if equal is not None:
            return Result(
                {"access_id": str(equal["id"]), "path": path, "existing": True},
                f"the rule giving {step.get('principal')} {wanted} on {path} is already there",
            )
        if rules:
            ours = self._recorded(step)
            if ours is None:
                raise refused(
                    f"{where.location} has a rule giving {step.get('principal')} "
                    f"{rules[0].get('permissions')} on {path} that policyd did not make; "
                    "it is left as it is"
                )
            client.update_endpoint_acl_rule(where.id, rules[0]["id"], {"permissions": wanted})
            return Result(
                {"access_id": str(rules[0]["id"]), "path": path},
                f"{step.get('principal')} now has {wanted} on {path}",
            )
        made = client.add_endpoint_acl_rule(
            where.id,
            {
                "DATA_TYPE": "access",
                "principal_type": kind,
                "principal": principal,
                "path": path,
                "permissions": wanted,
            },
        )
        return Result({"access_id": str(made["access_id"]), "path": path})

    def _revoke(
        self,
        client: globus_sdk.TransferClient,
        where: Collection,
        step: Step,
        path: str,
        rules: list[Any],
    ) -> Result:
        recorded = self._recorded(step)
        if recorded is None:
            raise refused(
                f"policyd recorded no grant to {step.get('principal')} on "
                f"{step.get('experiment')} at {where.location}; it revokes only its own"
            )
        if not rules:
            return Result({"path": path, "gone": True}, f"no rule on {path} any more")
        granted = permissions(recorded.split(","))
        ours = [r for r in rules if r.get("permissions") == granted]
        if not ours:
            raise refused(
                f"the rule for {step.get('principal')} on {path} gives "
                f"{rules[0].get('permissions')}, not the {granted} policyd granted; "
                "it is left as it is"
            )
        for rule in ours:
            client.delete_endpoint_acl_rule(where.id, rule["id"])
        return Result({"access_id": ",".join(str(r["id"]) for r in ours), "path": path})

    def _recorded(self, step: Step) -> str | None:
        """The permissions policyd recorded granting this principal here, if any."""
        with self.ctx.engine.connect() as conn:
            ids = self.ctx.location_ids(conn)
            return conn.execute(
                select(grants.c.perms)
                .join(experiments, experiments.c.id == grants.c.experiment_id)
                .where(
                    experiments.c.name == step.get("experiment"),
                    grants.c.location_id == ids[step.get("target")],
                    grants.c.principal == step.get("principal"),
                )
            ).scalar()

    def _principal(self, principal: str) -> tuple[str, str]:
        """(principal_type, id) of a Globus access rule for `user:NAME` or `group:ID`."""
        kind, _, name = principal.partition(":")
        if kind == "group":
            try:
                return "group", str(uuid.UUID(name))
            except ValueError:
                raise ActionFailed(
                    f"Globus access rules name a group by its Globus group id: write "
                    f'group "UUID" instead of group {name!r}',
                    retryable=False,
                ) from None
        if kind != "user":
            raise ActionFailed(
                f"principal {principal!r} is not user:NAME or group:ID", retryable=False
            )
        template = self.ctx.config.identities.globus_identity
        if template is None:
            raise ActionFailed(
                "identities.globus_identity is not set: grants on Globus need it to name "
                'users\' Globus identities (e.g. "{user}@anl.gov")',
                retryable=False,
            )
        username = template.replace("{user}", name)
        with self._identities_lock:
            if username not in self._identities:
                self._identities[username] = self._identity_id(username)
            return "identity", self._identities[username]

    def _identity_id(self, username: str) -> str:
        try:
            found = self.clients.auth().get_identities(usernames=[username], provision=True)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            raise api_failure(f"the identity lookup of {username}", exc) from None
        for identity in found["identities"]:
            if str(identity.get("username", "")).lower() == username.lower():
                return str(identity["id"])
        raise ActionFailed(f"Globus Auth has no identity {username}", retryable=False)
