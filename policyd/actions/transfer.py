"""`copy` and `verify`: bytes between locations, checked against the file's md5.

A copy reads its source once: the bytes are hashed as they are read (between local
folders: as they land), written to a temporary name beside the target, their size
checked, fsync'd and renamed into place (spec/rules.md section 9, invariant 2). A copy
between local folders leaves the fsync and the rename to the runner, which settles the
copies that finished meanwhile together (`stores.settle`). Only then, in the catalog
transaction, is the target recorded: `verified` when the checksum equals the file's
md5 (the source is then verified too), or, when the md5 was unknown, the checksum
becomes it (first read wins). A mismatch with a known md5 is caught before the
rename: what was written is removed, whatever was at the target path stays as it was,
and the source is marked `corrupt`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy.engine import Connection

from policyd.actions import catalog_ops as cat
from policyd.actions.base import ActionFailed, Executor, Result, Step, register
from policyd.actions.stores import Landed, LocalStore, Written, settle


def copy_tag(step: Step) -> str:
    return f"{step.plan_id[-12:]}-{step.id}"


@register
class Copy(Executor):
    kind = "copy"
    options: ClassVar[tuple[str, ...]] = ("paranoid",)

    def execute(self, step: Step) -> Result:
        source = self.ctx.store(step.get("source"))
        target = self.ctx.store(step.get("target"))
        with self.ctx.engine.connect() as conn:
            facts = cat.find_file(conn, step.get("experiment"), step.get("file"))
            reps = cat.file_replicas(conn, facts.id)
        origin = reps.get(step.get("source"))
        if origin is None or origin.state not in ("present", "verified"):
            raise ActionFailed(
                f"no readable replica of the file on {step.get('source')} any more",
                retryable=False,
            )
        size = facts.size if facts.size is not None else origin.size
        free = None if size is None else target.free_bytes()  # None: cannot tell (some SFTP)
        if size is not None and free is not None and free < size:
            raise ActionFailed(
                f"not enough free space on {target.name}: {free} bytes free, {size} needed"
            )
        try:
            info = source.stat(origin.path)
        except FileNotFoundError:
            raise ActionFailed(
                f"{source.path(origin.path)} does not exist", retryable=False
            ) from None
        options: dict[str, Any] = {
            "expected_size": size,
            "expected_md5": facts.md5,
            "mtime_ns": info.st_mtime_ns,
            "mode": info.st_mode,
        }
        landed: Landed | None = None
        if isinstance(source, LocalStore) and isinstance(target, LocalStore):
            copied = target.copy_local(
                source, origin.path, step.get("path"), copy_tag(step), **options
            )
            if isinstance(copied, Landed):
                landed, written = copied, copied.written
            else:
                written = copied
        else:
            written = target.write(
                step.get("path"), source.read_chunks(origin.path), copy_tag(step), **options
            )
        if facts.md5 is not None and written.md5 != facts.md5:
            # not renamed into place (`expected_md5`): the target is as it was
            return Result(
                {
                    "mismatch": True,
                    "md5": written.md5,
                    "expected": facts.md5,
                    "origin": origin.path,
                },
                f"checksum mismatch: read {written.md5}, the catalog has {facts.md5}",
            )
        if self.ctx.options.paranoid:
            if landed is not None:
                error = settle([landed])[0]
                landed = None
                if error is not None:
                    raise error
            again = target.checksum(step.get("path"))
            if again != written:
                target.remove(step.get("path"))
                raise ActionFailed(
                    f"re-read of {target.path(step.get('path'))} differs from what was written"
                )
        return Result(
            {"md5": written.md5, "size": written.size, "mtime": info.st_mtime},
            bytes=written.size,
            landed=landed,
        )

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"), lock=True)
        ids = self.ctx.location_ids(conn)
        now = self.ctx.now()
        if result.facts.get("mismatch"):
            cat.mark_replica(conn, facts.id, ids[step.get("source")], "corrupt", now)
            return
        md5 = facts.md5  # read under the row's lock: the copy checked against it
        if md5 is None:
            md5 = cat.set_md5_if_unknown(conn, facts.id, result.facts["md5"])
        if md5 != result.facts["md5"]:
            raise ActionFailed("another read set a different md5 meanwhile", retryable=True)
        cat.put_replica(
            conn,
            facts.id,
            ids[step.get("target")],
            step.get("path"),
            "verified",
            at=now,
            size=result.facts["size"],
            checksum=md5,
            mtime=result.facts["mtime"],
        )
        cat.mark_replica(conn, facts.id, ids[step.get("source")], "verified", now)
        self.ctx.verified_by_copy.add(
            (step.get("experiment"), step.get("file"), step.get("target"))
        )


def mismatch_error(result: Result) -> ActionFailed | None:
    """A copy that recorded a corrupt source still failed: the runner reports it."""
    if result.facts.get("mismatch"):
        return ActionFailed(result.note + "; the source replica is marked corrupt", retryable=False)
    return None


@register
class Verify(Executor):
    kind = "verify"
    options: ClassVar[tuple[str, ...]] = ("paranoid",)

    def locations(self, step: Step) -> tuple[str, ...]:
        return (step.get("target"),)

    def known(self, step: Step) -> Result | None:
        key = (step.get("experiment"), step.get("file"), step.get("target"))
        if key in self.ctx.verified_by_copy and not self.ctx.options.paranoid:
            return Result({"by_copy": True}, "verified by the copy that wrote it")
        return None

    def execute(self, step: Step) -> Result:
        by_copy = self.known(step)
        if by_copy is not None:
            return by_copy
        store = self.ctx.store(step.get("target"))
        with self.ctx.engine.connect() as conn:
            facts = cat.find_file(conn, step.get("experiment"), step.get("file"))
            replica = cat.file_replicas(conn, facts.id).get(step.get("target"))
        if replica is None:
            raise ActionFailed(f"no replica on {step.get('target')} to verify", retryable=False)
        if not store.lexists(replica.path):
            return Result({"missing": True}, f"{store.path(replica.path)} is missing")
        read: Written = store.checksum(replica.path)
        return Result({"md5": read.md5, "size": read.size, "expected": facts.md5}, bytes=read.size)

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        if result.facts.get("by_copy"):
            return
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"), lock=True)
        location_id = self.ctx.location_ids(conn)[step.get("target")]
        now = self.ctx.now()
        if result.facts.get("missing"):
            cat.mark_replica(conn, facts.id, location_id, "missing", now)
            return
        md5 = cat.set_md5_if_unknown(conn, facts.id, result.facts["md5"])
        state = "verified" if md5 == result.facts["md5"] else "corrupt"
        cat.mark_replica(conn, facts.id, location_id, state, now)
        result.facts["state"] = state
