"""Object ids in paths: anything that cannot be one of our ids is answered 404 at once.

Our ids are a short prefix and base-32 text (``tu_…``, ``evt_…``, ``we_…``). Checking the
form first keeps junk away from the database, where some of it is not harmless: PostgreSQL
refuses a string holding NUL (``/v1/events/evt%00``) with an error, not an empty result.
"""
from __future__ import annotations

import re

_ID = re.compile(r"[a-z]{2,5}_[0-9a-z]{1,40}")


def plausible(object_id: str) -> bool:
    return bool(_ID.fullmatch(object_id))
