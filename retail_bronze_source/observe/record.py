"""The run record: what one run did, kept in the warehouse (`_retail_bronze.runs` and `_retail_bronze.run_tables`)
and in the lake (`<lake>/_retail_bronze/runs/<run id>.json`).

Its figures are read from what the sinks hold, not counted on the way: per table the manifest (files new, changed,
rejected; rows read, valid, superseded, late, rejected), the rejects (records by reason), the schema history and
table resets of the warehouse load; per sink the manifest's loaded rows (DuckDB), the change log's files of the lake
load and the Delta commit that holds the warehouse load (its `retail_bronze.load_id` commit metadata). So a load
that no run recorded (made before run records existed, or by a run killed before its end) is answered the same way
(`derive_record`, with `recorded` false). What only the run itself knows is added to its record: the files it found
unchanged, the duration of each step, its notes and warnings, its status and exit code, and what a
write-audit-publish run did with its staged load (`WapFigures`). A staged load that was not published is in no
sink: its figures are read from the staged copy of the warehouse before that copy is held or dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow.parquet as pq

from ..helpers import load_id_order, quote_literal
from ..outputs import (
    MANIFEST_TABLE,
    OUTCOME_FAILED,
    OUTCOME_HELD,
    REJECTS_TABLE,
    SCHEMA_HISTORY_TABLE,
    SHARED_TABLES,
    TABLE_RESETS_TABLE,
)
from ..redact import redact
from ..resources import TableProgress
from ..sinks import DATASET
from ..sinks.identity import META_SCHEMA
from .lake import META_DIR, LakeRoot, list_lake_files, open_lake_file, read_lake_file, write_lake_file

if TYPE_CHECKING:
    from ..run import RunResult

FORMAT = 1
"""Version of the record's JSON form."""
RUNS_FOLDER = f"{META_DIR}/runs"
RUNS_TABLE = "runs"
RUN_TABLES_TABLE = "run_tables"
AUDIT_RESULTS_TABLE = "audit_results"
"""`bronze.audit_results` (write-audit-publish): load id, table_name, audit, expected, observed, passed, severity,
outcome (see `outputs.AUDIT_RESULTS_SCHEMA`); read by column name, so that only the first six are needed."""
CHANGE_LOG = "bronze/parquet"
DELTA = "bronze/delta"
DELTA_LOAD_KEY = "retail_bronze.load_id"
"""Commit metadata of every Delta commit the mirror writes: the warehouse load it holds (`sinks.delta`)."""
DELTA_SCAN_COMMITS = 64
"""Delta commits read back, newest first, to find the one holding a load."""

STATUS_OK = "ok"
STATUS_FAILED = "failed"
"""The run raised: its error is recorded, and the next run completes what it left."""
STATUS_INCOMPLETE = "incomplete"
"""The run completed, but a Delta table could not be written (the next run catches it up)."""
STATUS_LOADED = "loaded"
"""A load no run recorded, complete in the warehouse (a record derived from the sinks)."""
STATUS_AUDIT_FAILED = "audit_failed"
"""A write-audit-publish run whose audits failed: nothing of its load was published."""
STATUS_HELD = "held"
"""A write-audit-publish run whose audits passed and whose load is held for inspection (published later, or not)."""


@dataclass
class TableFigures:
    """What a run did with one table's files and rows."""

    files_new: int = 0
    files_changed: int = 0
    """Files delivered again with other content (a new version of a known path)."""
    files_unchanged: int | None = None
    """Files found and skipped as already loaded; None when not known (a record derived from the sinks)."""
    files_rejected: int = 0
    """Files rejected whole (one file-level reject record each, no rows)."""
    files_skipped: int = 0
    """Changed files the table's `changed_files="skip"` policy left out."""
    rows_read: int = 0
    rows_valid: int = 0
    rows_superseded: int = 0
    """Valid rows replaced by a newer version of their key within the load."""
    rows_late: int = 0
    """Valid rows older than the version a sink already holds (kept in the change log only)."""
    rows_rejected: int = 0
    bytes_read: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    """Reject records by reason code (a row failing two checks has two records; a rejected file one)."""

    @property
    def files_read(self) -> int:
        return self.files_new + self.files_changed


