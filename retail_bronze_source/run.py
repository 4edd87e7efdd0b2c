"""One Bronze run: the source into DuckDB, its packages into the Parquet change log and Delta, rejects CSVs, a summary.

Raw files are read and validated once, by the warehouse pipeline; the lake pipeline imports the warehouse's loaded
packages (`change_log`), and the Delta mirror follows the lake's packages (`delta_mirror`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema.typing import TDeleteInsertStrategyDict
from dlt.extract.source import DltSource
from dlt.pipeline.pipeline import Pipeline

from . import DEFAULT_CHUNK_SIZE, DELETE_INSERT, retail_source
from .change_log import change_log_resources
from .crash_points import crash_point
from .delta_mirror import Compaction, DeltaTableFailure, MirroredTable, mirror_and_compact
from .extract import MANIFEST_TABLE, REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE, TableExtractor, discover_files
from .registry import RETAIL_TABLES, TableSpec, select_tables
from .run_lock import run_lock
from .sinks import (
    DATASET,
    LOADER_FILE_FORMAT,
    FailedJob,
    failed_jobs,
    lake_pipeline,
    load_arrow,
    load_failed_rejects,
    load_rejects,
    undo_interrupted_jobs,
    warehouse_pipeline,
    write_rejects_csv,
)
from .validate import quote_ident


@dataclass
class TableSummary:
    """What one run did with one table's files."""

    files: int = 0
    rows_read: int = 0
    valid: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class RunResult:
    """The outcome of `run_bronze`."""

    ingestion_ts: datetime
    warehouse_load_id: str | None
    lake_load_id: str | None
    summary: dict[str, TableSummary]
    failed_jobs: list[FailedJob]
    mirrored: list[MirroredTable]
    rejects_files: list[Path]
    compacted: list[Compaction]
    schema_changes: list[dict[str, Any]] = field(default_factory=list)
    """Columns this run added to existing tables (`--evolve-schema`), as recorded in `bronze.schema_history`."""
    warnings: list[str] = field(default_factory=list)
    delta_failures: list[DeltaTableFailure] = field(default_factory=list)
    """Delta tables this run could not write or compact (every other table and sink is complete)."""


@dataclass(frozen=True)
class Layout:
    """Where a run reads and writes."""

    raw_url: str
    lake: Path
    warehouse: Path

    @property
    def delta_root(self) -> Path:
        return self.lake / DATASET / "delta"

    @property
    def rejects_root(self) -> Path:
        return self.lake / "_rejects"


DEFAULT_LOCK_TIMEOUT = 60.0


def run_bronze(layout: Layout, *, table_names: Sequence[str] | None = None, tables: Sequence[TableSpec] | None = None,
               pipelines_dir: str | None = None, chunk_size: int | None = None,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT, evolve_schema: bool = False) -> RunResult:
    """Load new and changed raw files into every sink; rejects are outputs, not failures.

    The run holds the lock of its warehouse and of its lake for its whole duration: a second run waits up to
    `lock_timeout` seconds and then raises `RunLocked` naming the holder.
    """
    tune_malloc()
    with run_lock(layout.warehouse.with_name(layout.warehouse.name + ".lock"), lock_timeout), \
            run_lock(layout.lake / ".retail_bronze.lock", lock_timeout):
        return _run(layout, table_names=table_names, tables=tables, pipelines_dir=pipelines_dir, chunk_size=chunk_size,
                    evolve_schema=evolve_schema)


MALLOC_ARENAS = 2
MALLOC_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
"""glibc `mallopt` parameter numbers (malloc.h)."""


