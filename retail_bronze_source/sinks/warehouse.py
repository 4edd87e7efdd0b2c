"""The DuckDB warehouse: its pipeline and load settings, and what the run does to keep it exact.

- Interrupted load jobs are undone before dlt runs them again (`undo_interrupted_jobs`), and rows no load accounts
  for are removed (`sweep_orphans`), so that a killed run never doubles a row.
- A first load of a merge table goes in as a plain append (no staging copy) and is recorded as a merge table after it
  (`restore_merge_dispositions`); the shared tables are filed under no data table's resource (`detach_shared_tables`).
- A warehouse open in another process is waited for (`wait_for_warehouse`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import dlt
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.destination.client import PreparedTableSchema
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.common.schema.typing import TColumnSchema
from dlt.common.storages.load_package import PackageStorage
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.destinations.impl.duckdb.factory import DuckDbTypeMapper
from dlt.pipeline.pipeline import Pipeline

from .. import reasons, settings
from ..helpers import load_id_order, quote_ident, quote_literal, records_as_json
from ..outputs import (
    DELETE_INSERT,
    FEW_DISTINCT_HINT,
    LOAD_ID,
    LOAD_ID_FIELD,
    MANIFEST_TABLE,
    MOSTLY_DISTINCT_HINT,
    REJECTS_MERGE_KEY,
    REJECTS_OUTPUT_SCHEMA,
    REJECTS_TABLE,
    SRC_FILENAME,
    STATUS_EMPTY,
    STATUS_OK,
    STATUS_WITH_REJECTS,
    dlt_columns,
    load_id_column,
    reject_records,
    with_run_fields,
)
from ..redact import redact
from . import DATASET, LOADER_FILE_FORMAT
from .packages import FailedJob, package_files

WAREHOUSE_DUCKDB_CONFIG: Final = {"memory_limit": settings.DUCKDB_MEMORY_LIMIT,
                                   "block_allocator_memory": settings.WAREHOUSE_BLOCK_ALLOCATOR,
                                   "preserve_insertion_order": False}
"""DuckDB settings of the warehouse load: bounded memory (DuckDB spills to disk beyond it), held by DuckDB's block
allocator for the connection's lifetime instead of being returned to the system and faulted in again after each
task; row order is not kept."""


class WarehouseTypeMapper(DuckDbTypeMapper):
    """dlt's DuckDB types, with the compression of text columns fixed where their values are known to be mostly
    distinct (`MOSTLY_DISTINCT_HINT`: row hashes, raw records, e-mail addresses; FSST) or few (`FEW_DISTINCT_HINT`:
    accepted values, file names, load ids; a dictionary). DuckDB would otherwise analyse each segment of such text for
    every method before choosing the same one, for the same file size."""

    def to_destination_type(self, column: TColumnSchema, table: PreparedTableSchema) -> str:
        db_type = super().to_destination_type(column, table)
        hints = cast(Mapping[str, Any], column)
        if column.get("data_type") != "text":
            return db_type
        if hints.get(MOSTLY_DISTINCT_HINT):
            return f"{db_type} USING COMPRESSION fsst"
        if hints.get(FEW_DISTINCT_HINT):
            return f"{db_type} USING COMPRESSION dictionary"
        return db_type

def warehouse_pipeline(warehouse: Path, pipeline_name: str, *, pipelines_dir: str | None = None) -> Pipeline:
    """The DuckDB pipeline: dataset `bronze` in the DuckDB file `warehouse`; merge tables keep the latest version."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    credentials = DuckDbCredentials(str(warehouse.resolve()), global_config=WAREHOUSE_DUCKDB_CONFIG)
    destination = dlt.destinations.duckdb(credentials, loader_parallelism_strategy=settings.WAREHOUSE_PARALLELISM,
                                          type_mapper=WarehouseTypeMapper)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=destination,
                        dataset_name=DATASET, pipelines_dir=pipelines_dir or get_dlt_pipelines_dir())

def table_exists(con: duckdb.DuckDBPyConnection, table: str, schema: str = DATASET) -> bool:
    """Whether `schema.table` exists in the DuckDB database of `con`."""
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                        [schema, table]).fetchone()
    return bool(found and found[0])

POSITION_COLUMNS = ("_dlt_load_id", "src_filename", "src_row_number")
"""Columns that identify a data row of one load: the load, the source file and the row's position in it."""

