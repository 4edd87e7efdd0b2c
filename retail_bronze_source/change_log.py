"""The Parquet change log: every loaded package of the warehouse pipeline imported, file by file, into the lake.

The lake pipeline loads exactly the files the warehouse pipeline loaded (hard-linked, not re-read or re-validated), so
both sinks hold the same rows with the same audit columns and `_dlt_load_id`, and the raw files are read once per run.
Each table's resource state lists the warehouse load ids it imported; the state commits with the lake load, so a
package is imported exactly once even when a run is killed between the two loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
import pyarrow.parquet as pq
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.extract.resource import DltResource
from dlt.pipeline.pipeline import Pipeline

from .sinks import loaded_load_ids, package_files

_KEPT_HINTS = ("name", "data_type", "nullable", "precision", "scale", "timezone")


def append_columns(warehouse: Pipeline, table: str) -> TTableSchemaColumns:
    """The warehouse columns of `table` with types only: the change log is append-only and keyless."""
    columns = warehouse.default_schema.get_table_columns(table)
    return {name: {k: v for k, v in column.items() if k in _KEPT_HINTS} for name, column in columns.items()}  # type: ignore[misc]


def change_log_resources(warehouse: Pipeline) -> list[DltResource]:
    """One append resource per table found in the warehouse pipeline's loaded packages."""
    loads = loaded_load_ids(warehouse)
    files_by_load = {load_id: package_files(warehouse, load_id, loaded_only=True) for load_id in loads}
    tables = sorted({table for files in files_by_load.values() for table in files})

    def resource(table: str) -> DltResource:
        def imports() -> Iterator[Any]:
            imported: list[str] = dlt.current.resource_state().setdefault("imported_loads", [])
            for load_id in loads:
                if load_id in imported:
                    continue
                for path in files_by_load[load_id].get(table, []):
                    yield dlt.mark.with_file_import(path, "parquet", items_count=pq.ParquetFile(path).metadata.num_rows)
                imported.append(load_id)

        return dlt.resource(imports(), name=table, table_name=table, write_disposition="append",
                            columns=append_columns(warehouse, table))

    return [resource(table) for table in tables]