def tune_malloc() -> None:
    """Make glibc's malloc give memory back: at most `MALLOC_ARENAS` arenas, and blocks of `MALLOC_MMAP_THRESHOLD`
    bytes or more mapped on their own (glibc only; elsewhere nothing to do).

    By default each thread of the readers, DuckDB and DataFusion may get an arena of its own, and the mmap threshold
    grows with the largest block freed, so freed read buffers stay in the heap: reading 10M rows kept 150 to 300 MB
    more resident. It applies to the whole process, like `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_`.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # a libc without glibc's mallopt (musl): its allocator needs no tuning here
    libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)


def _run(layout: Layout, *, table_names: Sequence[str] | None, tables: Sequence[TableSpec] | None,
         pipelines_dir: str | None, chunk_size: int | None, evolve_schema: bool) -> RunResult:
    _require_load_settings()
    specs = select_tables(tables or RETAIL_TABLES, table_names)
    stamp = datetime.now(UTC)
    options: dict[str, Any] = {"raw_url": layout.raw_url, "tables": specs, "ingestion_ts": stamp,
                               "evolve_schema": evolve_schema, "append_new_rows": True, "parquet_files": True}
    if chunk_size:
        options["chunk_size"] = chunk_size

    warehouse = warehouse_pipeline(layout.warehouse, pipelines_dir=pipelines_dir)
    failed = _finish_pending(warehouse, undo_interrupted=True)
    source = retail_source(**options)
    guard_late_versions(source, specs, DATASET)
    columns_before = _data_columns(warehouse)
    info = warehouse.run(source, loader_file_format=LOADER_FILE_FORMAT)
    warehouse_load_id = info.loads_ids[0] if info.loads_ids else None
    changes = _schema_changes(columns_before, _data_columns(warehouse), warehouse_load_id, stamp)
    if changes:
        load_arrow(warehouse, pa.Table.from_pylist(changes, schema=SCHEMA_HISTORY_SCHEMA), SCHEMA_HISTORY_TABLE,
                   ["table_name", "column_name"])
    failed += failed_jobs(warehouse, info)
    if failed:
        _record_load_failures(warehouse, failed, stamp)
    crash_point("warehouse_loaded")

    lake = lake_pipeline(layout.lake, pipelines_dir=pipelines_dir)
    lake_failed = _finish_pending(lake)
    imports = change_log_resources(warehouse)
    lake_info = lake.run(imports, loader_file_format=LOADER_FILE_FORMAT) if imports else None
    lake_load_id = lake_info.loads_ids[0] if lake_info and lake_info.loads_ids else None
    lake_failed += failed_jobs(lake, lake_info) if lake_info else []
    if lake_failed:
        _record_load_failures(warehouse, lake_failed, stamp)
    failed += lake_failed
    crash_point("lake_loaded")

    # The warehouse is complete: its reports are read while the Delta mirror runs (both release the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reports") as pool:
        reports = pool.submit(_warehouse_reports, layout, warehouse_load_id, failed, specs, stamp,
                              warnings=not evolve_schema)
        mirrored, compacted, delta_failures = mirror_and_compact(lake, layout.delta_root, specs)
        files, summary, warnings = reports.result()
    return RunResult(stamp, warehouse_load_id, lake_load_id, summary, failed, mirrored, files, compacted, changes,
                     warnings, delta_failures)


def _warehouse_reports(layout: Layout, load_id: str | None, failed: list[FailedJob], specs: Sequence[TableSpec],
                       stamp: datetime, *, warnings: bool) -> tuple[list[Path], dict[str, TableSummary], list[str]]:
    """What a run reports from the warehouse once it is loaded: the rejects CSVs written, the summary by table and
    the rescued-column warnings (when `warnings`)."""
    rejects = _rejects_of_load(layout.warehouse, load_id, failed)
    files = write_rejects_csv(rejects, layout.rejects_root, load_id or f"load_failed_{stamp:%Y%m%dT%H%M%S}")
    summary = _summary(layout.warehouse, load_id, specs)
    return files, summary, _rescue_warnings(layout.warehouse, load_id) if warnings else []


SCHEMA_HISTORY_TABLE = "schema_history"
SCHEMA_HISTORY_SCHEMA = pa.schema([
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("column_name", pa.string(), nullable=False),
    pa.field("data_type", pa.string(), nullable=False),
    pa.field("load_id", pa.string()),
    pa.field("changed_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


def _data_columns(pipeline: Pipeline) -> dict[str, dict[str, str]]:
    """Column name -> dlt data type of every data table in the pipeline's schema."""
    if not pipeline.default_schema_name:
        return {}
    schema = pipeline.default_schema
    return {
        table["name"]: {name: str(column.get("data_type")) for name, column in table.get("columns", {}).items()}
        for table in schema.data_tables()
    }


