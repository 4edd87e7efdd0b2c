"""The sinks: the DuckDB warehouse pipeline, the Parquet lake pipeline, failed load jobs and the rejects CSV files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import dlt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.pipeline import Pipeline

from . import reasons
from .extract import REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE, RUN_FIELDS
from .readers.records import records_as_json
from .validate import REJECT_SCHEMA

WAREHOUSE_PIPELINE = "retail_bronze"
LAKE_PIPELINE = "retail_bronze_lake"
DATASET = "bronze"
LOADER_FILE_FORMAT: Final = "parquet"
WAREHOUSE_DUCKDB_CONFIG: Final = {"memory_limit": "512MB", "preserve_insertion_order": False}
"""DuckDB settings of the warehouse load: bounded memory (DuckDB spills to disk beyond it); row order is not kept."""


def warehouse_pipeline(warehouse: Path, *, pipelines_dir: str | None = None,
                       pipeline_name: str = WAREHOUSE_PIPELINE) -> Pipeline:
    """The DuckDB pipeline: dataset `bronze` in the DuckDB file `warehouse`; merge tables keep the latest version."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    credentials = DuckDbCredentials(str(warehouse.resolve()), global_config=WAREHOUSE_DUCKDB_CONFIG)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=dlt.destinations.duckdb(credentials),
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
    """Write reject records as CSV, one file `<rejects_root>/<table>/<name>.csv` per table; return the paths."""
    written = []
    tables = sorted(set(rejects["table_name"].to_pylist())) if rejects.num_rows else []
    for table in tables:
        part = rejects.filter(pa.compute.equal(rejects["table_name"], table))
        target = rejects_root / table / f"{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".csv.tmp")
        pacsv.write_csv(part, tmp)
        tmp.replace(target)
        written.append(target)
    return written
