"""The output tables the package writes besides the data: their names, schemas, the one builder of each, and the dlt
hints they load with.

- Audit columns added to every loaded row (`table_schema`): `_rescued_data`, `ingestion_ts`, `src_filename`,
  `src_row_number`, `src_sheet` (tables with sheets), `src_row_hash`, and dlt's `_dlt_load_id`.
- `rejects`: one record per failed check, file-level reject or refused load job (`reject_records`).
- `manifest_processed_files`: one row per version of a file.
- `schema_history`: columns added to a table (schema evolution, promotion of rescued columns).
- `table_resets`: tables dropped or reloaded, so that every sink replaces them.
- `audit_results`: the audits of write-audit-publish runs (`audit_results_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.common.schema.typing import (
    TColumnSchema,
    TDeleteInsertStrategyDict,
    TTableSchemaColumns,
    TUpsertStrategyDict,
)
from dlt.common.schema.utils import dlt_load_id_column

from schemas.schemas import MOSTLY_DISTINCT

if TYPE_CHECKING:
    from .registry import TableSpec

UTC_TS = pa.timestamp("us", tz="UTC")

RESCUED = "_rescued_data"
INGESTION_TS = "ingestion_ts"
SRC_FILENAME = "src_filename"
ROW_NUMBER = "src_row_number"
SRC_SHEET = "src_sheet"
ROW_HASH = "src_row_hash"
LOAD_ID = "_dlt_load_id"
LOAD_ID_FIELD = pa.field(LOAD_ID, pa.string(), nullable=False)
"""dlt's load id column: the resources add it to every item themselves, so no normalizer setting is needed."""
ADDED_COLUMNS: tuple[str, ...] = (RESCUED, INGESTION_TS, SRC_FILENAME, ROW_NUMBER, SRC_SHEET, ROW_HASH, LOAD_ID,
                                  "_dlt_id")
"""Columns the package and dlt add to loaded tables: no contract, derived or added column may have one of these names
once normalized, and a source column named so is always kept in `_rescued_data`."""


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
    if spec.has_sheets:
        fields.append(pa.field(SRC_SHEET, pa.string()))
    fields.append(pa.field(ROW_HASH, pa.string(), nullable=False, metadata={MOSTLY_DISTINCT: "true"}))
    return pa.schema(fields)


def position_columns(spec: TableSpec) -> list[str]:
    """The columns that name a row's place in its source file."""
    return [SRC_FILENAME, *([SRC_SHEET] if spec.has_sheets else []), ROW_NUMBER]


REJECTS_TABLE = "rejects"
REJECT_SCHEMA = pa.schema([
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("src_filename", pa.string(), nullable=False),
    pa.field("src_row_number", pa.int64()),
    pa.field("src_sheet", pa.string()),
    pa.field("reason_code", pa.string(), nullable=False),
    pa.field("column_name", pa.string()),
    pa.field("reason_detail", pa.string(), nullable=False),
    pa.field("raw_record", pa.string(), metadata={MOSTLY_DISTINCT: "true"}),
    pa.field("src_row_hash", pa.string(), metadata={MOSTLY_DISTINCT: "true"}),
])
"""Columns of a reject record known when it is found; `with_run_fields` adds `ingestion_ts` and `load_id`."""
RUN_FIELDS = (pa.field("ingestion_ts", UTC_TS, nullable=False), pa.field("load_id", pa.string()))
REJECTS_OUTPUT_SCHEMA = pa.schema([*REJECT_SCHEMA, *RUN_FIELDS])
"""The `rejects` table (without dlt's `_dlt_load_id`)."""


