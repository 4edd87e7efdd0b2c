"""The sinks: the DuckDB warehouse pipeline, the Parquet lake pipeline, failed load jobs and the rejects CSV files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import dlt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dlt.common.destination.client import PreparedTableSchema
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.common.schema.typing import TColumnSchema
from dlt.common.storages.load_package import PackageStorage
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.destinations.impl.duckdb.factory import DuckDbTypeMapper
from dlt.pipeline.pipeline import Pipeline

from . import MOSTLY_DISTINCT_HINT, reasons
from .extract import REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE, RUN_FIELDS
from .readers.records import records_as_json
from .redact import spreadsheet_safe
from .validate import REJECT_SCHEMA, quote_ident

WAREHOUSE_PIPELINE = "retail_bronze"
LAKE_PIPELINE = "retail_bronze_lake"
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


def warehouse_pipeline(warehouse: Path, *, pipelines_dir: str | None = None,
                       pipeline_name: str = WAREHOUSE_PIPELINE) -> Pipeline:
    """The DuckDB pipeline: dataset `bronze` in the DuckDB file `warehouse`; merge tables keep the latest version."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    credentials = DuckDbCredentials(str(warehouse.resolve()), global_config=WAREHOUSE_DUCKDB_CONFIG)
    destination = dlt.destinations.duckdb(credentials, loader_parallelism_strategy=WAREHOUSE_PARALLELISM,
                                          type_mapper=WarehouseTypeMapper)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=destination,
                        dataset_name=DATASET, pipelines_dir=pipelines_dir or get_dlt_pipelines_dir())


def lake_pipeline(lake: Path, *, pipelines_dir: str | None = None, pipeline_name: str = LAKE_PIPELINE) -> Pipeline:
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
    """Load an Arrow table into `table` with delete-insert on `merge_key` (a retried load replaces itself)."""
    from . import DELETE_INSERT, dlt_columns

    resource = dlt.resource(rows, name=table, write_disposition=DELETE_INSERT, merge_key=merge_key,
                            columns=dlt_columns(rows.schema))
    return pipeline.run(resource, loader_file_format=LOADER_FILE_FORMAT)


def load_rejects(pipeline: Pipeline, rejects: pa.Table) -> LoadInfo:
    """Add reject records to the pipeline's `rejects` table."""
    from . import REJECTS_MERGE_KEY

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
