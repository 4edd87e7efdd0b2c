"""The sinks: the DuckDB warehouse pipeline, the Parquet lake pipeline, failed load jobs and the rejects CSV files."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import dlt
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dlt.common.destination.client import PreparedTableSchema
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.common.schema.typing import TColumnSchema
from dlt.common.schema.utils import dlt_load_id_column
from dlt.common.storages.load_package import PackageStorage
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.destinations.impl.duckdb.factory import DuckDbTypeMapper
from dlt.pipeline.pipeline import Pipeline

from . import reasons
from .extract import REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE, RUN_FIELDS
from .readers.records import records_as_json
from .redact import spreadsheet_safe
from .resources import DELETE_INSERT, LOAD_ID, LOAD_ID_FIELD, MOSTLY_DISTINCT_HINT, REJECTS_MERGE_KEY, dlt_columns
from .sql import quote_ident, quote_literal
from .validate import REJECT_SCHEMA

DATASET = "bronze"
LOADER_FILE_FORMAT: Final = "parquet"
WAREHOUSE_DUCKDB_CONFIG: Final = {"memory_limit": "256MB", "block_allocator_memory": "256MB",
                                   "preserve_insertion_order": False}
"""DuckDB settings of the warehouse load: bounded memory (DuckDB spills to disk beyond it), held by DuckDB's block
allocator for the connection's lifetime instead of being returned to the system and faulted in again after each
task (a 2M-row load: half the kernel time, about 0.25 s less); row order is not kept."""


class WarehouseTypeMapper(DuckDbTypeMapper):
    """dlt's DuckDB types, with FSST compression fixed for text columns hinted `MOSTLY_DISTINCT_HINT` (row hashes,
    raw records, e-mail addresses). DuckDB would otherwise analyse each segment of such text for a dictionary in vain
    before choosing FSST: row hashes, 0.3 to 0.5 s of a 2.7 s load of 2M orders; their e-mail addresses, another
    0.15 s (0.35 CPU-s); the same file size."""

    def to_destination_type(self, column: TColumnSchema, table: PreparedTableSchema) -> str:
        db_type = super().to_destination_type(column, table)
        hints = cast(Mapping[str, Any], column)
        if hints.get(MOSTLY_DISTINCT_HINT) and column.get("data_type") == "text":
            return f"{db_type} USING COMPRESSION fsst"
        return db_type


WAREHOUSE_PARALLELISM: Final = "table-sequential"
"""dlt's load parallelism for the warehouse: one job per table at a time. Two appends to one DuckDB table from two
connections both commit, but the later commit's rows are compressed again, on one thread, when the file is closed
(0.75 s of a 3.3 s load of two 1M-row files); one after the other, each append uses every core."""


def warehouse_pipeline(warehouse: Path, pipeline_name: str, *, pipelines_dir: str | None = None) -> Pipeline:
    """The DuckDB pipeline: dataset `bronze` in the DuckDB file `warehouse`; merge tables keep the latest version."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    credentials = DuckDbCredentials(str(warehouse.resolve()), global_config=WAREHOUSE_DUCKDB_CONFIG)
    destination = dlt.destinations.duckdb(credentials, loader_parallelism_strategy=WAREHOUSE_PARALLELISM,
                                          type_mapper=WarehouseTypeMapper)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=destination,
                        dataset_name=DATASET, pipelines_dir=pipelines_dir or get_dlt_pipelines_dir())


def lake_pipeline(lake: Path, pipeline_name: str, *, pipelines_dir: str | None = None) -> Pipeline:
    """The filesystem pipeline writing the append-only Parquet change log to `<lake>/bronze/parquet/<table>/`."""
    destination = dlt.destinations.filesystem(bucket_url=(lake / DATASET).resolve().as_uri(),
                                              layout="{table_name}/{load_id}.{file_id}.{ext}")
    return dlt.pipeline(pipeline_name=pipeline_name, destination=destination, dataset_name="parquet",
                        pipelines_dir=pipelines_dir or get_dlt_pipelines_dir())



def loaded_load_ids(pipeline: Pipeline) -> list[str]:
    """Load ids of the pipeline's fully loaded packages still on disk, oldest first."""
    return sorted((lid for lid in pipeline.list_completed_load_packages()
                   if pipeline.get_load_package_info(lid).state == "loaded"), key=Decimal)


def package_files(pipeline: Pipeline, load_id: str, *, loaded_only: bool = False) -> dict[str, list[str]]:
    """Parquet files of the data tables of one package, by table name (dlt's own tables excluded).

    With `loaded_only`, tables with a failed job in the package (their rows are `LOAD_FAILED` rejects) are left out.
    """
    info = pipeline.get_load_package_info(load_id)
    failed = {job.job_file_info.table_name for job in info.jobs.get("failed_jobs", [])} if loaded_only else set()
    by_table: dict[str, list[str]] = {}
    for job in info.jobs.get("completed_jobs", []):
        table = job.job_file_info.table_name
        if not table.startswith("_dlt") and table not in failed and job.file_path.endswith(".parquet"):
            by_table.setdefault(table, []).append(job.file_path)
    return {table: sorted(files) for table, files in by_table.items()}


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