def _schema_changes(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]], load_id: str | None,
                    stamp: datetime) -> list[dict[str, Any]]:
    """Columns added to tables that existed before the run."""
    return [
        {"table_name": table, "column_name": name, "data_type": data_type, "load_id": load_id, "changed_at": stamp}
        for table, columns in sorted(after.items()) if table in before and table != SCHEMA_HISTORY_TABLE
        for name, data_type in columns.items() if name not in before[table]
    ]


def _rescue_warnings(warehouse: Path, load_id: str | None) -> list[str]:
    """One warning per table whose files of this load had columns outside the contract."""
    if load_id is None:
        return []
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not _has_table(con, MANIFEST_TABLE):
            return []
        found = con.execute(f"SELECT table_name, string_agg(DISTINCT extra_columns, ',') FROM {DATASET}.{MANIFEST_TABLE} "
                            f"WHERE load_id = ? AND extra_columns IS NOT NULL GROUP BY 1 ORDER BY 1", [load_id]).fetchall()
    return [f"{table}: column(s) {', '.join(sorted(set(columns.split(','))))} are not in the contract and were kept in "
            f"_rescued_data; declare them in schemas/schemas.py or run with --evolve-schema" for table, columns in found]


REQUIRED_LOAD_SETTINGS = {"LOAD__RAISE_ON_FAILED_JOBS": "false", "LOAD__DELETE_COMPLETED_JOBS": "false",
                          "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true"}
"""dlt settings a run depends on: refused jobs become LOAD_FAILED rejects instead of blocking the package, loaded
packages stay on disk for the Delta mirror, and every row carries its load id (interrupted appends are undone by it)."""


def _require_load_settings() -> None:
    for key, value in REQUIRED_LOAD_SETTINGS.items():
        current = os.environ.setdefault(key, value)
        if current.lower() != value:
            raise ValueError(f"{key}={current} is not supported by a Bronze run: it needs {value}")


def guard_late_versions(source: DltSource, specs: Sequence[TableSpec], dataset: str) -> None:
    """Keep DuckDB merges from replacing a newer version of a key with an older one that arrives late.

    Staged rows whose key already holds a higher sequence value in `dataset` are left out of the merge (dlt's
    `source_filter`); they still land in the change log, and the Delta upsert applies the same rule.
    """
    for spec in specs:
        if spec.write_disposition != "merge" or not spec.sequence_column:
            continue
        version = [quote_ident(c) for c in (*spec.primary_key, spec.sequence_column)]
        seq = quote_ident(spec.sequence_column)
        on = " AND ".join([*(f"g.{quote_ident(k)} = x.{quote_ident(k)}" for k in spec.primary_key), f"g.{seq} > x.{seq}"])
        staged = f"{quote_ident(dataset + '_staging')}.{quote_ident(spec.name)}"
        loaded = f"{quote_ident(dataset)}.{quote_ident(spec.name)}"
        stale = f"SELECT {', '.join('x.' + c for c in version)} FROM {staged} AS x JOIN {loaded} AS g ON {on}"
        guarded: TDeleteInsertStrategyDict = {**DELETE_INSERT, "source_filter": f"({', '.join(version)}) NOT IN ({stale})"}
        source.resources[spec.name].apply_hints(write_disposition=guarded)


def _finish_pending(pipeline: Pipeline, *, undo_interrupted: bool = False) -> list[FailedJob]:
    """Normalize and load packages a killed run left behind, before anything new is extracted.

    With `undo_interrupted` (the DuckDB warehouse), what interrupted jobs may have committed is removed before dlt
    runs those jobs again (`undo_interrupted_jobs`).
    """
    if not pipeline.has_pending_data:
        return []
    pipeline.normalize()
    if undo_interrupted:
        undo_interrupted_jobs(pipeline)
    return failed_jobs(pipeline, pipeline.load())


