"""One Bronze run: the source into DuckDB, then the Parquet change log, the Delta mirror and the rejects CSVs.

Raw files are read and validated once, by the warehouse pipeline. Every other sink follows the warehouse and knows
what it holds: the change log imports the warehouse loads it lacks (`sinks.change_log`), the Delta mirror writes the change
log's loads it lacks (`sinks.delta`), the rejects CSVs are written for the loads that have none. So a run killed at
any point, a deleted lake or pipelines directory, or a lost warehouse (restored from the lake) all converge on the
next run. Which state belongs to which sink is settled first (`sinks.identity`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.pipeline.helpers import pipeline_drop
from dlt.pipeline.pipeline import Pipeline

from . import SOURCE_NAME, run_source
from .crash_points import crash_point
from .helpers import load_id_order, quote_ident
from .lease import LakeLease, lake_lease
from .observe import ProgressReport, RunObserver, RunRecord
from .outputs import (
    MANIFEST_TABLE,
    OUTCOME_FAILED,
    OUTCOME_HELD,
    REJECTS_TABLE,
    SCHEMA_HISTORY_SCHEMA,
    SCHEMA_HISTORY_TABLE,
    SHARED_TABLES,
    TABLE_RESETS_SCHEMA,
    TABLE_RESETS_TABLE,
    table_schema,
)
from .promote import Promotion, history_rows, plan_promotions, promote
from .registry import RETAIL_TABLES, TableSpec, select_tables
from .resources import SinkOptions, preview
from .run_lock import run_lock
from .sinks import DATASET, LOADER_FILE_FORMAT, Layout
from .sinks.change_log import sync_change_log
from .sinks.delta import Compaction, DeltaTableFailure, MirroredTable, mirror_and_compact
from .sinks.identity import SinkMismatch, completed_loads, open_sinks, pipeline_names
from .sinks.packages import FailedJob, failed_jobs
from .sinks.rejects_csv import sync_rejects_csv
from .sinks.restore import manifest_ledgers
from .sinks.warehouse import (
    WarehouseTaken,
    detach_shared_tables,
    drop_emptied_files,
    load_arrow,
    load_failed_rejects,
    load_rejects,
    lock_holder,
    restore_merge_dispositions,
    sweep_orphans,
    table_exists,
    undo_interrupted_jobs,
    wait_for_warehouse,
)
from .storage import RAW_SECTION, StoreError, check_readable, check_writable, open_store, store_step
from .wap import PublishRefused, Staging, WapOutcome, WapSettings, publish_held, settle_staging, wap_settings


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
    rejects_files: list[str]
    compacted: list[Compaction]
    schema_changes: list[dict[str, Any]] = field(default_factory=list)
    """Columns this run added to existing tables (`--evolve-schema`), as recorded in `bronze.schema_history`."""
    warnings: list[str] = field(default_factory=list)
    delta_failures: list[DeltaTableFailure] = field(default_factory=list)
    """Delta tables this run could not write or compact (every other table and sink is complete)."""
    pipelines: tuple[str, str] = ("", "")
    """The names of the warehouse and lake pipelines (for `dlt pipeline <name> info`)."""
    notes: list[str] = field(default_factory=list)
    """What the run did to bring the sinks together before loading (a state dropped, a warehouse restored...)."""
    record: RunRecord | None = None
    """What the run did, as kept in the warehouse and the lake (`observe`; `load_info` reads it back)."""
    wap: WapOutcome | None = None
    """What a write-audit-publish run did with its staged load (None for a run without it)."""

    @property
    def exit_code(self) -> int:
        """What the command line exits with: 4 when audits failed (nothing published), 3 when the load is held for
        inspection, 1 when a Delta table could not be written (the next run catches it up), else 0."""
        held_back = self.wap.exit_code if self.wap is not None else None
        return held_back if held_back is not None else 1 if self.delta_failures else 0


DEFAULT_LOCK_TIMEOUT = 60.0
WAREHOUSE_OPTIONS = SinkOptions(append_new_rows=True, parquet_files=True)
"""The warehouse loads new rows as plain appends (its interrupted jobs are undone before a retry) and takes Parquet
files written by the resources."""


def run_bronze(layout: Layout, *, table_names: Sequence[str] | None = None, tables: Sequence[TableSpec] | None = None,
               pipelines_dir: str | None = None, chunk_size: int | None = None,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT, evolve_schema: bool | None = None,
               reload: Sequence[str] = (), progress: ProgressReport | None = None,
               wap: bool | None = None) -> RunResult:
    """Load new and changed raw files into every sink; rejects are outputs, not failures.

    The run holds the locks of its warehouse, its lake and its pipelines' working directories for its whole duration:
    a second run waits up to `lock_timeout` seconds and then raises `RunLocked` naming the holder; a warehouse open in another process
    (a BI tool, the DuckDB CLI) is waited for as long, then `WarehouseBusy`. `evolve_schema` None follows the
    configuration (`[sources.retail_bronze] evolve_schema`). `reload` names tables to load again from their raw files
    in every sink (their tables, rejects and manifest records are replaced). `progress` is called as each table's
    extraction ends. What the run did is recorded (`RunResult.record`), a failed run's error too.

    `wap` (None: `[sources.retail_bronze] wap`) makes it a write-audit-publish run (`wap`): the load is staged, the
    tables' audits run on it, and it is published, held or dropped as `on_success` and `on_failure` say
    (`RunResult.wap`). Every run first settles a staging an earlier run left.
    """
    specs = select_tables(tables or RETAIL_TABLES, table_names)
    wap_config = wap_settings(wap)
    unknown = sorted(set(reload) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"cannot reload {', '.join(unknown)}: not among the tables of this run")
    with _locked(layout, pipelines_dir, lock_timeout) as lease:
        observer = RunObserver(layout, [spec.name for spec in specs], progress)
        with observer.recording_failure():
            result = _run(layout, specs, pipelines_dir=pipelines_dir, chunk_size=chunk_size,
                          evolve_schema=evolve_schema, reload=reload, lease=lease, observer=observer, wap=wap_config)
        result.record = observer.finish(result)
        return result


def check_layout(layout: Layout, *, write: bool = True) -> None:
    """Refuse, with a one-line `StoreError`, a layout a run cannot use, before anything is written: a raw root that
    cannot be listed, and with `write` a lake or warehouse folder that cannot be written, or a lake on an object store
    other than S3 (runs there could not be kept from interleaving: see `lease`)."""
    check_readable(open_store(layout.raw_url, RAW_SECTION), "raw root")
    if not write:
        return
    lake = layout.lake_store
    if not lake.is_local and lake.protocol != "s3":
        raise StoreError(f"the lake {lake} is on {lake.protocol}://, where runs cannot take a lease (only S3 and "
                         "local lakes are supported); read raw files from there, keep the lake on S3 or a local disk")
    check_writable(lake, "lake")
    check_writable(open_store(layout.warehouse.parent, RAW_SECTION), "warehouse folder")


@contextmanager
def _locked(layout: Layout, pipelines_dir: str | None, lock_timeout: float) -> Iterator[LakeLease | None]:
    """Hold the locks of the warehouse, the lake (a lease on object storage) and the pipelines' working directories,
    and wait for a warehouse open in another process (see `run_bronze`)."""
    check_layout(layout)
    working = Path(pipelines_dir or get_dlt_pipelines_dir())
    lake = layout.lake_store
    locks = [layout.warehouse.with_name(layout.warehouse.name + ".lock"),
             *([lake.local_path / ".retail_bronze.lock"] if lake.is_local else []),
             *(working / f".{name}.lock" for name in pipeline_names(layout.warehouse, lake))]
    with ExitStack() as held:
        for lock in locks:
            held.enter_context(run_lock(lock, lock_timeout))
        lease = None if lake.is_local else held.enter_context(lake_lease(lake, lock_timeout))
        wait_for_warehouse(layout.warehouse, lock_timeout)
        try:
            yield lease
        except Exception as error:
            who = lock_holder(error)
            if who is None:
                raise
            raise WarehouseTaken(f"the warehouse {layout.warehouse} was opened in {who} while this run was writing "
                                 "it; close that session and run again (the next run completes this one)") from error


def _run(layout: Layout, specs: Sequence[TableSpec], *, pipelines_dir: str | None, chunk_size: int | None,
         evolve_schema: bool | None, reload: Sequence[str], lease: LakeLease | None,
         observer: RunObserver, wap: WapSettings | None = None) -> RunResult:
    stamp = observer.started
    settled = settle_staging(layout.warehouse)
    sinks = open_sinks(layout, specs, pipelines_dir)
    sinks.notes[:0] = settled
    warehouse, lake = sinks.warehouse, sinks.lake
    swept = sweep_orphans(warehouse, {s.name for s in specs} | set(SHARED_TABLES), sinks.identity.restored_through)
    if swept:
        sinks.notes.append(f"removed {swept} row(s) an interrupted load had left in the warehouse")
    columns_before = _data_columns(warehouse)
    failed = _finish_pending(warehouse, undo_interrupted=True)
    staging, earlier = None, []
    if wap is not None:  # the run loads a staged copy of the warehouse; earlier packages' failures stay published
        if failed:
            _record_load_failures(warehouse, failed, stamp)
        staging, earlier, failed = Staging.begin(layout.warehouse, warehouse, wap, stamp), failed, []
        warehouse = staging.pipeline
    warehouse_db = staging.warehouse if staging else layout.warehouse
    if warehouse.refresh:
        # dlt would drop the tables in the warehouse only; a reload replaces them in every sink.
        sinks.notes.append(f"refresh={warehouse.refresh} is configured: every table of the run is reloaded from its "
                           "raw files in every sink")
        reload = [spec.name for spec in specs]
        warehouse.refresh = None
    if reload:
        _drop_tables(warehouse, warehouse_db, reload)
    seeds, resets = _reconcile_ledgers(warehouse, warehouse_db, specs, reload)
    if seeds:
        sinks.notes.append(f"the file ledger of {', '.join(sorted(seeds))} was rebuilt from the manifest")
    observer.lap("prepare")

    source = run_source(specs, layout.raw_url, ingestion_ts=stamp, evolve_schema=evolve_schema, chunk_size=chunk_size,
                        options=replace(WAREHOUSE_OPTIONS, progress=observer.progress), ledger_seeds=seeds,
                        extra=[_resets_resource(resets, stamp)] if resets else [])
    extracted = warehouse.extract(source, loader_file_format=LOADER_FILE_FORMAT)
    warehouse_load_id = extracted.loads_ids[-1] if extracted.loads_ids else None
    observer.lap("extract")
    warehouse.normalize()
    observer.lap("normalize")
    info = warehouse.load(raise_on_failed_jobs=False)
    restore_merge_dispositions(warehouse, [s.name for s in specs if s.write_disposition == "merge"])
    detach_shared_tables(warehouse, SHARED_TABLES)
    changes = _schema_changes(warehouse, specs, columns_before, warehouse_load_id, stamp)
    if changes:
        load_arrow(warehouse, pa.Table.from_pylist(changes, schema=SCHEMA_HISTORY_SCHEMA), SCHEMA_HISTORY_TABLE,
                   ["table_name", "column_name"])
        detach_shared_tables(warehouse, SHARED_TABLES)
    failed += failed_jobs(warehouse, info)
    if failed:
        _record_load_failures(warehouse, failed, stamp)
    emptied = drop_emptied_files(warehouse, [s.name for s in specs if s.write_disposition != "merge"])
    if emptied:
        sinks.notes.append(f"removed {emptied} row(s) of file(s) delivered again without a valid row")
    observer.lap("load")
    crash_point("warehouse_loaded")
    outcome = staged_summary = None
    if staging is not None:
        outcome = staging.audit(specs, warehouse_load_id)
        staged_summary = _summary(warehouse_db, outcome.load_id, specs)
        observer.lap("audit")
        if outcome.load_id is not None and outcome.status in (OUTCOME_FAILED, OUTCOME_HELD):
            observer.staged(warehouse_db, outcome.load_id)
        outcome, warehouse = staging.settle(outcome)
        observer.lap("publish")
        failed, changes = [*earlier, *failed], changes if outcome.status == "published" else []

    lake_load_id, lake_failed = _follow_warehouse(layout, warehouse, lake, stamp, lease)
    failed += lake_failed
    observer.lap("change_log")
    crash_point("lake_loaded")

    # The warehouse is complete: its reports are read while the Delta mirror runs (both release the GIL).
    _check(lease)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reports") as pool:
        reports = pool.submit(_warehouse_reports, layout, warehouse_load_id, specs,
                              warnings=not _evolves(warehouse, specs))
        drafted = pool.submit(observer.prepare, lake_load_id)
        mirrored, compacted, delta_failures = mirror_and_compact(layout.lake_store, specs)
        observer.lap("delta")
        files, summary, warnings = reports.result()
        drafted.result()
        observer.lap("reports")
    return RunResult(stamp, warehouse_load_id, lake_load_id, staged_summary or summary, failed, mirrored, files,
                     compacted, changes, warnings, delta_failures, (warehouse.pipeline_name, lake.pipeline_name),
                     sinks.notes, wap=outcome)


def _check(lease: LakeLease | None) -> None:
    """Stop before the next write to the lake if another run took this run's lease over."""
    if lease is not None:
        lease.check()