@dataclass
class SinkFigures:
    """What a run wrote of one table into each sink."""

    duckdb_rows: int = 0
    change_log_files: int = 0
    change_log_rows: int = 0
    delta_version: int | None = None
    """The Delta table version holding the warehouse load; None when the load wrote nothing to it."""
    delta_rows: int | None = None


@dataclass
class AuditResult:
    """One audit of a run (write-audit-publish's `bronze.audit_results`)."""

    table_name: str
    audit: str
    expected: str | None
    observed: str | None
    passed: bool
    severity: str = "error"
    """`error`: a failure holds the load back; `warn`: a failure is only reported."""
    load_id: str | None = None
    """The warehouse load the audit judged (the run's staged load)."""
    outcome: str | None = None
    """What became of that load, as `bronze.audit_results` says now: `published`, `held`, `failed`, `discarded`
    (a held or failed staging dropped by a later run) or `pending` (a run killed before it settled)."""

    @property
    def blocks(self) -> bool:
        return not self.passed and self.severity != "warn"


@dataclass
class WapFigures:
    """What a write-audit-publish run did with the load it staged."""

    outcome: str
    """`published`, `held` (audits passed, held for inspection), `failed` (an audit failed: nothing published) or
    `nothing` (nothing new to stage)."""
    load_id: str | None = None
    """The staged warehouse load (in the warehouse only once published)."""
    staging: str | None = None
    """The staged warehouse file kept for inspection, if any."""
    staged_rows: dict[str, int] = field(default_factory=dict)
    """Per table, the rows the load wrote into the staged copy of the warehouse (a load not published)."""


@dataclass
class RunRecord:
    """What one run did (or, with `recorded` false, what the sinks hold of one load no run recorded)."""

    run_id: str
    recorded: bool
    status: str
    started_at: str | None = None
    finished_at: str | None = None
    ingestion_ts: str | None = None
    warehouse_load_id: str | None = None
    """The load of the run's rows into the warehouse; None when nothing was new."""
    lake_load_id: str | None = None
    """The change log load that imported the warehouse load(s); None when the change log had nothing to import."""
    loads: list[str] = field(default_factory=list)
    """Every warehouse load the run completed (its data load, schema history, refused-job rejects)."""
    earlier_loads: list[str] = field(default_factory=list)
    """Warehouse loads no run recorded that this run found complete or completed (a run killed after loading)."""
    pipelines: dict[str, str] = field(default_factory=dict)
    tables: dict[str, TableFigures] = field(default_factory=dict)
    sinks: dict[str, SinkFigures] = field(default_factory=dict)
    """Per table, shared tables (rejects, manifest...) included."""
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds per step, in order."""
    schema_changes: list[dict[str, str]] = field(default_factory=list)
    table_resets: list[dict[str, str]] = field(default_factory=list)
    rejects_csv: list[str] = field(default_factory=list)
    """The rejects CSV files of the load, relative to the lake."""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_code: int | None = None
    """What the command line exits with for this run (0; 1 a Delta table not written; 3 held; 4 audits failed); None
    for a run that raised and a record derived from the sinks."""
    wap: WapFigures | None = None
    """What a write-audit-publish run did with its staged load; None for a run without it."""
    audits: list[AuditResult] = field(default_factory=list)
    """Read from `bronze.audit_results` when the record is read (never stored in the record)."""
    format: int = FORMAT

    @property
    def audits_failed(self) -> int:
        """Failed audits that hold a load back (severity `error`)."""
        return sum(1 for audit in self.audits if audit.blocks)

    @property
    def audit_warnings(self) -> int:
        """Failed audits of severity `warn` (reported only)."""
        return sum(1 for audit in self.audits if not audit.passed and not audit.blocks)

    @property
    def staged_outcome(self) -> str | None:
        """What became of a write-audit-publish run's staged load by now (`bronze.audit_results`), when known."""
        if self.wap is None or self.wap.load_id is None:
            return None
        found = {a.outcome for a in self.audits if a.load_id == self.wap.load_id and a.outcome}
        return found.pop() if len(found) == 1 else None

    @property
    def shown_status(self) -> str:
        """The status, with failed audits named."""
        return "audit_failed" if self.audits_failed and self.status in (STATUS_OK, STATUS_LOADED) else self.status

    def total(self) -> TableFigures:
        """Every table's figures added up (`files_unchanged` None when one table's is unknown)."""
        total = TableFigures(files_unchanged=0)
        for figures in self.tables.values():
            for item in fields(TableFigures):
                if item.name == "rejects":
                    for code, n in figures.rejects.items():
                        total.rejects[code] = total.rejects.get(code, 0) + n
                    continue
                mine, theirs = getattr(total, item.name), getattr(figures, item.name)
                setattr(total, item.name, None if mine is None or theirs is None else mine + theirs)
        return total

    def all_loads(self) -> list[str]:
        return sorted({*self.loads, *([self.warehouse_load_id] if self.warehouse_load_id else [])}, key=Decimal)

    def recorded_loads(self) -> list[str]:
        """`all_loads` and the load a write-audit-publish run staged (in the warehouse only if it was published): the
        loads this record answers for."""
        staged = [self.wap.load_id] if self.wap is not None and self.wap.load_id else []
        return sorted({*self.all_loads(), *staged}, key=Decimal)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("audits")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "audits"}
        values["tables"] = {name: TableFigures(**_known(TableFigures, figures))
                            for name, figures in (data.get("tables") or {}).items()}
        values["sinks"] = {name: SinkFigures(**_known(SinkFigures, figures))
                           for name, figures in (data.get("sinks") or {}).items()}
        values["wap"] = WapFigures(**_known(WapFigures, data["wap"])) if data.get("wap") else None
        return cls(**values)


