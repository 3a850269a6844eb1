"""How the catalog's JSON columns are decoded, on every connection to it.

Kept apart from db.py (which loads SQLAlchemy and alembic) so that the planner's
PostgreSQL reader process (policyd/planner/pg_reader.py) decodes them the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(r"\d{19}")


def load_json(text: str) -> Any:
    """JSON columns decoded with orjson (a plan decodes a metadata column per
    candidate file), except text with a 19-digit run: orjson reads integers beyond
    64 bits as floats, where the json module keeps them exact."""
    if _LONG_NUMBER.search(text):
        return json.loads(text)
    return orjson.loads(text)