def _follow_warehouse(layout: Layout, warehouse: Pipeline, lake: Pipeline, stamp: datetime,
                      lease: LakeLease | None) -> tuple[str | None, list[FailedJob]]:
    """Bring the change log up to the warehouse (packages a killed run left first); return the lake load id and the
    lake's refused jobs (recorded in the warehouse as `LOAD_FAILED` rejects)."""
    _check(lease)
    with store_step(layout.lake_store, "importing into the change log"):
        lake_failed = _finish_pending(lake)
        lake_info = sync_change_log(warehouse, layout.warehouse, lake, layout.lake_store)
    lake_load_id = lake_info.loads_ids[-1] if lake_info and lake_info.loads_ids else None
    lake_failed += failed_jobs(lake, lake_info) if lake_info else []
    if lake_failed:
        _record_load_failures(warehouse, lake_failed, stamp)
    return lake_load_id, lake_failed


@dataclass
class PromoteResult:
    """The outcome of `promote_rescued`: the columns promoted and those that could not be."""

    promoted: list[Promotion]
    refused: list[Promotion]
    delta_failures: list[DeltaTableFailure]


def promote_rescued(layout: Layout, *, table_names: Sequence[str] | None = None,
                    tables: Sequence[TableSpec] | None = None, pipelines_dir: str | None = None,
                    lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> PromoteResult:
    """Promote the columns kept in `_rescued_data` of the selected tables to real (text) columns of the rows already
    loaded, in the warehouse and its Delta mirror, recorded in `bronze.schema_history` (see `promote`).

    The lake is first brought up to the warehouse, so that both hold the same rows; nothing new is extracted."""
    specs = select_tables(tables or RETAIL_TABLES, table_names)
    with _locked(layout, pipelines_dir, lock_timeout) as lease:
        stamp = datetime.now(UTC)
        settle_staging(layout.warehouse)
        sinks = open_sinks(layout, specs, pipelines_dir)
        warehouse, lake = sinks.warehouse, sinks.lake
        _finish_pending(warehouse, undo_interrupted=True)
        _follow_warehouse(layout, warehouse, lake, stamp, lease)
        mirror_and_compact(layout.lake_store, specs)
        plans = plan_promotions(warehouse, layout.warehouse, [s.name for s in specs])
        _check(lease)
        done = promote(warehouse, layout.warehouse, layout.delta_root, plans)
        failures: list[DeltaTableFailure] = []
        if done:
            load_arrow(warehouse, pa.Table.from_pylist(history_rows(done), schema=SCHEMA_HISTORY_SCHEMA),
                       SCHEMA_HISTORY_TABLE, ["table_name", "column_name"])
            detach_shared_tables(warehouse, SHARED_TABLES)
            _follow_warehouse(layout, warehouse, lake, stamp, lease)
            failures = mirror_and_compact(layout.lake_store, specs)[2]
        return PromoteResult(done, [p for p in plans if p.refused is not None], failures)


@dataclass
class PublishResult:
    """The outcome of `publish_staged`."""

    notes: list[str]
    lake_load_id: str | None
    mirrored: list[MirroredTable]
    delta_failures: list[DeltaTableFailure]


def publish_staged(layout: Layout, *, tables: Sequence[TableSpec] | None = None, pipelines_dir: str | None = None,
                   lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> PublishResult:
    """Publish the staging a write-audit-publish run held for inspection (`on_success = "inspect"`), then bring the
    change log, the Delta mirror and the rejects CSVs up to the warehouse. Raises `PublishRefused` when no staging
    is held, its audits failed, or the warehouse took other loads since it was staged."""
    specs = select_tables(tables or RETAIL_TABLES, None)
    with _locked(layout, pipelines_dir, lock_timeout) as lease:
        stamp = datetime.now(UTC)
        notes = publish_held(layout.warehouse)
        sinks = open_sinks(layout, specs, pipelines_dir)
        _finish_pending(sinks.warehouse, undo_interrupted=True)
        lake_load_id, _ = _follow_warehouse(layout, sinks.warehouse, sinks.lake, stamp, lease)
        mirrored, _, failures = mirror_and_compact(layout.lake_store, specs)
        _warehouse_reports(layout, None, specs, warnings=False)
        return PublishResult([*notes, *sinks.notes], lake_load_id, mirrored, failures)


def _evolves(pipeline: Pipeline, specs: Sequence[TableSpec]) -> bool:
    """Whether the tables of this run evolve their schema (then there are no rescued-column warnings to give)."""
    if not pipeline.default_schema_name:
        return False
    contracts = [pipeline.default_schema.tables.get(s.name, {}).get("schema_contract") for s in specs]
    return any(isinstance(c, dict) and c.get("columns") == "evolve" for c in contracts)


def _warehouse_reports(layout: Layout, load_id: str | None, specs: Sequence[TableSpec], *,
                       warnings: bool) -> tuple[list[str], dict[str, TableSummary], list[str]]:
    """What a run reports from the warehouse once it is loaded: the rejects CSVs written (for every load that had
    none), the summary by table and the rescued-column warnings (when `warnings`)."""
    with store_step(layout.lake_store, "writing the rejects CSVs"):
        files = sync_rejects_csv(layout.warehouse, layout.rejects_root)
    summary = _summary(layout.warehouse, load_id, specs)
    return files, summary, _rescue_warnings(layout.warehouse, load_id) if warnings else []


def _data_columns(pipeline: Pipeline) -> dict[str, dict[str, str]]:
    """Column name -> dlt data type of every data table in the pipeline's schema."""
    if not pipeline.default_schema_name:
        return {}
    schema = pipeline.default_schema
    return {
        table["name"]: {name: str(column.get("data_type")) for name, column in table.get("columns", {}).items()}
        for table in schema.data_tables()
    }


def _schema_changes(pipeline: Pipeline, specs: Sequence[TableSpec], before: dict[str, dict[str, str]],
                    load_id: str | None, stamp: datetime) -> list[dict[str, Any]]:
    """Columns added by schema evolution that `bronze.schema_history` does not record yet.

    For the run's tables: every column outside the table's loaded schema (`table_schema`), whether this run added
    it, the load that created the table did, or a killed run's load the run completed. For other data tables (nested
    ones): the columns added since `before`, taken before pending packages were finished."""
    after = _data_columns(pipeline)
    if not after:
        return []
    naming = pipeline.default_schema.naming
    recorded = _recorded_history(pipeline)
    by_name = {spec.name: spec for spec in specs}
    changes = []
    for table, columns in sorted(after.items()):
        if table in SHARED_TABLES:
            continue
        spec = by_name.get(table)
        if spec is not None:
            known = {naming.normalize_identifier(name) for name in table_schema(spec).names}
        elif table in before:
            known = set(before[table])
        else:
            continue
        added = {name: data_type for name, data_type in columns.items()
                 if name not in known and not name.startswith("_dlt_") and (table, name) not in recorded}
        first = _first_loads(pipeline, table, list(added)) if added else {}
        changes += [{"table_name": table, "column_name": name, "data_type": data_type,
                     "load_id": first.get(name) or load_id, "changed_at": stamp}
                    for name, data_type in added.items()]
    return changes


def _first_loads(pipeline: Pipeline, table: str, columns: list[str]) -> dict[str, str | None]:
    """The load that first brought a value of each of `columns` (a column of a killed run's load is recorded by the
    run that completes it, under that load)."""
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        found = client.execute_sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND "
                                   "table_name = %s", client.dataset_name, table)
        if not found or not found[0][0]:
            return {}
        firsts = ", ".join(f"arg_min(_dlt_load_id, {load_id_order('_dlt_load_id')}) FILTER "
                           f"(WHERE {client.escape_column_name(c)} IS NOT NULL)" for c in columns)
        rows = client.execute_sql(f"SELECT {firsts} FROM {qualified}")
    return dict(zip(columns, rows[0], strict=True)) if rows else {}


def _recorded_history(pipeline: Pipeline) -> set[tuple[str, str]]:
    """(table, column) pairs `bronze.schema_history` holds."""
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name(SCHEMA_HISTORY_TABLE)
        found = client.execute_sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND "
                                   "table_name = %s", client.dataset_name, SCHEMA_HISTORY_TABLE)
        if not found or not found[0][0]:
            return set()
        return {(row[0], row[1]) for row in client.execute_sql(f"SELECT table_name, column_name FROM {table}") or []}


