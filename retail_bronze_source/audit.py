"""The audit transformer: adds lineage columns to every valid row.

- `ingestion_ts`: the run's UTC timestamp, one value per run, identical in every sink;
- `src_filename`: the file's path relative to the raw root;
- `src_row_number`: 1-based data row of the record in its file (in its sheet for XLSX, named by `src_sheet`);
- `src_row_hash`: SHA-256 of the original record in canonical form (see `retail_bronze_source.validate`).
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from schemas.schemas import MOSTLY_DISTINCT

from .registry import TableSpec
from .validate import RESCUED, ROW_HASH, ROW_NUMBER

INGESTION_TS = "ingestion_ts"
SRC_FILENAME = "src_filename"
SRC_SHEET = "src_sheet"
UTC_TS = pa.timestamp("us", tz="UTC")


def has_sheets(spec: TableSpec) -> bool:
    """True when the table reads formats whose rows live in sheets."""
    return "xlsx" in spec.formats


def table_schema(spec: TableSpec) -> pa.Schema:
    """The loaded schema of a table: its contract, derived columns, rescued data, then the audit columns."""
    fields = [
        *spec.schema,
        *(pa.field(d.name, d.type) for d in spec.derived),
        pa.field(RESCUED, pa.string(), metadata={"json": "true"}),
        pa.field(INGESTION_TS, UTC_TS, nullable=False),
        pa.field(SRC_FILENAME, pa.string(), nullable=False),
        pa.field(ROW_NUMBER, pa.int64(), nullable=False),
    ]
    if has_sheets(spec):
        fields.append(pa.field(SRC_SHEET, pa.string()))
    fields.append(pa.field(ROW_HASH, pa.string(), nullable=False, metadata={MOSTLY_DISTINCT: "true"}))
    return pa.schema(fields)


def add_audit_columns(valid: pa.Table, spec: TableSpec, *, ingestion_ts: datetime, src_filename: str,
                      sheet: str | None) -> pa.Table:
    """Return `valid` (validator output) with the audit columns, in `table_schema(spec)` order and types; columns
    outside the contract that a schema-evolving run keeps come last."""
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
