"""The audit transformer: adds lineage columns to every valid row (their names and types: `outputs.table_schema`).

- `ingestion_ts`: the run's UTC timestamp, one value per run, identical in every sink;
- `src_filename`: the file's path relative to the raw root;
- `src_row_number`: 1-based data row of the record in its file (in its sheet for XLSX, named by `src_sheet`);
- `src_row_hash`: SHA-256 of the original record in canonical form (see `retail_bronze_source.row_hash`).
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from .outputs import INGESTION_TS, SRC_FILENAME, SRC_SHEET, UTC_TS, table_schema
from .registry import TableSpec


def add_audit_columns(valid: pa.Table, spec: TableSpec, *, ingestion_ts: datetime, src_filename: str,
                      sheet: str | None) -> pa.Table:
    """Return `valid` (validator output) with the audit columns, in `table_schema(spec)` order and types; columns
    outside the contract that the table adds come last."""
    n = valid.num_rows
    columns = {
        INGESTION_TS: pa.repeat(pa.scalar(ingestion_ts, UTC_TS), n),
        SRC_FILENAME: pa.repeat(pa.scalar(src_filename, pa.string()), n),
        SRC_SHEET: pa.repeat(pa.scalar(sheet, pa.string()), n),
    }
    schema = table_schema(spec)
    evolved = [valid.schema.field(name) for name in valid.column_names if name not in schema.names]
    arrays = [valid[name] if name in valid.column_names else columns[name] for name in schema.names]
    return pa.Table.from_arrays([*arrays, *(valid[f.name] for f in evolved)], schema=pa.schema([*schema, *evolved]))
