"""retail_bronze: a declarative dlt source landing raw retail and store-telemetry files into a Bronze layer.

`retail_source()` has one resource per registry table (`customers`, `products`, `stores`, `orders`, `order_items`,
`returns`, `exchange_rates`, `events`, `sensors` in the shipped registry). Each resource also writes the shared
`rejects` table (one record per failed check, with reason code and original record) and the
`manifest_processed_files` table (one row per processed file, rows conserved).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import dlt
import pyarrow as pa
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.common.schema.typing import TDeleteInsertStrategyDict, TSchemaContractDict, TTableSchemaColumns
from dlt.common.schema.utils import dlt_load_id_column
from dlt.extract.resource import DltResource

from schemas.schemas import MOSTLY_DISTINCT

from . import reasons
from .audit import table_schema
from .extract import (
    MANIFEST_SCHEMA,
    MANIFEST_TABLE,
    REJECTS_OUTPUT_SCHEMA,
    REJECTS_TABLE,
    TableExtractor,
    discover_files,
)
from .parquet_files import RowFiles, files_for
from .registry import RETAIL_TABLES, TableSpec, select_tables
from .staging import staging_dir

SECTION = "retail_bronze"
SCHEMA_CONTRACT: TSchemaContractDict = {"tables": "evolve", "columns": "freeze", "data_type": "freeze"}
"""dlt never adds, changes or drops a column silently: anything outside the contract fails the load loudly."""
EVOLVE_CONTRACT: TSchemaContractDict = {"tables": "evolve", "columns": "evolve", "data_type": "freeze"}
"""With `evolve_schema`, columns outside the contract are added (with their types) instead of rescued."""
DEFAULT_CHUNK_SIZE = 128 * 1024
"""Rows read and validated at once. Two files are staged at a time and each holds about three chunks, so this bounds
the extraction's memory: 200k rows were 0.3 s faster per 2M rows and peaked about 60 MB higher at 10M rows."""
LOAD_ID_FIELD = pa.field("_dlt_load_id", pa.string(), nullable=False)
"""dlt's load id column; Parquet files written by the resource carry it themselves."""


MOSTLY_DISTINCT_HINT = "x-mostly-distinct"
"""dlt column hint of text declared `mostly_distinct` in its field metadata (see `schemas.schemas`); the warehouse
stores such columns with FSST compression (`sinks.WarehouseTypeMapper`)."""


def dlt_columns(schema: pa.Schema) -> TTableSchemaColumns:
    """dlt column hints derived from a pyarrow schema (types, precision, scale, nullability, `MOSTLY_DISTINCT_HINT`)."""
    columns = py_arrow_to_table_schema_columns(schema)
    for field in schema:
        if (field.metadata or {}).get(MOSTLY_DISTINCT.encode()) == b"true":
            cast(dict[str, Any], columns[field.name])[MOSTLY_DISTINCT_HINT] = True
    return columns


DELETE_INSERT: TDeleteInsertStrategyDict = {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}
"""dlt's delete-insert on data the extractor already reduced to one version per key (no second dedup)."""
APPEND_MERGE_KEY = ["src_filename"]
"""Append tables replace the rows of a file delivered again under the same name; a retried load never doubles."""
MANIFEST_KEY = ("src_path", "file_fingerprint")
"""One manifest row per version of a file."""
REJECTS_MERGE_KEY = ["table_name", "src_filename", "load_id", "reason_code"]
"""A retried load replaces its own reject records; records of other loads and reasons stay."""


