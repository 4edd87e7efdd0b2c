"""Named points where a run can be killed on purpose, so tests prove that a killed run loses and doubles nothing.

Set `RETAIL_BRONZE_CRASH_AT` to a point name (and optionally `RETAIL_BRONZE_CRASH_AFTER` to a count, default 1) and
the process SIGKILLs itself the n-th time it reaches that point. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("file_staged", "warehouse_loaded", "lake_loaded", "delta_table_mirrored")
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment asks for a crash at `name`."""
    if os.environ.get("RETAIL_BRONZE_CRASH_AT") != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(os.environ.get("RETAIL_BRONZE_CRASH_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
