"""dlt's load packages of a pipeline: the files of the completed ones, and the jobs a destination refused."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from dlt.common.pipeline import LoadInfo
from dlt.pipeline.pipeline import Pipeline


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