def _table_exists(client: Any, table: str) -> bool:
    found = client.execute_sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
                               "AND table_name = %s", client.dataset_name, table)
    return bool(found and found[0][0])


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
        if not _table_exists(client, table):
            return
        name = client.make_qualified_table_name(table)
        with client.begin_transaction():
            client.execute_sql(f"DELETE FROM {name} AS t WHERE t._dlt_load_id = %s AND {in_job}", load_id, str(job_file))
            if completed_files:
                client.execute_sql(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(%s, union_by_name = true) AS t "
                                   f"WHERE {in_job}", completed_files, str(job_file))


def _rebuild_staging_table(pipeline: Pipeline, table: str, completed_files: list[str]) -> None:
    with pipeline.sql_client() as client, client.with_staging_dataset():
        if not _table_exists(client, table):
            return
        name = client.make_qualified_table_name(table)
        client.execute_sql(f"DELETE FROM {name}")
        if completed_files:
            client.execute_sql(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(%s)", completed_files)


@dataclass(frozen=True)
class FailedJob:
    """A load job a destination refused, with the files holding the rows it carried."""

    load_id: str
    table_name: str
    file_path: str
    message: str
    data_files: tuple[str, ...]
    """The job's own Parquet file, or for a refused merge step (a `.sql` job) the table's files in its package."""


def failed_jobs(pipeline: Pipeline, info: LoadInfo) -> list[FailedJob]:
    """Every failed job of the packages in `info`."""
    out = []
    for package in info.load_packages:
        for job in package.jobs.get("failed_jobs", []):
            table = job.job_file_info.table_name
            if job.file_path.endswith(".parquet"):
                data_files: tuple[str, ...] = (job.file_path,)
            else:
                data_files = tuple(package_files(pipeline, package.load_id).get(table, []))
            out.append(FailedJob(load_id=package.load_id, table_name=table, file_path=job.file_path,
                                 message=job.failed_message or "no message from the destination",
                                 data_files=data_files))
    return out


def load_failed_rejects(job: FailedJob, ingestion_ts: Any) -> pa.Table:
    """The rows of a failed job as `LOAD_FAILED` reject records; nothing of the job is lost."""
    data = pa.concat_tables([pq.read_table(f) for f in job.data_files]) if job.data_files else None
    detail = re.sub(r"\s+", " ", job.message).strip()[:2000]
    n = data.num_rows if data is not None else 1

    def column(name: str, type_: pa.DataType) -> pa.Array:
        if data is not None and name in data.column_names:
            return data[name].combine_chunks().cast(type_)
        return pa.nulls(n, type_)

    filenames = column("src_filename", pa.string())
    if data is None or "src_filename" not in data.column_names:
        filenames = pa.repeat(pa.scalar(Path(job.file_path).name), n)
    business = data.drop_columns([c for c in data.column_names if c.startswith("_dlt")]) if data is not None else None
    rejects = pa.table(
        {
            "table_name": pa.repeat(pa.scalar(job.table_name), n),
            "src_filename": filenames,
            "src_row_number": column("src_row_number", pa.int64()),
            "src_sheet": column("src_sheet", pa.string()),
            "reason_code": pa.repeat(pa.scalar(reasons.LOAD_FAILED), n),
            "column_name": pa.nulls(n, pa.string()),
            "reason_detail": pa.repeat(pa.scalar(detail), n),
            "raw_record": records_as_json(business) if business is not None else pa.nulls(n, pa.string()),
            "src_row_hash": column("src_row_hash", pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
    return (rejects.append_column(RUN_FIELDS[0], pa.repeat(pa.scalar(ingestion_ts, RUN_FIELDS[0].type), n))
            .append_column(RUN_FIELDS[1], pa.repeat(pa.scalar(job.load_id), n)))


def load_arrow(pipeline: Pipeline, rows: pa.Table, table: str, merge_key: list[str]) -> LoadInfo:
    """Load an Arrow table into `table` with delete-insert on `merge_key` (a retried load replaces itself); every
    row carries the load's `_dlt_load_id`."""
    def stamped() -> Any:
        load_id = dlt.current.load_package_state()["load_id"]
        yield rows.append_column(LOAD_ID_FIELD, pa.repeat(pa.scalar(load_id), rows.num_rows))

    resource = dlt.resource(stamped(), name=table, write_disposition=DELETE_INSERT, merge_key=merge_key,
                            columns={**dlt_columns(rows.schema), LOAD_ID: dlt_load_id_column()})
    pipeline.extract(resource, loader_file_format=LOADER_FILE_FORMAT)
    pipeline.normalize()
    return pipeline.load(raise_on_failed_jobs=False)


def load_rejects(pipeline: Pipeline, rejects: pa.Table) -> LoadInfo:
    """Add reject records to the pipeline's `rejects` table."""
    return load_arrow(pipeline, rejects.cast(REJECTS_OUTPUT_SCHEMA), REJECTS_TABLE, REJECTS_MERGE_KEY)


def write_rejects_csv(rejects: pa.Table, rejects_root: Path, name: str) -> list[Path]:
    """Write reject records as CSV, one file `<rejects_root>/<table>/<name>.csv` per table; return the paths.

    The files are made to be opened in a spreadsheet: every text cell goes through `redact.spreadsheet_safe` (a cell
    starting like a formula gets a leading `'`; control characters are shown as control pictures, `␊` for a line
    feed), so each record is one line. The warehouse and the lake keep the exact values.
    """
    written = []
    tables = sorted(pc.unique(rejects["table_name"]).to_pylist()) if rejects.num_rows else []
    for table in tables:
        part = rejects.filter(pc.equal(rejects["table_name"], table))
        target = rejects_root / table / f"{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".csv.tmp")
        pacsv.write_csv(_spreadsheet_safe(_timestamps_as_text(part)), tmp)
        tmp.replace(target)
        written.append(target)
    return written


def _spreadsheet_safe(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(i, field, spreadsheet_safe(table.column(i)))
    return table


def _timestamps_as_text(table: pa.Table) -> pa.Table:
    """`table` with its time-zone-aware timestamp columns as Arrow's text of them, each distinct value formatted once.

    The CSV writer formats such timestamps value by value through the time zone database (0.18 s for 100k rows);
    a run's reject records share one or two `ingestion_ts` values.
    """
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            values = table.column(i)
            distinct = pc.unique(values)
            text = pc.cast(distinct, pa.string()).take(pc.index_in(values, distinct))
            table = table.set_column(i, pa.field(field.name, pa.string(), field.nullable), text)
    return table


def rejects_csv_name(load_id: str) -> str:
    return f"{load_id}.csv"


def sync_rejects_csv(warehouse_db: Path, rejects_root: Path) -> list[Path]:
    """Write the rejects CSV of every (table, load) of the warehouse's rejects that has none yet; return the paths.

    The CSV files are a sink like the others: a run killed before it wrote them, or a deleted CSV folder, is made
    whole by the next run."""
    if not warehouse_db.exists():
        return []
    present = {(path.parent.name, path.name) for path in rejects_root.glob("*/*.csv")} if rejects_root.is_dir() else set()
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        if not table_exists(con, REJECTS_TABLE):
            return []
        loads = con.execute(f"SELECT DISTINCT table_name, load_id FROM {DATASET}.{REJECTS_TABLE} "
                            "WHERE load_id IS NOT NULL").fetchall()
        missing = sorted({(table, load_id) for table, load_id in loads if (table, rejects_csv_name(load_id)) not in present})
        written = []
        for load_id in sorted({load_id for _, load_id in missing}):
            tables = sorted(table for table, other in missing if other == load_id)
            placeholders = ", ".join("?" for _ in tables)
            rejects = con.execute(
                f"SELECT {', '.join(REJECTS_OUTPUT_SCHEMA.names)} FROM {DATASET}.{REJECTS_TABLE} WHERE load_id = ? AND "
                f"table_name IN ({placeholders}) ORDER BY table_name, src_filename, src_row_number, reason_code",
                [load_id, *tables]).to_arrow_table()
            written += write_rejects_csv(rejects, rejects_root, load_id)
    return written


def table_exists(con: duckdb.DuckDBPyConnection, table: str, schema: str = DATASET) -> bool:
    """Whether `schema.table` exists in the DuckDB database of `con`."""
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                        [schema, table]).fetchone()
    return bool(found and found[0])


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
            rows = client.execute_sql(f"SELECT max(CAST(load_id AS DECIMAL(20, 7))) FROM {name} WHERE status = 0")
        except DatabaseUndefinedRelation:
            rows = [(None,)]
        newest = [Decimal(str(x)) for x in (rows[0][0] if rows else None, restored_through) if x is not None]
        bound = max(newest) if newest else Decimal(-1)
        present = {row[0] for row in client.execute_sql(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = "
            "'_dlt_load_id'", client.dataset_name) or []}
        orphan = " AND ".join(["CAST(_dlt_load_id AS DECIMAL(20, 7)) > %s",
                             *(["_dlt_load_id NOT IN (" + ", ".join(quote_literal(p) for p in sorted(pending)) + ")"]
                               if pending else [])])
        with client.begin_transaction():
            for table in sorted(present & tables):
                qualified = client.make_qualified_table_name(table)
                found = client.execute_sql(f"SELECT count(*) FROM {qualified} WHERE {orphan}", bound)
                if found and found[0][0]:
                    client.execute_sql(f"DELETE FROM {qualified} WHERE {orphan}", bound)
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
                holder = re.search(r"Conflicting lock is held in (.+?) \(PID (\d+)\)", message)
                who = f"{holder.group(1)} (pid {holder.group(2)})" if holder else "another process"
                raise WarehouseBusy(f"the warehouse {warehouse} is open in {who}; close that session (DuckDB allows "
                                    f"one writer and no readers beside it) and run again; waited {timeout:g} s") \
                    from None
            time.sleep(poll)
