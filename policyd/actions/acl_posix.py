"""`acl` actions on `file://` locations: POSIX ACLs with setfacl (Debian's `acl` package).

A grant gives the principal its permissions on the experiment directory and everything
in it (the access ACL, recursively), and a default ACL on every directory so files
written later inherit it (spec/rules.md section 5, Grants). A revoke removes exactly
that principal's entries, and only grants policyd recorded are ever revoked (the
planner reads the `grants` table). Both are idempotent. setfacl walks with `-P`, so a
symbolic link inside the directory is never followed, and the directory itself is
resolved with the location's path checks, so it never leaves the root.

Principals map to system accounts: `user:NAME` through `identities.system_user` (a
template with `{user}`, default the name itself), `group:NAME` to the group NAME. An
account that does not exist on this machine fails the action with the name to create.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from policyd.actions.base import ActionFailed, Executor, Result, Step, register
from policyd.actions.stores import LocalStore
from policyd.catalog.schema import experiments, grants

#: Paths per setfacl call when setting default ACLs folder by folder.
BATCH: Final = 200


def account(principal: str, system_user: str) -> tuple[str, str]:
    """(`u` or `g`, the system account) for `user:NAME` or `group:NAME`."""
    kind, _, name = principal.partition(":")
    if kind == "user":
        login = system_user.replace("{user}", name)
        try:
            pwd.getpwnam(login)
        except KeyError:
            raise ActionFailed(
                f"no system account {login!r} for experiment user {name!r} on this machine "
                "(identities.system_user maps users to accounts)",
                retryable=False,
            ) from None
        return "u", login
    if kind == "group":
        try:
            grp.getgrnam(name)
        except KeyError:
            raise ActionFailed(
                f"no system group {name!r} on this machine", retryable=False
            ) from None
        return "g", name
    raise ActionFailed(f"principal {principal!r} is not user:NAME or group:NAME", retryable=False)


def _folders(root: str) -> Iterator[str]:
    for folder, subfolders, _ in os.walk(root, followlinks=False):
        yield folder
        subfolders[:] = [s for s in subfolders if not os.path.islink(os.path.join(folder, s))]


def _setfacl(args: Sequence[str]) -> None:
    try:
        done = subprocess.run(["setfacl", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ActionFailed(
            "setfacl is not installed (Debian package `acl`)", retryable=False
        ) from None
    if done.returncode != 0:
        raise ActionFailed(f"setfacl {' '.join(args[:3])}: {done.stderr.strip()}")


@contextmanager
def _acl_lock(root: Path) -> Iterator[None]:
    """One ACL change at a time on a location. setfacl reads an ACL, changes it and
    writes it back: two grants on one folder at once (apply's workers run them side by
    side) could each write back the ACL without the other's entry. An flock on the
    location's root excludes other workers and other processes alike."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _batches(items: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@register
class PosixAcl(Executor):
    kind = "acl"

    def locations(self, step: Step) -> tuple[str, ...]:
        return (step.get("target"),)

    def execute(self, step: Step) -> Result:
        store = self.ctx.store(step.get("target"))
        if not isinstance(store, LocalStore):
            raise ActionFailed(f"{step.get('target')} takes no POSIX ACLs", retryable=False)
        system_user = self.ctx.config.identities.system_user
        tag, name = account(step.get("principal"), system_user)
        granting = step.get("op") == "grant"
        directory = store.path(step.get("path"), create_dirs=granting)
        perms = "rwX" if "write" in step.get("perms", []) else "rX"
        with _acl_lock(store.root):
            if granting:
                directory.mkdir(exist_ok=True)
                _setfacl(["-R", "-P", "-m", f"{tag}:{name}:{perms}", "--", str(directory)])
                for batch in _batches(_folders(str(directory))):
                    _setfacl(["-d", "-m", f"{tag}:{name}:{perms}", "--", *batch])
            elif directory.is_dir():
                _setfacl(["-R", "-P", "-x", f"{tag}:{name}", "--", str(directory)])
                for batch in _batches(_folders(str(directory))):
                    _setfacl(["-d", "-x", f"{tag}:{name}", "--", *batch])
        return Result({"account": f"{tag}:{name}", "directory": str(directory)})

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        experiment_id = conn.execute(
            select(experiments.c.id).where(experiments.c.name == step.get("experiment"))
        ).scalar_one()
        location_id = self.ctx.location_ids(conn)[step.get("target")]
        key = (
            grants.c.experiment_id == experiment_id,
            grants.c.location_id == location_id,
            grants.c.principal == step.get("principal"),
        )
        if step.get("op") == "revoke":
            conn.execute(delete(grants).where(*key))
            return
        values = {
            "rule": step.get("rule"),
            "path": step.get("path"),
            "perms": ",".join(step.get("perms", [])),
            "granted_at": self.ctx.now(),
        }
        if not conn.execute(update(grants).where(*key).values(**values)).rowcount:
            conn.execute(
                grants.insert().values(
                    experiment_id=experiment_id,
                    location_id=location_id,
                    principal=step.get("principal"),
                    **values,
                )
            )