def _known(kind: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def run_id_of(started: datetime) -> str:
    """A run id: the run's start in UTC, sortable as text (`20261206T223651.493718Z`)."""
    return started.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class StepClock:
    """Durations of a run's steps: `lap(name)` closes the step that began at the previous lap (or at the start)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last = self.started
        self.steps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round(self.steps.get(name, 0.0) + now - self._last, 4)
        self._last = now


class ProgressLog:
    """Collects each table's `TableProgress` during extraction and passes it on (to print a line per table)."""

    def __init__(self, report: Any = None) -> None:
        self.tables: dict[str, TableProgress] = {}
        self._report = report

    def __call__(self, progress: TableProgress) -> None:
        self.tables[progress.table_name] = progress
        if self._report is not None:
            self._report(progress)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _in(values: Iterable[str]) -> str:
    """An SQL list of text literals, `('a', 'b')`: literals, not parameters, since DuckDB's Python client imports
    pandas (most of a second) on the first parameterized query of a process."""
    return "(" + ", ".join(quote_literal(str(v)) for v in values) + ")"


class Warehouse:
    """A connection to the warehouse, with its tables listed once (the catalog is asked once, not per table)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.tables: set[tuple[str, str]] = set()
        self.refresh()

    def refresh(self) -> None:
        self.tables = {(s, t) for s, t in self.con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables()").fetchall()}

    def has(self, table: str, schema: str = DATASET) -> bool:
        return (schema, table) in self.tables

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()


def completed_loads(wh: Warehouse) -> list[str]:
    """The warehouse's completed load ids, oldest first."""
    if not wh.has("_dlt_loads"):
        return []
    rows = wh.rows(f"SELECT DISTINCT load_id FROM {DATASET}._dlt_loads WHERE status = 0")
    return sorted((row[0] for row in rows), key=Decimal)


def warehouse_figures(wh: Warehouse, load_ids: Sequence[str]) -> tuple[dict[str, TableFigures], dict[str, int]]:
    """Per table, the files and rows of warehouse loads `load_ids` (from the manifest and the rejects), and the rows
    they wrote: the manifest's loaded rows (valid, less superseded and late) and the shared tables' rows."""
    figures: dict[str, TableFigures] = {}
    written: dict[str, int] = {}
    if not load_ids:
        return figures, written
    loads = _in(load_ids)
    if wh.has(MANIFEST_TABLE):
        for (table, new, changed, rejected, skipped, read, valid, superseded, late, rejected_rows, size,
             loaded) in wh.rows(
            "SELECT table_name, "
            "count(*) FILTER (WHERE replaced_fingerprint IS NULL AND status <> 'changed_skipped'), "
            "count(*) FILTER (WHERE replaced_fingerprint IS NOT NULL AND status <> 'changed_skipped'), "
            "count(*) FILTER (WHERE status = 'file_rejected'), count(*) FILTER (WHERE status = 'changed_skipped'), "
            "sum(row_count), sum(valid_count), sum(superseded_count), sum(coalesce(late_count, 0)), "
            "sum(reject_count), sum(coalesce(file_size, 0)), sum(valid_count - superseded_count - "
            "coalesce(late_count, 0)) FILTER (WHERE status IN ('ok', 'with_rejects')) "
            f"FROM {DATASET}.{MANIFEST_TABLE} WHERE load_id IN {loads} GROUP BY ALL"):
            figures[table] = TableFigures(files_new=new, files_changed=changed, files_rejected=rejected,
                                          files_skipped=skipped, rows_read=int(read), rows_valid=int(valid),
                                          rows_superseded=int(superseded), rows_late=int(late),
                                          rows_rejected=int(rejected_rows), bytes_read=int(size))
            if loaded:
                written[table] = int(loaded)
    if wh.has(REJECTS_TABLE):
        for table, reason, n in wh.rows(f"SELECT table_name, reason_code, count(*) FROM {DATASET}.{REJECTS_TABLE} "
                                        f"WHERE load_id IN {loads} GROUP BY ALL ORDER BY ALL"):
            figures.setdefault(table, TableFigures()).rejects[reason] = int(n)
    shared = [t for t in SHARED_TABLES if wh.has(t)]
    if shared:
        counts = " UNION ALL ".join(f"SELECT {quote_literal(t)}, count(*) FROM {DATASET}.{t} WHERE _dlt_load_id "
                                    f"IN {loads}" for t in shared)
        written.update({table: int(n) for table, n in wh.rows(counts) if n})
    return figures, written


def _history(wh: Warehouse, load_ids: Sequence[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The schema changes and table resets of `load_ids`."""
    changes: list[dict[str, str]] = []
    resets: list[dict[str, str]] = []
    if not load_ids:
        return changes, resets
    loads = _in(load_ids)
    if wh.has(SCHEMA_HISTORY_TABLE):
        changes = [{"table_name": t, "column_name": c, "data_type": d} for t, c, d in wh.rows(
            f"SELECT table_name, column_name, data_type FROM {DATASET}.{SCHEMA_HISTORY_TABLE} "
            f"WHERE load_id IN {loads} ORDER BY ALL")]
    if wh.has(TABLE_RESETS_TABLE):
        resets = [{"table_name": t, "reason": r} for t, r in wh.rows(
            f"SELECT table_name, reason FROM {DATASET}.{TABLE_RESETS_TABLE} WHERE _dlt_load_id IN {loads} "
            "ORDER BY ALL")]
    return changes, resets


def lake_figures(lake: LakeRoot, lake_load_id: str | None, warehouse_load_ids: Sequence[str],
                 tables: Iterable[str]) -> dict[str, SinkFigures]:
    """Per table, the change log files of `lake_load_id` (and their rows) and the Delta version holding one of
    `warehouse_load_ids`."""
    out: dict[str, SinkFigures] = {}
    for table in tables:
        figures = SinkFigures()
        if lake_load_id is not None:
            names = [n for n in list_lake_files(lake, f"{CHANGE_LOG}/{table}", ".parquet")
                     if n.startswith(f"{lake_load_id}.")]
            figures.change_log_files = len(names)
            for name in names:
                with open_lake_file(lake, f"{CHANGE_LOG}/{table}/{name}") as handle:
                    figures.change_log_rows += pq.ParquetFile(handle).metadata.num_rows
        if warehouse_load_ids:
            figures.delta_version = delta_version_of(lake, table, warehouse_load_ids)
        if figures.change_log_files or figures.delta_version is not None:
            out[table] = figures
    return out


def delta_version_of(lake: LakeRoot, table: str, load_ids: Sequence[str]) -> int | None:
    """The newest version of the Delta table `table` whose commit holds one of the warehouse loads `load_ids` (its
    `DELTA_LOAD_KEY` metadata), read from the newest commits of its log; None when none does."""
    wanted = set(load_ids)
    oldest = min((Decimal(x) for x in load_ids), default=Decimal(0))
    names = [n for n in list_lake_files(lake, f"{DELTA}/{table}/_delta_log", ".json") if n[:-5].isdigit()]
    for name in reversed(names[-DELTA_SCAN_COMMITS:]):
        data = read_lake_file(lake, f"{DELTA}/{table}/_delta_log/{name}") or b""
        for line in data.splitlines():
            if b'"commitInfo"' not in line:
                continue
            committed = json.loads(line)["commitInfo"].get(DELTA_LOAD_KEY)
            if committed in wanted:
                return int(name[:-5])
            if committed is not None and Decimal(committed) < oldest:
                return None
    return None


def audit_results(wh: Warehouse, ids: Sequence[str]) -> list[AuditResult]:
    """The audits of a run from `bronze.audit_results`, matched by run id or load id; none when the table does not
    exist (no audits)."""
    if not ids or not wh.has(AUDIT_RESULTS_TABLE):
        return []
    columns = {row[0] for row in wh.rows(
        f"SELECT column_name FROM duckdb_columns() WHERE schema_name = {quote_literal(DATASET)} AND "
        f"table_name = {quote_literal(AUDIT_RESULTS_TABLE)}")}
    keys = [c for c in ("run_id", "load_id") if c in columns]
    if not keys:
        return []
    where = " OR ".join(f"CAST({key} AS VARCHAR) IN {_in(ids)}" for key in keys)
    optional = ", ".join(f"CAST({c} AS VARCHAR)" if c in columns else "NULL" for c in ("severity", "load_id", "outcome"))
    rows = wh.rows(f"SELECT table_name, audit, CAST(expected AS VARCHAR), CAST(observed AS VARCHAR), passed, "
                   f"{optional} FROM {DATASET}.{AUDIT_RESULTS_TABLE} WHERE {where} ORDER BY passed, table_name, audit")
    return [AuditResult(t, a, e, o, bool(p), severity or "error", load_id, outcome)
            for t, a, e, o, p, severity, load_id, outcome in rows]


def _rejects_csv(lake: LakeRoot, figures: Mapping[str, TableFigures], load_ids: Sequence[str]) -> list[str]:
    """The rejects CSV files of `load_ids` that exist, relative to the lake."""
    found = []
    for table in sorted(name for name, f in figures.items() if f.rejects):
        names = set(list_lake_files(lake, f"_rejects/{table}", ".csv"))
        found += [f"_rejects/{table}/{load}.csv" for load in load_ids if f"{load}.csv" in names]
    return found


def build_record(wh: Warehouse, lake: LakeRoot, *, run_id: str, recorded: bool, status: str,
                 warehouse_load_ids: Sequence[str], lake_load_id: str | None,
                 tables: Iterable[str] = (), delta: bool = True) -> RunRecord:
    """A record of warehouse loads `warehouse_load_ids` (and lake load `lake_load_id`) from what the sinks hold;
    without `delta`, the Delta versions are left for `add_delta_versions`."""
    loads = sorted(warehouse_load_ids, key=Decimal)
    figures, written = warehouse_figures(wh, loads)
    for table in tables:
        figures.setdefault(table, TableFigures())
    sinks = lake_figures(lake, lake_load_id, loads if delta else [], sorted({*figures, *SHARED_TABLES})) \
        if loads or lake_load_id else {}
    for table, rows in written.items():
        sinks.setdefault(table, SinkFigures()).duckdb_rows = rows
    changes, resets = _history(wh, loads)
    return RunRecord(run_id=run_id, recorded=recorded, status=status, loads=loads,
                     warehouse_load_id=loads[0] if loads else None, lake_load_id=lake_load_id,
                     tables=dict(sorted(figures.items())), sinks=dict(sorted(sinks.items())),
                     schema_changes=changes, table_resets=resets,
                     rejects_csv=_rejects_csv(lake, figures, loads))


def derive_record(wh: Warehouse, lake: LakeRoot, load_id: str, lake_loads: Mapping[str, str]) -> RunRecord:
    """The record of a completed warehouse load that no run recorded, from the sinks alone; `lake_loads` maps
    warehouse loads to the change log load that imported them."""
    record = build_record(wh, lake, run_id=load_id, recorded=False, status=STATUS_LOADED,
                          warehouse_load_ids=[load_id], lake_load_id=lake_loads.get(load_id))
    found = wh.rows(f"SELECT min(inserted_at) FROM {DATASET}._dlt_loads WHERE load_id = {quote_literal(load_id)}")
    record.finished_at = _iso(found[0][0]) if found and found[0][0] else None
    record.started_at = _iso(datetime.fromtimestamp(float(load_id), UTC))
    record.ingestion_ts = _ingestion_ts(wh, load_id)
    known = _known_files(wh, load_id)
    for table, figures in record.tables.items():
        figures.files_unchanged = known.get(table, 0)
    return record


def _ingestion_ts(wh: Warehouse, load_id: str) -> str | None:
    for table, column in ((MANIFEST_TABLE, "processed_at"), (REJECTS_TABLE, "ingestion_ts")):
        if wh.has(table):
            found = wh.rows(f"SELECT min({column}) FROM {DATASET}.{table} WHERE load_id = {quote_literal(load_id)}")
            if found and found[0][0]:
                return _iso(found[0][0])
    return None


def _known_files(wh: Warehouse, load_id: str) -> dict[str, int]:
    """Per table, the files recorded by earlier loads and not read again by `load_id`: what that load found
    unchanged, as far as the manifest tells (it does not know files since deleted from the raw root)."""
    if not wh.has(MANIFEST_TABLE):
        return {}
    load = quote_literal(load_id)
    rows = wh.rows(
        f"SELECT table_name, count(DISTINCT src_path) FROM {DATASET}.{MANIFEST_TABLE} AS m "
        f"WHERE {load_id_order('load_id')} < {load_id_order(load)} AND NOT EXISTS (SELECT 1 FROM "
        f"{DATASET}.{MANIFEST_TABLE} AS n WHERE n.load_id = {load} AND n.src_path = m.src_path) GROUP BY ALL")
    return {table: int(n) for table, n in rows}


def lake_imports(lake: LakeRoot) -> dict[str, str]:
    """Warehouse load -> the change log load that imported it, from the change log's `change_log_imports`."""
    folder = f"{CHANGE_LOG}/change_log_imports"
    out: dict[str, str] = {}
    for name in list_lake_files(lake, folder, ".parquet"):
        lake_load = ".".join(name.split(".")[:2])  # change log files are named `<lake load id>.<file id>.parquet`
        with open_lake_file(lake, f"{folder}/{name}") as handle:
            loads = pq.read_table(handle, columns=["warehouse_load_id"]).column(0).to_pylist()
        for warehouse_load in loads:
            out.setdefault(warehouse_load, lake_load)
    return out


RUNS_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.{RUNS_TABLE} (run_id VARCHAR NOT NULL, status VARCHAR NOT NULL, "
    "started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, ingestion_ts TIMESTAMPTZ, warehouse_load_id VARCHAR, "
    "lake_load_id VARCHAR, newest_load VARCHAR, record VARCHAR NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.{RUN_TABLES_TABLE} (run_id VARCHAR NOT NULL, table_name VARCHAR NOT "
    "NULL, files_new BIGINT, files_changed BIGINT, files_unchanged BIGINT, files_rejected BIGINT, files_skipped "
    "BIGINT, rows_read BIGINT, rows_valid BIGINT, rows_superseded BIGINT, rows_late BIGINT, rows_rejected BIGINT, "
    "bytes_read BIGINT, duckdb_rows BIGINT, change_log_files BIGINT, delta_version BIGINT)",
)
"""The record (`record`: its JSON text) and its figures per table, for SQL; `newest_load` is the newest warehouse
load of the run. One row per run id (and table), kept so by `store_record`; no key index, which would cost more to
keep than the tables are worth."""


def _sql(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool | int):
        return str(int(value))
    return quote_literal(str(value))


def store_record(wh: Warehouse, lake: LakeRoot, record: RunRecord) -> None:
    """Keep `record` in the warehouse (replacing an earlier one of the same run) and in the lake."""
    text = json.dumps(record.to_json(), separators=(",", ":"))
    if not wh.has(RUNS_TABLE, META_SCHEMA) or not wh.has(RUN_TABLES_TABLE, META_SCHEMA):
        for statement in RUNS_DDL:
            wh.con.execute(statement)
        wh.refresh()
    loads = record.recorded_loads()
    values = [record.run_id, record.status, record.started_at, record.finished_at, record.ingestion_ts,
              record.warehouse_load_id, record.lake_load_id, loads[-1] if loads else None, text]
    rows = [[record.run_id, table, f.files_new, f.files_changed, f.files_unchanged, f.files_rejected,
             f.files_skipped, f.rows_read, f.rows_valid, f.rows_superseded, f.rows_late, f.rows_rejected,
             f.bytes_read, sink.duckdb_rows, sink.change_log_files, sink.delta_version]
            for table, f in record.tables.items() for sink in [record.sinks.get(table, SinkFigures())]]
    run = quote_literal(record.run_id)
    statements = [f"DELETE FROM {META_SCHEMA}.{RUN_TABLES_TABLE} WHERE run_id = {run}",
                  f"DELETE FROM {META_SCHEMA}.{RUNS_TABLE} WHERE run_id = {run}",
                  f"INSERT INTO {META_SCHEMA}.{RUNS_TABLE} VALUES ({', '.join(_sql(v) for v in values)})"]
    if rows:
        statements.append(f"INSERT INTO {META_SCHEMA}.{RUN_TABLES_TABLE} VALUES " +
                          ", ".join(f"({', '.join(_sql(v) for v in row)})" for row in rows))
    wh.con.execute("BEGIN TRANSACTION; " + "; ".join(statements) + "; COMMIT")
    write_lake_file(lake, f"{RUNS_FOLDER}/{record.run_id}.json", text.encode())


def stored_records(wh: Warehouse | None, lake: LakeRoot) -> dict[str, RunRecord]:
    """Every run record, by run id: the warehouse's, and the lake's that the warehouse lacks (a warehouse restored
    from its lake, or one busy with a run)."""
    records: dict[str, RunRecord] = {}
    if wh is not None and wh.has(RUNS_TABLE, META_SCHEMA):
        for run_id, text in wh.rows(f"SELECT run_id, record FROM {META_SCHEMA}.{RUNS_TABLE}"):
            records[run_id] = RunRecord.from_json(json.loads(text))
    for name in list_lake_files(lake, RUNS_FOLDER, ".json"):
        run_id = name.removesuffix(".json")
        if run_id not in records:
            data = read_lake_file(lake, f"{RUNS_FOLDER}/{name}")
            if data:
                records[run_id] = RunRecord.from_json(json.loads(data))
    return records


def newest_recorded_load(wh: Warehouse) -> str | None:
    """The newest warehouse load of any stored run record (None before the first)."""
    if not wh.has(RUNS_TABLE, META_SCHEMA):
        return None
    found = wh.rows(f"SELECT newest_load FROM {META_SCHEMA}.{RUNS_TABLE} WHERE newest_load IS NOT NULL "
                    f"ORDER BY {load_id_order('newest_load')} DESC LIMIT 1")
    return found[0][0] if found else None


def add_delta_versions(record: RunRecord, lake: LakeRoot) -> None:
    """Add the Delta version holding the record's warehouse loads to each table that has one."""
    loads = record.all_loads()
    if not loads:
        return
    for table in sorted({*record.tables, *record.sinks, *SHARED_TABLES}):
        version = delta_version_of(lake, table, loads)
        if version is not None:
            record.sinks.setdefault(table, SinkFigures()).delta_version = version
    record.sinks = dict(sorted(record.sinks.items()))


def draft_run(wh: Warehouse, lake: LakeRoot, *, started: datetime, tables: Sequence[str],
              lake_load_id: str | None, failed: bool = False) -> RunRecord:
    """The record of the run that started at `started`, as far as the warehouse and the change log tell: its own
    completed loads (dlt's load ids are the time their extract began), the figures of those loads, and the earlier
    loads no run recorded. `complete_run` adds the rest."""
    loads = completed_loads(wh)
    since = Decimal(str(started.timestamp()))
    own = [load for load in loads if Decimal(load) >= since]
    previous = newest_recorded_load(wh)
    record = build_record(wh, lake, run_id=run_id_of(started), recorded=True,
                          status=STATUS_FAILED if failed else STATUS_OK, warehouse_load_ids=own,
                          lake_load_id=lake_load_id, tables=tables, delta=False)
    record.earlier_loads = [load for load in loads if Decimal(load) < since and previous is not None
                            and Decimal(load) > Decimal(previous)]
    record.started_at = record.ingestion_ts = _iso(started)
    return record


def complete_run(record: RunRecord, lake: LakeRoot, result: RunResult | None, *, clock: StepClock,
                 progress: ProgressLog, error: BaseException | None = None,
                 staged: tuple[dict[str, TableFigures], dict[str, int]] | None = None) -> RunRecord:
    """Add to a drafted record what only the run knows (its `result`, or the `error` it failed with) and the Delta
    versions of its loads; the time since the previous step is its `record` step. `staged` are the figures of a
    write-audit-publish load that was not published (`warehouse_figures` of the staged copy of the warehouse): its
    tables' figures, since the warehouse holds none of them."""
    staged_tables, staged_rows = staged if staged is not None else ({}, {})
    record.tables.update(staged_tables)
    for table, item in progress.tables.items():
        record.tables.setdefault(table, TableFigures()).files_unchanged = item.files_unchanged
    if error is not None:
        record.status = STATUS_FAILED
        record.errors = [redact(f"{type(error).__name__}: {str(error).strip()[:2000]}")]
    if result is not None:
        own = set(record.loads)
        if result.warehouse_load_id not in own:
            record.warehouse_load_id = None
        record.ingestion_ts = _iso(result.ingestion_ts)
        record.pipelines = {"warehouse": result.pipelines[0], "lake": result.pipelines[1]}
        record.notes, record.warnings = [redact(n) for n in result.notes], [redact(w) for w in result.warnings]
        record.errors = [redact(str(f)) for f in result.delta_failures]
        record.status = STATUS_INCOMPLETE if result.delta_failures else STATUS_OK
        record.exit_code = result.exit_code
        if result.wap is not None:
            record.wap = WapFigures(result.wap.status, result.wap.load_id,
                                    str(result.wap.staging) if result.wap.staging else None, dict(staged_rows))
            record.status = {OUTCOME_FAILED: STATUS_AUDIT_FAILED, OUTCOME_HELD: STATUS_HELD}.get(result.wap.status,
                                                                                                 record.status)
        for mirrored in result.mirrored:
            if mirrored.load_id in own:
                figures = record.sinks.setdefault(mirrored.table_name, SinkFigures())
                figures.delta_rows = (figures.delta_rows or 0) + mirrored.rows
    add_delta_versions(record, lake)
    clock.lap("record")
    record.steps = dict(clock.steps)
    record.finished_at = _iso(datetime.now(UTC))
    return record
