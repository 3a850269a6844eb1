"""`policyd catalog stats`: the figures dm-get-file-collection-stats prints, by the same keys.

The standard deviation is the population one, computed in two passes in the database
(mean first, then the mean squared deviation) so that neither a million-file scan
nor large sizes lose precision to the E[x^2] - E[x]^2 cancellation.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Double, Engine, cast, func, select

from policyd.catalog.schema import experiments, files

STATS_KEYS = (
    "nFiles",
    "collectionSize",
    "minFileSize",
    "maxFileSize",
    "averageFileSize",
    "stdDevFileSize",
)


class UnknownExperiment(LookupError):
    """`--experiment` names no experiment of the catalog."""


def collection_stats(engine: Engine, experiment: str | None = None) -> dict[str, Any]:
    live = files.c.expired_at.is_(None)
    with engine.connect() as conn:
        where = [live]
        if experiment is not None:
            exp_id = conn.execute(
                select(experiments.c.id).where(experiments.c.name == experiment)
            ).scalar()
            if exp_id is None:
                raise UnknownExperiment(experiment)
            where.append(files.c.experiment_id == exp_id)
        size = cast(files.c.size, Double)
        n, total, smallest, largest, mean = conn.execute(
            select(
                func.count(files.c.id),
                func.sum(files.c.size),  # integer: exact, where a double sum is not past 2^53
                func.min(files.c.size),
                func.max(files.c.size),
                func.avg(size),
            ).where(*where)
        ).one()
        variance = 0.0
        if n:
            deviation = size - float(mean)
            variance = float(
                conn.execute(select(func.avg(deviation * deviation)).where(*where)).scalar() or 0
            )
    result: dict[str, Any] = {"experimentName": experiment} if experiment else {}
    result.update(
        {
            "nFiles": int(n),
            "collectionSize": int(total or 0),
            "minFileSize": int(smallest) if smallest is not None else None,
            "maxFileSize": int(largest) if largest is not None else None,
            "averageFileSize": float(mean) if mean is not None else None,
            "stdDevFileSize": math.sqrt(variance) if n else None,
        }
    )
    return result
