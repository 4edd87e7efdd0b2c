"""The post-load step mirroring the lake pipeline's loaded packages into Delta tables at `<root>/<table>/`.

Append tables are appended, keyed tables upserted by key (a row never replaces a newer version of its key). Each
commit carries the load id as a Delta application transaction (`app_id` = `retail_bronze_mirror`, version = the load id
in microseconds), written atomically with the data, so a load id is mirrored exactly once even when the step is re-run
or was killed half way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from dlt.pipeline.pipeline import Pipeline

from .extract import MANIFEST_TABLE
from .registry import TableSpec
from .validate import quote_ident

APP_ID = "retail_bronze_mirror"


@dataclass(frozen=True)
class MirroredTable:
    """One table of one load package written to Delta."""

    load_id: str
    table_name: str
    rows: int
    mode: str


def load_id_version(load_id: str) -> int:
    """The Delta application-transaction version of a dlt load id (its timestamp in microseconds)."""
    return int(Decimal(load_id) * 1_000_000)


def merge_keys(table_name: str, specs: Sequence[TableSpec]) -> tuple[list[str], str | None] | None:
    """(key columns, sequence column) of an upserted table, None for append tables."""
    if table_name == MANIFEST_TABLE:
        return ["src_path"], "processed_at"
    for spec in specs:
        if spec.name == table_name and spec.write_disposition == "merge":
            return list(spec.primary_key), spec.sequence_column
    return None


def package_files(pipeline: Pipeline, load_id: str) -> dict[str, list[str]]:
    """Parquet files of the data tables of one loaded package, by table name."""
    info = pipeline.get_load_package_info(load_id)
    by_table: dict[str, list[str]] = defaultdict(list)
    for job in info.jobs.get("completed_jobs", []):
        table = job.job_file_info.table_name
        if table.startswith("_dlt") or not job.file_path.endswith(".parquet"):
            continue
        by_table[table].append(job.file_path)
    return dict(by_table)


def mirror_to_delta(pipeline: Pipeline, delta_root: Path, specs: Sequence[TableSpec]) -> list[MirroredTable]:
    """Mirror every loaded package of `pipeline` not yet in Delta, oldest first; return what was written."""
    written = []
    loaded = [lid for lid in pipeline.list_completed_load_packages()
              if pipeline.get_load_package_info(lid).state == "loaded"]
    for load_id in sorted(loaded, key=Decimal):
        for table, files in sorted(package_files(pipeline, load_id).items()):
            result = mirror_table(delta_root / table, files, load_id, merge_keys(table, specs))
            if result is not None:
                written.append(MirroredTable(load_id, table, *result))
    return written


def mirror_table(target: Path, files: list[str], load_id: str,
                 keys: tuple[list[str], str | None] | None) -> tuple[int, str] | None:
    """Write one package's files of one table to the Delta table `target`; None if this load id is already there."""
    version = load_id_version(load_id)
    commit = CommitProperties(app_transactions=[Transaction(app_id=APP_ID, version=version)],
                              custom_metadata={"retail_bronze.load_id": load_id})
    table = DeltaTable(str(target)) if DeltaTable.is_deltatable(str(target)) else None
    if table is not None and (table.transaction_version(APP_ID) or -1) >= version:
        return None
    source = ds.dataset(files, format="parquet")
    rows = source.count_rows()
    if table is None or keys is None:
        write_deltalake(str(target), source.scanner().to_reader(), mode="append", schema_mode="merge",
                        commit_properties=commit)
        return rows, "append"
    key_cols, sequence = keys
    predicate = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in key_cols)
    newer = f"s.{quote_ident(sequence)} >= t.{quote_ident(sequence)}" if sequence else None
    (
        table.merge(source.to_table(), predicate=predicate, source_alias="s", target_alias="t", merge_schema=True,
                    commit_properties=commit)
        .when_matched_update_all(predicate=newer)
        .when_not_matched_insert_all()
        .execute()
    )
    return rows, "upsert"
