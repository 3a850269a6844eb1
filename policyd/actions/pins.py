"""`policyd pin` and `unpin`: hold an experiment's files where they are for a while.

As `dm-pin-experiment` does, a pin postpones archive releases, releases and expires of
one experiment (the planner skips it, and deletes re-check it when they run). Pins
change the catalog, so each is a ledger event, and a plan made before a pin is stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches

from sqlalchemy import Engine, select, update

from policyd.audit import ledger
from policyd.catalog.schema import experiments


class UnknownExperiment(LookupError):
    """No experiment of that name; the message suggests the closest one."""


@dataclass(frozen=True)
class PinResult:
    experiment: str
    pinned_until: float | None
    was: float | None


def set_pin(engine: Engine, experiment: str, until: float | None, at: float) -> PinResult:
    """Pin `experiment` until `until` (epoch seconds), or unpin it with None."""
    with engine.begin() as conn:
        row = conn.execute(
            select(experiments.c.id, experiments.c.pinned_until).where(
                experiments.c.name == experiment
            )
        ).first()
        if row is None:
            names = [n for (n,) in conn.execute(select(experiments.c.name))]
            close = get_close_matches(experiment, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UnknownExperiment(f"no experiment {experiment!r} in the catalog{hint}")
        conn.execute(
            update(experiments).where(experiments.c.id == row.id).values(pinned_until=until)
        )
        ledger.append(
            conn,
            "pin" if until is not None else "unpin",
            at=at,
            actor="cli",
            payload={"experiment": experiment, "until": until, "was": row.pinned_until},
        )
    return PinResult(experiment, until, row.pinned_until)