def undo_interrupted_jobs(pipeline: Pipeline) -> int:
    """Remove what interrupted load jobs of pending DuckDB packages may have committed; return the jobs undone.

    dlt runs a started job again unless it wrote the job's completion marker, and the process can die between the
    destination's commit and that marker. Undoing first makes the retry exact:
    - a plain append job: the table's rows of that load equal to one of the job's rows are deleted, and those of the
      package's completed jobs are put back (`_undo_append_job`);
    - a job loading dlt's staging dataset (merge tables): the staging table is rebuilt from the package's completed
      jobs of that table (dlt truncates staging once per package, not when it resumes one).
    """
    undone = 0
    for load_id in pipeline.list_normalized_load_packages():
        info = pipeline.get_load_package_info(load_id)
        package = Path(info.package_path)
        markers = package / PackageStorage.PENDING_TRANSITIONS_FOLDER
        tables = json.loads((package / PackageStorage.SCHEMA_FILE_NAME).read_text())["tables"]
        completed = package_files(pipeline, load_id)
        for job in info.jobs.get("started_jobs", []):
            path = Path(job.file_path)
            table = job.job_file_info.table_name
            if path.suffix != ".parquet" or table.startswith("_dlt") or (markers / path.name).exists():
                continue
            if tables[table].get("write_disposition") == "merge":
                _rebuild_staging_table(pipeline, table, completed.get(table, []))
            else:
                _undo_append_job(pipeline, table, path, load_id, completed.get(table, []))
            undone += 1
    return undone

def _undo_append_job(pipeline: Pipeline, table: str, job_file: Path, load_id: str, completed_files: list[str]) -> None:
    """Delete the rows an interrupted append job may have committed; rows of the package's completed jobs stay.

    The table's rows of the load that equal one of the job's rows are deleted, and the completed jobs' rows that do
    are put back, so each committed row stays exactly once. A data row is compared by its source position (file,
    sheet, row number); a reject record has no position of its own (a row can fail several checks, a file-level
    reject has no row number), so it is compared by all its values.
    """
    columns = pq.read_schema(job_file).names
    if table == REJECTS_TABLE:
        identity = [c for c in columns if c != POSITION_COLUMNS[0]]
    elif set(POSITION_COLUMNS) <= set(columns):
        identity = [*POSITION_COLUMNS[1:], *(["src_sheet"] if "src_sheet" in columns else [])]
    else:
        raise RuntimeError(f"cannot undo the interrupted append job {job_file}: it lacks {', '.join(POSITION_COLUMNS)}")
    same = " AND ".join(f"j.{quote_ident(c)} IS NOT DISTINCT FROM t.{quote_ident(c)}" for c in identity)
    in_job = f"EXISTS (SELECT 1 FROM read_parquet(%s) AS j WHERE {same})"
    with pipeline.sql_client() as client:
        if not table_exists(client.native_connection, table, client.dataset_name):
            return
        name = client.make_qualified_table_name(table)
        with client.begin_transaction():
            client.execute_sql(f"DELETE FROM {name} AS t WHERE t._dlt_load_id = %s AND {in_job}", load_id, str(job_file))
            if completed_files:
                client.execute_sql(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(%s, union_by_name = true) AS t "
                                   f"WHERE {in_job}", completed_files, str(job_file))

