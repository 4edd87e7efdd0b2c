"""The sinks a run writes, each in its own module, each knowing what it holds so that the run can bring it up to the
others: the DuckDB warehouse (`warehouse`), the Parquet change log (`change_log`), the Delta mirror (`delta`), the
rejects CSVs (`rejects_csv`); which state belongs to which sink (`identity`), a lost warehouse made whole again
(`restore`), and the load packages of dlt's pipelines (`packages`). The order of the steps is the run's (`run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

DATASET = "bronze"
"""The dataset (DuckDB schema, lake folder) the package loads."""
LOADER_FILE_FORMAT: Final = "parquet"
"""Every load job is Parquet: the rows stay in Arrow end to end."""


@dataclass(frozen=True)
class Layout:
    """Where a run reads and writes."""

    raw_url: str
    lake: Path
    warehouse: Path

    @property
    def delta_root(self) -> Path:
        return self.lake / DATASET / "delta"

    @property
    def rejects_root(self) -> Path:
        return self.lake / "_rejects"