def table_resource(spec: TableSpec, raw_url: str, *, ingestion_ts: datetime, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   append_only: bool = False, evolve_schema: bool = False,
                   append_new_rows: bool = False, parquet_files: bool = False) -> DltResource:
    """The dlt resource of one registry table, with hints derived from the registry entry and its contract.

    The resource writes three tables, each declared as a dlt table variant so their hints never mix: the table itself
    (columns from the contract plus audit columns), `rejects` and `manifest_processed_files` (keyed on `src_path`).
    Every table loads with delete-insert so that a retried load is idempotent: merge tables on their key, append tables
    on the file they came from, rejects on file, load and reason (`append_only` loads everything as plain append
    instead). With `append_new_rows`, rows that cannot replace loaded rows (the first load of a merge table, new files
    of an append table, and every reject record, whose merge key holds its load id) load as plain append, without
    dlt's staging copy. With `parquet_files`, the rows reach dlt as Parquet files written by the resource, imported
    last with the resource's own hints (table variants created after them would copy those); see `retail_source`.
    """
    columns = dlt_columns(table_schema(spec))
    if spec.hard_delete and spec.delete_marker and not append_only:
        columns[spec.delete_marker]["hard_delete"] = True
    if append_only:
        disposition: Any = "append"
        primary_key: list[str] = []
        merge_key: list[str] = []
    elif spec.write_disposition == "merge":
        disposition, primary_key, merge_key = DELETE_INSERT, list(spec.primary_key), []
    else:
        disposition, primary_key, merge_key = DELETE_INSERT, [], APPEND_MERGE_KEY
    append_rejects = append_only or append_new_rows  # a load's reject records never replace another load's
    table_hints = {
        "rows": dlt.mark.make_hints(table_name=spec.name, columns=columns),
        "rejects": dlt.mark.make_hints(table_name=REJECTS_TABLE,
                                       write_disposition="append" if append_rejects else DELETE_INSERT,
                                       primary_key=[], merge_key=[] if append_rejects else REJECTS_MERGE_KEY,
                                       columns=dlt_columns(REJECTS_OUTPUT_SCHEMA)),
        "manifest": dlt.mark.make_hints(table_name=MANIFEST_TABLE, write_disposition="append" if append_only else DELETE_INSERT,
                                        primary_key=[] if append_only else list(MANIFEST_KEY), merge_key=[],
                                        columns=dlt_columns(MANIFEST_SCHEMA)),
    }

    plain_rows = dlt.mark.make_hints(table_name=spec.name, columns=columns, write_disposition="append")
    may_append = append_new_rows and not append_only and not (spec.hard_delete and spec.delete_marker)

    def rows() -> Iterator[Any]:
        ledger = dlt.current.resource_state().setdefault("files", {})
        load_id = dlt.current.load_package_state()["load_id"]
        schema = dlt.current.source_schema()
        loaded = schema.tables.get(spec.name, {}).get("columns", {})
        types = {name: str(column["data_type"]) for name, column in loaded.items() if column.get("data_type")}
        extractor = TableExtractor(spec, ingestion_ts=ingestion_ts, load_id=load_id, chunk_size=chunk_size,
                                   ledger=ledger, evolve_schema=evolve_schema, column_types=types,
                                   column_name=schema.naming.normalize_identifier)
        outputs = extractor.run(discover_files(spec, raw_url))
        if not parquet_files:
            for kind, table in outputs:
                plain = kind == "rows" and may_append and not extractor.replaces_loaded_rows
                yield dlt.mark.with_hints(table, plain_rows if plain else table_hints[kind], create_table_variant=True)
            return
        with staging_dir(f"{spec.name}_rows") as tmp, ExitStack() as stack:
            files: RowFiles | None = None
            for kind, table in outputs:
                if kind != "rows":
                    yield dlt.mark.with_hints(table, table_hints[kind], create_table_variant=True)
                    continue
                if files is None:
                    files = stack.enter_context(RowFiles(Path(tmp), spec.name, files=files_for(extractor.rows_to_emit)))
                files.write(table.append_column(LOAD_ID_FIELD, pa.repeat(pa.scalar(load_id), table.num_rows)))
            if files is None:
                return
            plain = may_append and not extractor.replaces_loaded_rows
            # Imported last: their hints become the resource's own, which table variants created later would copy.
            for written in files.close():
                data = pa.schema([f for f in written.schema if f.name != LOAD_ID_FIELD.name])
                file_columns = {**dlt_columns(data), **columns, LOAD_ID_FIELD.name: dlt_load_id_column()}
                hints = dlt.mark.make_hints(table_name=spec.name, columns=file_columns,
                                            write_disposition="append" if plain else None)
                yield dlt.mark.with_file_import(str(written.path), "parquet", written.rows, hints=hints)

    return dlt.resource(
        rows(),
        name=spec.name,
        table_name=spec.name,
        write_disposition=disposition,
        primary_key=primary_key,
        merge_key=merge_key,
        schema_contract=EVOLVE_CONTRACT if evolve_schema else SCHEMA_CONTRACT,
    )


@dlt.source(section=SECTION, name="retail_bronze", max_table_nesting=0)
def retail_source(
    raw_url: str = dlt.config.value,
    table_names: Sequence[str] | None = None,
    ingestion_ts: datetime | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    append_only: bool = False,
    evolve_schema: bool = False,
    tables: Sequence[TableSpec] | None = None,
    append_new_rows: bool = False,
    parquet_files: bool = False,
) -> list[DltResource]:
    """One resource per registry table reading the raw files under `raw_url` (local path or fsspec URL).

    `tables` replaces the shipped registry with your own entries; `table_names` selects some of them. `ingestion_ts`
    (UTC, default now) stamps every row: pass the same value to every pipeline of one run. `append_only` loads every
    table as append, the change-log form. `evolve_schema` adds columns outside the contract to the tables, with
    their types, instead of keeping them in `_rescued_data`.

    `append_new_rows` loads rows that cannot replace loaded rows (the first load of a merge table, new files of an
    append table, reject records; never tables with hard deletes) with plain append instead of delete-insert, which
    skips dlt's staging copy and halves the destination's work. A plain append is not idempotent if the process dies
    after the destination committed a job and before dlt recorded it: use it only where interrupted jobs are undone
    before they are retried, as `run_bronze` does for DuckDB (`sinks.undo_interrupted_jobs`).

    `parquet_files` hands each table's rows to dlt as Parquet files the resource writes itself (two in parallel
    from 1M rows on; dictionary encoding and compression chosen per column; `_dlt_load_id` included) instead of
    Arrow tables for dlt's writer: about 1.5 s less per 2M rows. The files are imported as they are, so use it only
    with `loader_file_format="parquet"` and a destination that loads Parquet.
    """
    stamp = (ingestion_ts or datetime.now(UTC)).astimezone(UTC)
    selected = select_tables(tables or RETAIL_TABLES, table_names)
    return [table_resource(spec, raw_url, ingestion_ts=stamp, chunk_size=chunk_size, append_only=append_only,
                           evolve_schema=evolve_schema, append_new_rows=append_new_rows, parquet_files=parquet_files)
            for spec in selected]


__all__ = ["RETAIL_TABLES", "TableSpec", "reasons", "retail_source", "table_resource"]