def _rebuild_staging_table(pipeline: Pipeline, table: str, completed_files: list[str]) -> None:
    with pipeline.sql_client() as client, client.with_staging_dataset():
        if not table_exists(client.native_connection, table, client.dataset_name):
            return
        name = client.make_qualified_table_name(table)
        client.execute_sql(f"DELETE FROM {name}")
        if completed_files:
            client.execute_sql(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(%s)", completed_files)

def load_failed_rejects(job: FailedJob, ingestion_ts: Any) -> pa.Table:
    """The rows of a failed job as `LOAD_FAILED` reject records, with the destination's message (its credentials
    redacted); nothing of the job is lost."""
    data = pa.concat_tables([pq.read_table(f) for f in job.data_files]) if job.data_files else None
    detail = redact(re.sub(r"\s+", " ", job.message).strip())[:2000]
    n = data.num_rows if data is not None else 1

    def column(name: str) -> pa.ChunkedArray | None:
        return data[name] if data is not None and name in data.column_names else None

    business = data.drop_columns([c for c in data.column_names if c.startswith("_dlt")]) if data is not None else None
    filenames = column("src_filename")
    rejects = reject_records(
        job.table_name, filenames if filenames is not None else Path(job.file_path).name, reasons.LOAD_FAILED, count=n,
        detail=detail, row_number=column("src_row_number"), sheet=column("src_sheet"),
        raw_record=records_as_json(business) if business is not None else None, row_hash=column("src_row_hash"))
    return with_run_fields(rejects, ingestion_ts, job.load_id)


def load_arrow(pipeline: Pipeline, rows: pa.Table, table: str, merge_key: list[str]) -> LoadInfo:
    """Load an Arrow table into `table` with delete-insert on `merge_key` (a retried load replaces itself); every
    row carries the load's `_dlt_load_id`."""
    def stamped() -> Any:
        load_id = dlt.current.load_package_state()["load_id"]
        yield rows.append_column(LOAD_ID_FIELD, pa.repeat(pa.scalar(load_id), rows.num_rows))

    resource = dlt.resource(stamped(), name=table, write_disposition=DELETE_INSERT, merge_key=merge_key,
                            columns={**dlt_columns(rows.schema), LOAD_ID: load_id_column()})
    pipeline.extract(resource, loader_file_format=LOADER_FILE_FORMAT)
    pipeline.normalize()
    return pipeline.load(raise_on_failed_jobs=False)

def load_rejects(pipeline: Pipeline, rejects: pa.Table) -> LoadInfo:
    """Add reject records to the pipeline's `rejects` table."""
    return load_arrow(pipeline, rejects.cast(REJECTS_OUTPUT_SCHEMA), REJECTS_TABLE, REJECTS_MERGE_KEY)

def sweep_orphans(pipeline: Pipeline, tables: set[str], restored_through: str | None) -> int:
    """Delete rows that no completed load and no pending package accounts for; return how many.

    A load interrupted after some of its jobs committed leaves rows behind; normally its package is pending and is
    finished (and its interrupted jobs undone) before anything new is extracted. When the package is gone (the
    pipelines directory deleted, a state dropped because it belonged to another warehouse, `dlt pipeline
    abort-packages`), those rows belong to no load and the files they came from are read again: they are removed
    first, so that nothing is doubled. Such rows are always newer than the newest completed load."""
    pending = set(pipeline.list_extracted_load_packages()) | set(pipeline.list_normalized_load_packages())
    removed = 0
    with pipeline.sql_client() as client:
        if not client.has_dataset():
            return 0
        name = client.make_qualified_table_name("_dlt_loads")
        try:
            rows = client.execute_sql(f"SELECT max({load_id_order('load_id')}) FROM {name} WHERE status = 0")
        except DatabaseUndefinedRelation:
            rows = [(None,)]
        newest = [Decimal(str(x)) for x in (rows[0][0] if rows else None, restored_through) if x is not None]
        bound = max(newest) if newest else Decimal(-1)
        present = {row[0] for row in client.execute_sql(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = "
            "'_dlt_load_id'", client.dataset_name) or []}
        newer = " AND ".join([f"{load_id_order('l')} > %s",
                              *(["l NOT IN (" + ", ".join(quote_literal(p) for p in sorted(pending)) + ")"]
                                if pending else [])])
        with client.begin_transaction():
            for table in sorted(present & tables):
                qualified = client.make_qualified_table_name(table)
                # The table's few load ids are compared, not each row's.
                orphan = (f"_dlt_load_id IN (SELECT l FROM (SELECT DISTINCT _dlt_load_id AS l FROM {qualified}) "
                          f"WHERE {newer})")
                found = client.execute_sql(f"SELECT count(*) FROM {qualified} WHERE {orphan}", bound)
                if found and found[0][0]:
                    client.execute_sql(f"DELETE FROM {qualified} WHERE {orphan}", bound)
                    removed += int(found[0][0])
    return removed

def drop_emptied_files(pipeline: Pipeline, append_tables: Sequence[str]) -> int:
    """Delete the earlier rows of append-table files delivered again without a valid row; return how many.

    A changed file replaces its earlier rows through delete-insert on `src_filename`, which deletes only the files
    that bring rows: a version that is empty, or whose rows were all rejected, brings none. The manifest records such
    a version (`replaced_fingerprint` set, `valid_count` 0); rows of its file older than that load go. Derived from
    the manifest on every run, so a run killed after its load still converges."""
    if not append_tables:
        return 0
    removed = 0
    with pipeline.sql_client() as client:
        if not client.has_dataset():
            return 0
        present = {row[0] for row in client.execute_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", client.dataset_name) or []}
        if MANIFEST_TABLE not in present:
            return 0
        manifest = client.make_qualified_table_name(MANIFEST_TABLE)
        tables = sorted(set(append_tables) & present)
        if not tables:
            return 0
        statuses = ", ".join(quote_literal(s) for s in (STATUS_OK, STATUS_WITH_REJECTS, STATUS_EMPTY))
        emptied = (f"SELECT src_path, max({load_id_order('load_id')}) AS emptied_at FROM {manifest} "
                   f"WHERE table_name = %s AND replaced_fingerprint IS NOT NULL AND valid_count = 0 "
                   f"AND status IN ({statuses}) GROUP BY ALL")
        having = {row[0] for row in client.execute_sql(
            f"SELECT DISTINCT table_name FROM {manifest} WHERE replaced_fingerprint IS NOT NULL AND valid_count = 0 "
            f"AND table_name IN ({', '.join(quote_literal(t) for t in tables)})") or []}
        with client.begin_transaction():
            for table in sorted(having):
                # One statement per table, whatever the number of emptied files in its history.
                older = (f"EXISTS (SELECT 1 FROM ({emptied}) e WHERE e.src_path = t.{SRC_FILENAME} "
                         f"AND {load_id_order('t._dlt_load_id')} < e.emptied_at)")
                qualified = client.make_qualified_table_name(table)
                found = client.execute_sql(f"SELECT count(*) FROM {qualified} t WHERE {older}", table)
                if found and found[0][0]:
                    client.execute_sql(f"DELETE FROM {qualified} t WHERE {older}", table)
                    removed += int(found[0][0])
    return removed


SHARED_OUTPUTS_RESOURCE = "bronze_outputs"
"""The resource name the shared tables (rejects, manifest, schema history, table resets) are filed under, so that
dlt's `drop <table>` never drops them with a data table."""

def detach_shared_tables(pipeline: Pipeline, shared: Sequence[str]) -> None:
    """File the shared tables under `SHARED_OUTPUTS_RESOURCE` in the pipeline's schema (dlt files a table under the
    resource that wrote it last)."""
    if not pipeline.default_schema_name:
        return
    schema = pipeline.default_schema
    changed = False
    for table in shared:
        if table in schema.tables and schema.tables[table].get("resource") != SHARED_OUTPUTS_RESOURCE:
            schema.tables[table]["resource"] = SHARED_OUTPUTS_RESOURCE
            changed = True
    if changed:
        pipeline.schemas.save_schema(schema)

def restore_merge_dispositions(pipeline: Pipeline, merge_tables: Sequence[str]) -> None:
    """Record merge tables as merge tables in the pipeline's schema after a first load that went in as plain append
    (`SinkOptions.append_new_rows`), so that the schema, and `dlt pipeline schema`, say what the table is."""
    if not pipeline.default_schema_name:
        return
    schema = pipeline.default_schema
    changed = False
    for table in merge_tables:
        hints = schema.tables.get(table)
        if hints is not None and hints.get("write_disposition") != "merge":
            hints["write_disposition"] = "merge"
            hints["x-merge-strategy"] = "delete-insert"  # type: ignore[typeddict-unknown-key]
            changed = True
    if changed:
        pipeline.schemas.save_schema(schema)

class WarehouseBusy(Exception):
    """Another process holds the warehouse file open; the message names it."""


class WarehouseTaken(Exception):
    """Another process opened the warehouse file while a run was writing it (the run stopped part way; the next one
    completes it); the message names the process."""


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")


def lock_holder(error: BaseException) -> str | None:
    """The process named by a DuckDB lock conflict in `error` or its causes (dlt wraps DuckDB's error in its own):
    `<program> (pid <n>)`; None when the error is no lock conflict."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message = str(current)
        if "Could not set lock on file" in message:
            holder = _LOCK_HOLDER.search(message)
            return f"{holder.group(1)} (pid {holder.group(2)})" if holder else "another process"
        current = current.__cause__ or current.__context__
    return None

def wait_for_warehouse(warehouse: Path, timeout: float, poll: float = 0.5) -> None:
    """Wait up to `timeout` seconds until no other process holds `warehouse` open (a BI tool, the DuckDB CLI, even
    read-only), then raise `WarehouseBusy` naming the holder."""
    if not warehouse.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            duckdb.connect(str(warehouse)).close()
            return
        except duckdb.IOException as error:
            message = str(error)
            if "lock" not in message.lower():
                raise
            if time.monotonic() >= deadline:
                holder = _LOCK_HOLDER.search(message)
                who = f"{holder.group(1)} (pid {holder.group(2)})" if holder else "another process"
                raise WarehouseBusy(f"the warehouse {warehouse} is open in {who}; close that session (DuckDB allows "
                                    f"one writer and no readers beside it) and run again; waited {timeout:g} s") \
                    from None
            time.sleep(poll)