def _rescue_warnings(warehouse: Path, load_id: str | None) -> list[str]:
    """One warning per table whose rows of this load keep columns in `_rescued_data` (columns outside the contract
    that the table does not have: added and promoted columns are loaded into their own column)."""
    if load_id is None:
        return []
    warnings = []
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not table_exists(con, MANIFEST_TABLE):
            return []
        tables = [row[0] for row in con.execute(
            f"SELECT DISTINCT table_name FROM {DATASET}.{MANIFEST_TABLE} WHERE load_id = ? AND extra_columns IS NOT "
            "NULL ORDER BY 1", [load_id]).fetchall()]
        for table in tables:
            if not table_exists(con, table):
                continue
            keys = sorted(row[0] for row in con.execute(
                f"SELECT DISTINCT unnest(json_keys(_rescued_data)) FROM {DATASET}.{quote_ident(table)} "
                "WHERE _dlt_load_id = ? AND _rescued_data IS NOT NULL", [load_id]).fetchall())
            if keys:
                warnings.append(f"{table}: column(s) {', '.join(keys)} are not in the contract and were kept in "
                                f"_rescued_data; declare them in schemas/schemas.py, run with --evolve-schema, or "
                                f"promote them later with --promote-rescued")
    return warnings


def _finish_pending(pipeline: Pipeline, *, undo_interrupted: bool = False) -> list[FailedJob]:
    """Normalize and load packages a killed run left behind, before anything new is extracted.

    With `undo_interrupted` (the DuckDB warehouse), what interrupted jobs may have committed is removed before dlt
    runs those jobs again (`undo_interrupted_jobs`).
    """
    if not pipeline.has_pending_data:
        return []
    if pipeline.list_extracted_load_packages():
        pipeline.normalize()
    if undo_interrupted:
        undo_interrupted_jobs(pipeline)
    info: LoadInfo | None = pipeline.load(raise_on_failed_jobs=False)
    return failed_jobs(pipeline, info) if info is not None else []