def reject_records(table_name: str, src_filename: str | pa.Array | pa.ChunkedArray, reason_code: str | pa.Array, *,
                   count: int, detail: str | pa.Array | pa.ChunkedArray, row_number: pa.Array | pa.ChunkedArray | None = None,
                   sheet: str | pa.Array | pa.ChunkedArray | None = None,
                   column_name: str | pa.Array | None = None, raw_record: pa.Array | pa.ChunkedArray | None = None,
                   row_hash: pa.Array | pa.ChunkedArray | None = None) -> pa.Table:
    """`count` reject records in `REJECT_SCHEMA`: each argument is one value for every record or an array of `count`
    values; missing ones are null (a file-level reject has no row number, raw record or hash)."""

    def column(value: Any, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
        if value is None or isinstance(value, str):
            return pa.repeat(pa.scalar(value, type_), count)
        return value.cast(type_) if value.type != type_ else value

    return pa.table({
        "table_name": column(table_name, pa.string()),
        "src_filename": column(src_filename, pa.string()),
        "src_row_number": column(row_number, pa.int64()),
        "src_sheet": column(sheet, pa.string()),
        "reason_code": column(reason_code, pa.string()),
        "column_name": column(column_name, pa.string()),
        "reason_detail": column(detail, pa.string()),
        "raw_record": column(raw_record, pa.string()),
        "src_row_hash": column(row_hash, pa.string()),
    }, schema=REJECT_SCHEMA)


def file_reject(table_name: str, src_filename: str, reason_code: str, detail: str) -> pa.Table:
    """One reject record standing for a whole rejected file."""
    return reject_records(table_name, src_filename, reason_code, count=1, detail=detail)


def with_run_fields(rejects: pa.Table, ingestion_ts: datetime, load_id: str | None) -> pa.Table:
    """Reject records with the run's `ingestion_ts` and `load_id`, in `REJECTS_OUTPUT_SCHEMA`."""
    n = rejects.num_rows
    return (rejects.append_column(RUN_FIELDS[0], pa.repeat(pa.scalar(ingestion_ts, UTC_TS), n))
            .append_column(RUN_FIELDS[1], pa.repeat(pa.scalar(load_id, pa.string()), n)))


MANIFEST_TABLE = "manifest_processed_files"
MANIFEST_SCHEMA = pa.schema([
    pa.field("src_path", pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("processed_at", UTC_TS, nullable=False),
    pa.field("file_fingerprint", pa.string(), nullable=False),
    pa.field("file_size", pa.int64()),
    pa.field("row_count", pa.int64(), nullable=False),
    pa.field("valid_count", pa.int64(), nullable=False),
    pa.field("reject_count", pa.int64(), nullable=False),
    pa.field("superseded_count", pa.int64(), nullable=False),
    pa.field("late_count", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("replaced_fingerprint", pa.string()),
    pa.field("extra_columns", pa.string()),
    pa.field("load_id", pa.string()),
])
MANIFEST_KEY = ("src_path", "file_fingerprint")
"""One manifest row per version of a file."""
STATUS_OK = "ok"
STATUS_WITH_REJECTS = "with_rejects"
STATUS_FILE_REJECTED = "file_rejected"
STATUS_EMPTY = "empty"
STATUS_CHANGED_SKIPPED = "changed_skipped"


def manifest_row(*, src_path: str, table_name: str, processed_at: datetime, fingerprint: str, file_size: int,
                 counts: Sequence[int], status: str, replaced_fingerprint: str | None, extra_columns: Sequence[str],
                 load_id: str | None) -> pa.Table:
    """The manifest row of one file version; `counts` = rows read, valid, rejected, superseded, late."""
    row_count, valid, rejected, superseded, late = counts
    return pa.Table.from_pylist([{
        "src_path": src_path, "table_name": table_name, "processed_at": processed_at, "file_fingerprint": fingerprint,
        "file_size": file_size, "row_count": row_count, "valid_count": valid, "reject_count": rejected,
        "superseded_count": superseded, "late_count": late, "status": status,
        "replaced_fingerprint": replaced_fingerprint, "extra_columns": ",".join(sorted(extra_columns)) or None,
        "load_id": load_id,
    }], schema=MANIFEST_SCHEMA)


SCHEMA_HISTORY_TABLE = "schema_history"
SCHEMA_HISTORY_SCHEMA = pa.schema([
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("column_name", pa.string(), nullable=False),
    pa.field("data_type", pa.string(), nullable=False),
    pa.field("load_id", pa.string()),
    pa.field("changed_at", UTC_TS, nullable=False),
])
SCHEMA_HISTORY_KEY = ["table_name", "column_name"]

TABLE_RESETS_TABLE = "table_resets"
TABLE_RESETS_SCHEMA = pa.schema([
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("reset_at", UTC_TS, nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])

AUDIT_RESULTS_TABLE = "audit_results"
AUDIT_RESULTS_SCHEMA = pa.schema([
    pa.field("load_id", pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("audit", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("expected", pa.string()),
    pa.field("observed", pa.string()),
    pa.field("passed", pa.bool_(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("ingestion_ts", UTC_TS, nullable=False),
    pa.field("audited_at", UTC_TS, nullable=False),
    pa.field("outcome", pa.string(), nullable=False),
])
"""One row per audit result of a write-audit-publish run, kept in the warehouse itself (not a dlt table, not in the
lake): `load_id` is the warehouse load the run staged, `outcome` what became of it."""
AUDIT_RESULTS_KEY = ("load_id", "table_name", "audit")
OUTCOME_PENDING = "pending"
"""Audited, not yet published or held (a run killed now is undone: the next run sets `discarded`)."""
OUTCOME_PUBLISHED = "published"
OUTCOME_HELD = "held"
"""The audits passed and the staging is held for inspection (`on_success = "inspect"`)."""
OUTCOME_FAILED = "failed"
"""An audit of severity `error` failed: nothing was published."""
OUTCOME_DISCARDED = "discarded"
"""The staging was dropped unpublished (a held staging replaced by a later run, a killed run undone)."""


def audit_results_table(results: Sequence[Any], *, load_id: str, ingestion_ts: datetime, audited_at: datetime,
                        outcome: str) -> pa.Table:
    """The `audit_results` rows of one run's results (objects with the table's per-result fields)."""
    fields = ("table_name", "audit", "kind", "severity", "expected", "observed", "passed", "detail")
    return pa.Table.from_pylist([
        {"load_id": load_id, **{name: getattr(result, name) for name in fields}, "ingestion_ts": ingestion_ts,
         "audited_at": audited_at, "outcome": outcome}
        for result in results
    ], schema=AUDIT_RESULTS_SCHEMA)


SHARED_TABLES = (REJECTS_TABLE, MANIFEST_TABLE, SCHEMA_HISTORY_TABLE, TABLE_RESETS_TABLE)
"""Tables every resource (or the run) writes: they belong to no data table's resource."""


MOSTLY_DISTINCT_HINT = "x-mostly-distinct"
"""dlt column hint of text declared `mostly_distinct` in its field metadata (see `schemas.schemas`); the warehouse
stores such columns with FSST compression (`sinks.warehouse.WarehouseTypeMapper`)."""
FEW_DISTINCT_HINT = "x-few-distinct"
"""dlt column hint of text with few distinct values in a load: a contract column with `accepted_values`, the columns
naming a row's file, sheet, table and reason, and dlt's load id. The warehouse stores such columns as dictionaries
(`sinks.warehouse.WarehouseTypeMapper`)."""
FEW_DISTINCT_COLUMNS = frozenset({SRC_FILENAME, SRC_SHEET, "table_name", "reason_code"})
"""Output columns (of the data tables and `rejects`) that take `FEW_DISTINCT_HINT`: no contract column has these
names (see `ADDED_COLUMNS` and the rejects table's own schema)."""


def dlt_columns(schema: pa.Schema) -> TTableSchemaColumns:
    """dlt column hints derived from a pyarrow schema (types, precision, scale, nullability, `MOSTLY_DISTINCT_HINT`,
    `FEW_DISTINCT_HINT`)."""
    columns = py_arrow_to_table_schema_columns(schema)
    for field in schema:
        meta = field.metadata or {}
        hints = cast(dict[str, Any], columns[field.name])
        if meta.get(MOSTLY_DISTINCT.encode()) == b"true":
            hints[MOSTLY_DISTINCT_HINT] = True
        elif pa.types.is_string(field.type) and (b"accepted_values" in meta or field.name in FEW_DISTINCT_COLUMNS):
            hints[FEW_DISTINCT_HINT] = True
    return columns


def load_id_column() -> TColumnSchema:
    """dlt's `_dlt_load_id` column, hinted `FEW_DISTINCT_HINT` (one value per load)."""
    return cast(TColumnSchema, {**dlt_load_id_column(), FEW_DISTINCT_HINT: True})


def output_columns(schema: pa.Schema) -> TTableSchemaColumns:
    """The dlt columns of an output table: its schema's, and dlt's load id."""
    return {**dlt_columns(schema), LOAD_ID: load_id_column()}


DELETE_INSERT: TDeleteInsertStrategyDict = {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}
"""dlt's delete-insert on data the extractor already reduced to one version per key (no second dedup)."""
UPSERT: TUpsertStrategyDict = {"disposition": "merge", "strategy": "upsert"}
APPEND_MERGE_KEY = [SRC_FILENAME]
"""Append tables replace the rows of a file delivered again under the same name; a retried load never doubles."""
REJECTS_MERGE_KEY = ["table_name", "src_filename", "load_id", "reason_code"]
"""A retried load replaces its own reject records; records of other loads and reasons stay."""
POSITION_KEY = (SRC_FILENAME, ROW_NUMBER)
"""A row's place in its source file: the key of an append table where the destination can only upsert."""
