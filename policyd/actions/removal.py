"""`delete` and `expire`: the only executors that remove data, under a per-file lock.

The plan said a delete was safe when it was made; the catalog and the storage may
have changed since. So, in one transaction holding the file's lock, a delete checks
again (spec/rules.md section 9, invariant 1): the replica is still recorded; no
`protect` rule matches the file now; its experiment is not pinned; it keeps at least
`max(safety.min_copies, 1)` other verified replicas, old enough for `release_grace`,
that still exist on storage where policyd can look (file:// locations). Anything that
no longer holds refuses the delete, with its reason in the ledger, and nothing is
removed. Only then is the file unlinked (never through a symbolic link) and the
replica dropped from the catalog.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from policyd.actions import catalog_ops as cat
from policyd.actions.base import ActionFailed, Executor, Result, Step, refused, register
from policyd.catalog.schema import experiments, files, notices, replicas
from policyd.rules.pyeval import ReplicaView
from policyd.rules.sqlgen import Sources, row_columns
from policyd.units import format_duration


def rule_row(
    conn: Connection, file_id: int, reps: dict[str, cat.ReplicaFacts], ctx: Any
) -> dict[str, Any]:
    """The file as the rules see it, for re-evaluating `protect` at execution time."""
    query = (
        select(*row_columns(Sources(files, experiments)))
        .select_from(files.join(experiments, experiments.c.id == files.c.experiment_id))
        .where(files.c.id == file_id)
    )
    row = dict(conn.execute(query).one()._mapping)
    tiers = {name: loc.tier for name, loc in ctx.config.locations.items()}
    row["replicas"] = [
        ReplicaView(name, tiers.get(name, ""), r.state, r.path) for name, r in reps.items()
    ]
    return row


def _still_there(ctx: Any, replica: cat.ReplicaFacts) -> bool:
    """Whether a replica policyd relies on exists on storage (file:// and sftp:// ones are
    looked at, an unreachable SFTP host raising so the delete waits; Globus ones are
    trusted)."""
    loc = ctx.config.locations.get(replica.location)
    if loc is None or loc.scheme not in ("file", "sftp"):
        return True
    store = ctx.store(replica.location)
    size = store.size(replica.path)
    return size is not None and (replica.size is None or size == replica.size)


def notice_wait(conn: Connection, ctx: Any, step: Step, experiment_id: int) -> str | None:
    """Why a delete by a rule with `notify CH before D` must still wait: its notice was
    not sent, or is not D old yet (the plan said so when it was made; this holds it
    when it runs)."""
    rule = next((r for r in ctx.rules if r.name == step.get("rule")), None)
    notify = (
        next((s.notify for s in rule.statements if getattr(s, "notify", None) is not None), None)
        if rule is not None
        else None
    )
    if notify is None:
        return None
    sent = conn.execute(
        select(notices.c.sent_at).where(
            notices.c.rule == rule.name,
            notices.c.experiment_id == experiment_id,
            notices.c.channel == notify.channel,
        )
    ).scalar()
    if sent is None:
        return f"the notice to {notify.channel} was never sent"
    if sent > ctx.now() - notify.before:
        return f"the notice to {notify.channel} is not {format_duration(notify.before)} old yet"
    return None


def refuse_if_held(
    conn: Connection,
    ctx: Any,
    step: Step,
    facts: cat.FileFacts,
    reps: dict[str, cat.ReplicaFacts],
    now: float,
) -> None:
    """What holds a file's data whatever the plan said: a pin, a `protect` rule that
    matches it now, a notice not yet D old."""
    if facts.pinned_until is not None and facts.pinned_until > now:
        raise refused(f"experiment {facts.experiment} is pinned")
    protector = ctx.protected_by(rule_row(conn, facts.id, reps, ctx))
    if protector is not None:
        raise refused(f"protected by rule {protector}")
    waiting = notice_wait(conn, ctx, step, facts.experiment_id)
    if waiting is not None:
        raise refused(waiting)


@register
class Delete(Executor):
    kind = "delete"
    locked = True

    def locations(self, step: Step) -> tuple[str, ...]:
        return (step.get("target"),)

    def apply(self, conn: Connection, step: Step) -> Result:
        ctx = self.ctx
        target = step.get("target")
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"), lock=True)
        reps = cat.file_replicas(conn, facts.id)
        replica = reps.get(target)
        if replica is None:
            return Result({"gone": True}, "the replica was already removed from the catalog")
        now = ctx.now()
        refuse_if_held(conn, ctx, step, facts, reps, now)
        grace = float(ctx.config.safety.release_grace or 0.0)
        others = [
            r
            for name, r in reps.items()
            if name != target and r.state == "verified" and (r.verified_at or 0) <= now - grace
        ]
        present = [r for r in others if _still_there(ctx, r)]
        required = max(ctx.config.safety.min_copies, 1)
        if len(present) < required:
            lost = len(others) - len(present)
            missing = f" ({lost} recorded but not found on storage)" if lost else ""
            raise refused(
                f"min_copies: {len(present)} other verified replicas{missing}, {required} required"
            )
        removed = ctx.store(target).remove(replica.path)
        cat.drop_replica(conn, facts.id, replica.location_id)
        size = replica.size if replica.size is not None else facts.size or 0
        note = "" if removed else "the file was already gone from storage"
        return Result({"path": replica.path, "removed": removed}, note, bytes=int(size))


@register
class Expire(Executor):
    kind = "expire"
    options: ClassVar[tuple[str, ...]] = ("allow_expire",)
    locked = True

    def locations(self, step: Step) -> tuple[str, ...]:
        return ()

    def apply(self, conn: Connection, step: Step) -> Result:
        ctx = self.ctx
        if not ctx.options.allow_expire:
            raise refused("expire needs apply --allow-expire")
        facts = cat.find_file(conn, step.get("experiment"), step.get("file"), lock=True)
        if facts.expired_at is not None:
            return Result({"already": True}, "already expired")
        reps = cat.file_replicas(conn, facts.id)
        now = ctx.now()
        refuse_if_held(conn, ctx, step, facts, reps, now)
        remote = [
            n
            for n in reps
            if n in ctx.config.locations and ctx.config.locations[n].root_path is None
        ]
        if remote:
            raise ActionFailed(
                f"cannot remove replicas on {', '.join(remote)} from this machine", retryable=False
            )
        freed = 0
        for replica in reps.values():
            if replica.state != "missing":
                ctx.store(replica.location).remove(replica.path)
                freed += int(replica.size or facts.size or 0)
        conn.execute(replicas.delete().where(replicas.c.file_id == facts.id))
        conn.execute(update(files).where(files.c.id == facts.id).values(expired_at=now))
        return Result({"replicas": sorted(reps)}, bytes=freed)


__all__ = ["ActionFailed", "Delete", "Expire", "rule_row"]
