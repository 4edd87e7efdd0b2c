"""The sinks a run writes, each in its own module, each knowing what it holds so that the run can bring it up to the
others: the DuckDB warehouse (`warehouse`), the Parquet change log (`change_log`), the Delta mirror (`delta`), the
rejects CSVs (`rejects_csv`); which state belongs to which sink (`identity`), a lost warehouse made whole again
(`restore`), and the load packages of dlt's pipelines (`packages`). The order of the steps is the run's (`run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final

from ..storage import LAKE_SECTION, Store, open_store

DATASET = "bronze"
"""The dataset (DuckDB schema, lake folder) the package loads."""
META_SCHEMA = "_retail_bronze"
"""DuckDB schema of the warehouse's own bookkeeping, beside dlt's dataset so that dlt's commands never touch it."""
RESTORED_LOADS = "restored_loads"
"""Table of `META_SCHEMA` listing the warehouse loads a restored warehouse took from its lake (dlt's `_dlt_loads` of
the restored file does not list them, yet they are the warehouse's: a lake rebuilt later imports them too)."""
LOADER_FILE_FORMAT: Final = "parquet"
"""Every load job is Parquet: the rows stay in Arrow end to end."""


@dataclass(frozen=True)
class Layout:
    """Where a run reads and writes: the raw root and the lake (local paths or fsspec URLs), the DuckDB file."""

    raw_url: str
    lake: Path | str
    warehouse: Path

    @cached_property
    def lake_store(self) -> Store:
        """The lake, its credentials resolved from `[destination.retail_bronze_lake.credentials]` (see `storage`)."""
        return open_store(self.lake, LAKE_SECTION)

    @property
    def delta_root(self) -> Store:
        return self.lake_store.child(DATASET, "delta")

    @property
    def rejects_root(self) -> Store:
        return self.lake_store.child("_rejects")