def _record_load_failures(warehouse: Pipeline, failed: list[FailedJob], stamp: datetime) -> None:
    rejects = pa.concat_tables([load_failed_rejects(job, stamp) for job in failed])
    load_rejects(warehouse, rejects)


def _rejects_of_load(warehouse: Path, load_id: str | None, failed: list[FailedJob]) -> pa.Table:
    if load_id is None and not failed:
        return REJECTS_OUTPUT_SCHEMA.empty_table()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not _has_table(con, REJECTS_TABLE):
            return REJECTS_OUTPUT_SCHEMA.empty_table()
        ids = [i for i in [load_id, *(j.load_id for j in failed)] if i]
        placeholders = ", ".join("?" for _ in ids)
        columns = ", ".join(REJECTS_OUTPUT_SCHEMA.names)
        return con.execute(f"SELECT {columns} FROM {DATASET}.{REJECTS_TABLE} WHERE load_id IN ({placeholders}) "
                           f"ORDER BY table_name, src_filename, src_row_number, reason_code", ids).to_arrow_table()


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                        [DATASET, table]).fetchone()
    return bool(found and found[0])


def _summary(warehouse: Path, load_id: str | None, specs: Sequence[TableSpec]) -> dict[str, TableSummary]:
    summary = {spec.name: TableSummary() for spec in specs}
    if load_id is None:
        return summary
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if _has_table(con, MANIFEST_TABLE):
            for table, files, read, valid, rejected in con.execute(
                f"SELECT table_name, count(*), sum(row_count), sum(valid_count), sum(reject_count) "
                f"FROM {DATASET}.{MANIFEST_TABLE} WHERE load_id = ? GROUP BY table_name", [load_id]
            ).fetchall():
                summary.setdefault(table, TableSummary())
                item = summary[table]
                item.files, item.rows_read, item.valid, item.rejected = files, int(read), int(valid), int(rejected)
        if _has_table(con, REJECTS_TABLE):
            for table, reason, n in con.execute(
                f"SELECT table_name, reason_code, count(*) FROM {DATASET}.{REJECTS_TABLE} WHERE load_id = ? "
                f"GROUP BY ALL", [load_id]
            ).fetchall():
                summary.setdefault(table, TableSummary()).reasons[reason] = int(n)
    return summary


def dry_run(layout: Layout, *, table_names: Sequence[str] | None = None, tables: Sequence[TableSpec] | None = None,
            ledgers: dict[str, dict[str, Any]] | None = None) -> dict[str, TableSummary]:
    """Read and validate what a run would load, writing nothing; `ledgers` are the file ledgers already recorded."""
    specs = select_tables(tables or RETAIL_TABLES, table_names)
    stamp = datetime.now(UTC)
    summary: dict[str, TableSummary] = defaultdict(TableSummary)
    for spec in specs:
        ledger = dict((ledgers or {}).get(spec.name, {}))
        extractor = TableExtractor(spec, ingestion_ts=stamp, load_id=None, chunk_size=DEFAULT_CHUNK_SIZE, ledger=ledger)
        item = summary[spec.name]
        for kind, table in extractor.run(discover_files(spec, layout.raw_url)):
            if kind == "manifest":
                item.files += table.num_rows
                item.rows_read += pc.sum(table["row_count"]).as_py() or 0
                item.valid += pc.sum(table["valid_count"]).as_py() or 0
                item.rejected += pc.sum(table["reject_count"]).as_py() or 0
            elif kind == "rejects":
                for count in pc.value_counts(table["reason_code"]).to_pylist():
                    item.reasons[count["values"]] += count["counts"]
    return dict(summary)


def recorded_ledgers(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """The file ledgers (rel path -> fingerprint) stored in a pipeline's state, by table."""
    resources = pipeline.state.get("sources", {}).get("retail_bronze", {}).get("resources", {})
    return {name: dict(state.get("files", {})) for name, state in resources.items()}
