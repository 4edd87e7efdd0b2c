"""Named points where a run can be killed on purpose, so tests prove that a killed run loses and doubles nothing.

Set `RETAIL_BRONZE_CRASH_AT` to a point name (and optionally `RETAIL_BRONZE_CRASH_AFTER` to a count, default 1) and
the process SIGKILLs itself the n-th time it reaches that point. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("file_staged", "warehouse_loaded", "lake_loaded", "delta_table_mirrored")
WAP_POINTS = ("wap_audited", "wap_publishing", "wap_published")
"""Points of a write-audit-publish run only: audit results recorded (the staging is then dropped by the next run),
the staging marked for publishing (the next run publishes it), the copy renamed over the warehouse (the next run
moves its pipeline files)."""
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment asks for a crash at `name`."""
    if os.environ.get("RETAIL_BRONZE_CRASH_AT") != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(os.environ.get("RETAIL_BRONZE_CRASH_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