def _drop_tables(warehouse: Pipeline, warehouse_db: Path, names: Sequence[str]) -> None:
    """dlt's own drop of the resources `names` (their tables and file ledgers); `_reconcile_ledgers` does the rest.
    A table the pipeline's schema does not know (a pipeline with no state yet: a moved or restored warehouse) is
    dropped from the warehouse directly, so that it is reloaded rather than its ledger rebuilt."""
    known = [name for name in names if warehouse.default_schema_name and name in warehouse.default_schema.tables]
    if known:
        pipeline_drop(warehouse, resources=known)()
    unknown = [name for name in names if name not in known]
    if not unknown or not warehouse_db.exists():
        return
    with duckdb.connect(str(warehouse_db)) as con:
        for name in unknown:
            con.execute(f"DROP TABLE IF EXISTS {DATASET}.{quote_ident(name)}")


def _reconcile_ledgers(warehouse: Pipeline, warehouse_db: Path, specs: Sequence[TableSpec], reload: Sequence[str]
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Tables whose file ledger is empty although the warehouse has loaded them, in two kinds:
    - seeds: the warehouse holds the table's rows but its dlt state is gone (a warehouse restored from the lake, a
      state lost with its pipelines directory and the warehouse's), or the state is older than the warehouse (another
      pipeline loaded it since): the ledger is rebuilt, or completed, from the manifest;
    - resets: the table was dropped (`dlt pipeline drop`, `--reload`, a refresh) while the manifest still records its
      files: its reject and manifest records are deleted, the reload that follows replaces them, and a
      `table_resets` row tells the lake to replace the table too.
    """
    resources = warehouse.state.get("sources", {}).get(SOURCE_NAME, {}).get("resources", {})
    empty = [spec.name for spec in specs if not resources.get(spec.name, {}).get("files")]
    if not warehouse_db.exists():
        return {}, {}
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        # Another pipeline loaded this warehouse since this one's state was saved (the warehouse moved away and
        # back): the ledgers miss what that one read, which the manifest records.
        stale = [spec.name for spec in specs if spec.name not in reload] \
            if _state_is_stale(con, warehouse.pipeline_name) else []
        if not empty and not stale:
            return {}, {}
        present = {table for table in (REJECTS_TABLE, MANIFEST_TABLE) if table_exists(con, table)}
        recorded = {row[0] for row in con.execute(
            f"SELECT DISTINCT table_name FROM {DATASET}.{MANIFEST_TABLE}").fetchall()} if MANIFEST_TABLE in present \
            else set()
        holding = {name for name in empty if table_exists(con, name) and
                   (con.execute(f"SELECT count(*) FROM {DATASET}.{quote_ident(name)}").fetchone() or (0,))[0]}
    wiped = MANIFEST_TABLE not in present and completed_loads(warehouse_db, DATASET)
    ledgers = manifest_ledgers(warehouse_db) if holding or stale else {}
    seeds = {name: ledgers[name] for name in [*empty, *stale] if (name in holding or name in stale) and name in ledgers}
    resets = {name: "reloaded with --reload" if name in reload else "dropped from the warehouse"
              for name in empty if name not in holding and (name in recorded or wiped)}
    if resets and present:
        with warehouse.sql_client() as client, client.begin_transaction():
            for table in sorted(present):
                client.execute_sql(f"DELETE FROM {client.make_qualified_table_name(table)} WHERE table_name IN "
                                   f"({', '.join('%s' for _ in resets)})", *resets)
    return seeds, resets


def _state_is_stale(con: duckdb.DuckDBPyConnection, pipeline_name: str) -> bool:
    """Whether another pipeline saved its state into the warehouse after `pipeline_name` last did."""
    if not table_exists(con, "_dlt_pipeline_state"):
        return False
    order = load_id_order("_dlt_load_id")
    row = con.execute(f"SELECT max({order}) FILTER (WHERE pipeline_name = ?), max({order}) FILTER (WHERE "
                      f"pipeline_name <> ?) FROM {DATASET}._dlt_pipeline_state", [pipeline_name, pipeline_name]
                      ).fetchone()
    return row is not None and row[0] is not None and row[1] is not None and row[1] > row[0]


def _resets_resource(resets: dict[str, str], stamp: datetime) -> Any:
    import dlt

    from .resources import LOAD_ID_FIELD

    def rows() -> Any:
        load_id = dlt.current.load_package_state()["load_id"]
        table = pa.table({"table_name": list(resets), "reset_at": [stamp] * len(resets),
                          "reason": list(resets.values())}, schema=TABLE_RESETS_SCHEMA)
        yield table.append_column(LOAD_ID_FIELD, pa.repeat(pa.scalar(load_id), table.num_rows))

    return dlt.resource(rows(), name=TABLE_RESETS_TABLE, table_name=TABLE_RESETS_TABLE, write_disposition="append")


def _record_load_failures(warehouse: Pipeline, failed: list[FailedJob], stamp: datetime) -> None:
    rejects = pa.concat_tables([load_failed_rejects(job, stamp) for job in failed])
    load_rejects(warehouse, rejects)


def _summary(warehouse: Path, load_id: str | None, specs: Sequence[TableSpec]) -> dict[str, TableSummary]:
    summary = {spec.name: TableSummary() for spec in specs}
    if load_id is None:
        return summary
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if table_exists(con, MANIFEST_TABLE):
            for table, files, read, valid, rejected in con.execute(
                f"SELECT table_name, count(*), sum(row_count), sum(valid_count), sum(reject_count) "
                f"FROM {DATASET}.{MANIFEST_TABLE} WHERE load_id = ? GROUP BY table_name", [load_id]
            ).fetchall():
                summary.setdefault(table, TableSummary())
                item = summary[table]
                item.files, item.rows_read, item.valid, item.rejected = files, int(read), int(valid), int(rejected)
        if table_exists(con, REJECTS_TABLE):
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
    summary: dict[str, TableSummary] = {spec.name: TableSummary() for spec in specs}
    for table_name, kind, table in preview(specs, layout.raw_url, ledgers or {}):
        item = summary[table_name]
        if kind == "manifest":
            item.files += table.num_rows
            item.rows_read += pc.sum(table["row_count"]).as_py() or 0
            item.valid += pc.sum(table["valid_count"]).as_py() or 0
            item.rejected += pc.sum(table["reject_count"]).as_py() or 0
        else:
            for count in pc.value_counts(table["reason_code"]).to_pylist():
                item.reasons[count["values"]] += count["counts"]
    return summary


def recorded_ledgers(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """The file ledgers (rel path -> fingerprint) stored in a pipeline's state, by table."""
    resources = pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get("resources", {})
    return {name: dict(state.get("files", {})) for name, state in resources.items()}


__all__ = ["DEFAULT_LOCK_TIMEOUT", "Layout", "PromoteResult", "PublishRefused", "PublishResult", "RunResult",
           "SinkMismatch", "StoreError", "TableSummary", "check_layout", "dry_run", "promote_rescued", "publish_staged",
           "run_bronze"]
