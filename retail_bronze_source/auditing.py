"""Running the declared audits (`audits`) of a write-audit-publish run: DuckDB SQL on the staged warehouse.

A table's batch is its rows of the staged warehouse load (`_dlt_load_id`) and the manifest rows of that load (files,
rows read, valid, rejected). "Published" is the warehouse readers see, attached read-only; the staged warehouse holds
the published rows with the batch merged in, so a referenced key delivered in the same run counts. History (recent
runs of a table) is read from the published manifest only: a batch that was never published never becomes the norm.

Every check gives one `AuditResult`; a check that cannot run (a `where` condition DuckDB refuses, a referenced table
that does not exist) is a failed result saying why, never a pass. A table without new files in the run is not
audited, except for the required files of its `Completeness` audit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dlt
import duckdb

from . import settings
from .audits import (
    AcceptedValues,
    Anomaly,
    Audit,
    Completeness,
    Freshness,
    References,
    SchemaAudit,
    ValueRange,
)
from .helpers import load_id_order, quote_ident, quote_literal
from .outputs import LOAD_ID, MANIFEST_TABLE, RESCUED, dlt_columns, table_schema
from .registry import TableSpec
from .sinks import DATASET
from .sinks.warehouse import WarehouseTypeMapper

PUBLISHED = "published"
"""The alias of the published warehouse, attached read-only to the staged one."""
MAD_SCALE = 1.4826
"""Makes the median absolute deviation estimate a normal distribution's standard deviation."""
LOADED_STATUSES = ("ok", "with_rejects")
"""Manifest statuses of a file version whose rows were read and validated (a required file must have one)."""


@dataclass(frozen=True)
class AuditResult:
    """The outcome of one check of one table's batch."""

    table_name: str
    audit: str
    kind: str
    severity: str
    expected: str
    observed: str
    passed: bool
    detail: str = ""

    @property
    def blocks(self) -> bool:
        """Whether this result holds the batch back (a failed check of severity `error`)."""
        return not self.passed and self.severity == "error"

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.table_name} {self.audit}: expected {self.expected}, observed {self.observed}{detail}"


def run_audits(staged: Path, published: Path, load_id: str, specs: Sequence[TableSpec],
               ingestion_ts: datetime) -> list[AuditResult]:
    """The results of every audit of `specs` on the batch of warehouse load `load_id` in the staged warehouse file
    `staged`, against the published warehouse file `published`."""
    with duckdb.connect(str(staged), read_only=True) as con:
        con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        con.execute(f"ATTACH {quote_literal(str(published))} AS {PUBLISHED} (READ_ONLY)")
        try:
            batch = _Batch(con, load_id, ingestion_ts)
            results: list[AuditResult] = []
            for spec in specs:
                delivered = spec.name in batch.tables
                for audit in spec.audits:
                    if delivered or (isinstance(audit, Completeness) and audit.required_files):
                        results += _checked(batch, spec, audit, delivered)
            return results
        finally:
            con.execute(f"DETACH {PUBLISHED}")


def _checked(batch: _Batch, spec: TableSpec, audit: Audit, delivered: bool) -> list[AuditResult]:
    """The results of one audit; an audit that cannot run is one failed result naming the error."""
    check = _CHECKS[type(audit)]
    try:
        return check(batch, spec, audit, delivered)
    except duckdb.Error as error:
        message = " ".join(str(error).split())[:500]
        return [_result(spec, audit, "", "the audit to run", "an error", False, f"the audit could not run: {message}")]


class _Batch:
    """One run's batch in the staged warehouse, and what the published warehouse holds."""

    def __init__(self, con: duckdb.DuckDBPyConnection, load_id: str, ingestion_ts: datetime) -> None:
        self.con = con
        self.load_id = load_id
        self.ingestion_ts = ingestion_ts
        row = con.execute("SELECT current_database()").fetchone()
        self.staged = str(row[0]) if row else ""
        self.tables = {r[0] for r in self.rows(
            f"SELECT DISTINCT table_name FROM {self.table(MANIFEST_TABLE)} WHERE load_id = ?", [load_id])
        } if self.exists(MANIFEST_TABLE) else set()

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
        found = self.con.execute(sql, params or []).fetchone()
        assert found is not None
        return found

    def table(self, name: str, catalog: str | None = None) -> str:
        return f"{quote_ident(catalog or self.staged)}.{DATASET}.{quote_ident(name)}"

    def exists(self, name: str, catalog: str | None = None) -> bool:
        found = self.one("SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? AND "
                         "table_name = ?", [catalog or self.staged, DATASET, name])
        return bool(found[0])

    def columns(self, name: str, catalog: str | None = None) -> dict[str, str]:
        """Column name -> DuckDB type of a table (empty when it does not exist)."""
        return dict(self.rows("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND "
                              "schema_name = ? AND table_name = ? ORDER BY column_index",
                              [catalog or self.staged, DATASET, name]))

    def batch_rows(self, name: str, where: str | None = None) -> str | None:
        """The batch's rows of table `name` as a relation (where `where` holds), None when the table does not exist
        (a first delivery without one valid row)."""
        if not self.exists(name):
            return None
        condition = f" AND ({where})" if where else ""
        return f"(SELECT * FROM {self.table(name)} WHERE {LOAD_ID} = {quote_literal(self.load_id)}{condition})"

    def history(self, table: str, runs: int) -> str | None:
        """Per published run that delivered `table` (its newest `runs`): files, rows read, valid and rejected."""
        if not self.exists(MANIFEST_TABLE, PUBLISHED):
            return None
        return (f"(SELECT load_id, count(*) AS files, sum(row_count) AS read, sum(valid_count) AS valid, "
                f"sum(reject_count) AS rejected FROM {self.table(MANIFEST_TABLE, PUBLISHED)} "
                f"WHERE table_name = {quote_literal(table)} AND load_id IS NOT NULL AND status <> 'changed_skipped' "
                f"GROUP BY load_id ORDER BY {load_id_order('load_id')} DESC LIMIT {int(runs)})")

    def counts(self, table: str) -> tuple[int, int, int, int]:
        """The batch's files, rows read, valid and rejected rows of `table` (from the staged manifest)."""
        files, read, valid, rejected = self.one(
            f"SELECT count(*), coalesce(sum(row_count), 0), coalesce(sum(valid_count), 0), "
            f"coalesce(sum(reject_count), 0) FROM {self.table(MANIFEST_TABLE)} WHERE load_id = ? AND table_name = ? "
            "AND status <> 'changed_skipped'", [self.load_id, table])
        return int(files), int(read), int(valid), int(rejected)


def _result(spec: TableSpec, audit: Audit, aspect: str, expected: str, observed: str, passed: bool,
            detail: str = "") -> AuditResult:
    name = f"{audit.audit_name}.{aspect}" if aspect else audit.audit_name
    return AuditResult(spec.name, name, audit.kind, audit.severity, expected, observed, passed, detail)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _schema(batch: _Batch, spec: TableSpec, audit: SchemaAudit, delivered: bool) -> list[AuditResult]:
    staged = batch.columns(spec.name)
    if not staged:
        return [_result(spec, audit, "", "the contract's columns", "no rows loaded", True,
                        "the batch loaded no row, so the table has no columns to check")]
    expected = _contract_types(spec)
    published = batch.columns(spec.name, PUBLISHED)
    missing = [c for c in expected if c not in staged]
    added = [c for c in staged if c not in expected and c not in published and not c.startswith("_dlt")]
    wrong = [f"{c} {staged[c]} (expected {expected[c]})" for c in expected if c in staged and staged[c] != expected[c]]
    wrong += [f"{c} {staged[c]} (published {published[c]})" for c in published
              if c not in expected and c in staged and staged[c] != published[c]]
    problems = [*([f"missing {', '.join(missing)}"] if missing else []),
                *([f"added {', '.join(added)}"] if added else [])]
    results = [
        _result(spec, audit, "columns",
                f"the contract's {len(expected)} columns" + ("" if audit.allow_added_columns else ", none added"),
                "; ".join(problems) or f"{len([c for c in staged if not c.startswith('_dlt')])} columns as declared",
                not missing and (audit.allow_added_columns or not added)),
        _result(spec, audit, "types", "the contract's types, published types kept",
                "; ".join(wrong) or "as declared", not wrong),
    ]
    if audit.max_rescued_share is not None:
        rows = batch.batch_rows(spec.name)
        total, rescued = batch.one(f"SELECT count(*), count({quote_ident(RESCUED)}) FROM {rows}") if rows else (0, 0)
        share = _share(rescued, total)
        results.append(_result(spec, audit, "rescued", f"<= {_pct(audit.max_rescued_share)} of rows with columns "
                               "outside the contract", f"{_pct(share)} ({rescued} of {total} rows)",
                               share <= audit.max_rescued_share))
    return results


def _contract_types(spec: TableSpec) -> dict[str, str]:
    """Column -> the DuckDB type the warehouse gives each column of the table's contract (and derived and audit
    columns), as DuckDB names it."""
    mapper = WarehouseTypeMapper(dlt.destinations.duckdb().capabilities())
    columns = dlt_columns(table_schema(spec))
    table: Any = {"name": spec.name, "columns": columns}
    return {name: re.sub(r"\s+USING COMPRESSION.*$", "", mapper.to_destination_type(column, table))
            for name, column in columns.items()}


def _completeness(batch: _Batch, spec: TableSpec, audit: Completeness, delivered: bool) -> list[AuditResult]:
    results = []
    if delivered and (audit.min_rows_ratio is not None or audit.min_files_ratio is not None):
        files, _, valid, _ = batch.counts(spec.name)
        history = batch.history(spec.name, audit.runs)
        runs, median_files, median_valid = batch.one(
            f"SELECT count(*), median(files), median(valid) FROM {history}") if history else (0, None, None)
        for aspect, ratio, value, median in (("rows", audit.min_rows_ratio, valid, median_valid),
                                             ("files", audit.min_files_ratio, files, median_files)):
            if ratio is None:
                continue
            if runs < audit.min_runs:
                results.append(_result(spec, audit, aspect, f">= {ratio:g} x the median of {audit.min_runs}+ runs",
                                       f"{value} ({runs} earlier run(s): not judged)", True))
                continue
            floor = ratio * float(median)
            results.append(_result(spec, audit, aspect,
                                   f">= {floor:g} ({ratio:g} x median {float(median):g} of {runs} runs)", str(value),
                                   value >= floor))
    for pattern in audit.required_files:
        found = batch.one(
            f"SELECT count(*) FROM (SELECT src_path, status, row_number() OVER (PARTITION BY src_path ORDER BY "
            f"{load_id_order('load_id')} DESC NULLS LAST, processed_at DESC) AS newest "
            f"FROM {batch.table(MANIFEST_TABLE)} WHERE table_name = ?) WHERE newest = 1 AND src_path GLOB ? AND "
            f"status IN ({', '.join(quote_literal(s) for s in LOADED_STATUSES)})", [spec.name, pattern]
        )[0] if batch.exists(MANIFEST_TABLE) else 0
        results.append(_result(spec, audit, f"required:{pattern}", "a loaded file", f"{found} file(s)", found > 0))
    return results


def _range(batch: _Batch, spec: TableSpec, audit: ValueRange, delivered: bool) -> list[AuditResult]:
    bounds = f"[{audit.min if audit.min is not None else '-inf'}, {audit.max if audit.max is not None else 'inf'}]"
    expected = f"<= {_pct(audit.max_failing_share)} of values outside {bounds}"
    rows = batch.batch_rows(spec.name, audit.where)
    types = batch.columns(spec.name)
    if rows is None:
        return [_result(spec, audit, "", expected, "no rows", True)]
    if audit.column not in types:
        return [_result(spec, audit, "", expected, "no such column", False,
                        f"the table has no column {audit.column!r}")]
    column, type_ = quote_ident(audit.column), types[audit.column]
    outside = [f"{column} {op} CAST({quote_literal(bound)} AS {type_})"
               for op, bound in (("<", audit.min), (">", audit.max)) if bound is not None]
    total, failing = batch.one(f"SELECT count({column}), count(*) FILTER (WHERE {' OR '.join(outside)}) FROM {rows}")
    share = _share(failing, total)
    return [_result(spec, audit, "", expected, f"{_pct(share)} ({failing} of {total} values)",
                    share <= audit.max_failing_share)]


def _accepted(batch: _Batch, spec: TableSpec, audit: AcceptedValues, delivered: bool) -> list[AuditResult]:
    expected = f"<= {_pct(audit.max_failing_share)} of values outside {len(audit.values)} accepted values"
    rows = batch.batch_rows(spec.name, audit.where)
    if rows is None:
        return [_result(spec, audit, "", expected, "no rows", True)]
    if audit.column not in batch.columns(spec.name):
        return [_result(spec, audit, "", expected, "no such column", False,
                        f"the table has no column {audit.column!r}")]
    column = quote_ident(audit.column)
    accepted = ", ".join(quote_literal(v) for v in audit.values)
    total, failing, examples = batch.one(
        f"SELECT count({column}), count(*) FILTER (WHERE CAST({column} AS VARCHAR) NOT IN ({accepted})), "
        f"list(DISTINCT CAST({column} AS VARCHAR) ORDER BY CAST({column} AS VARCHAR)) FILTER "
        f"(WHERE CAST({column} AS VARCHAR) NOT IN ({accepted})) FROM {rows}")
    share = _share(failing, total)
    detail = f"e.g. {', '.join(repr(e) for e in (examples or [])[:5])}" if failing else ""
    return [_result(spec, audit, "", expected, f"{_pct(share)} ({failing} of {total} values)",
                    share <= audit.max_failing_share, detail)]


def _references(batch: _Batch, spec: TableSpec, audit: References, delivered: bool) -> list[AuditResult]:
    target = f"{audit.table}({', '.join(audit.target_columns)})"
    expected = f"<= {_pct(audit.max_orphan_share)} of rows without a key in {target}"
    rows = batch.batch_rows(spec.name)
    if rows is None:
        return [_result(spec, audit, "", expected, "no rows", True)]
    present = batch.columns(audit.table)
    missing = [c for c in audit.target_columns if c not in present]
    if missing:
        why = f"{audit.table} is not loaded" if not present else f"{audit.table} has no column {', '.join(missing)}"
        return [_result(spec, audit, "", expected, "no such table or column", False, why)]
    same = " AND ".join(f"t.{quote_ident(target)} = b.{quote_ident(column)}"
                        for column, target in zip(audit.columns, audit.target_columns, strict=True))
    complete = " AND ".join(f"b.{quote_ident(c)} IS NOT NULL" for c in audit.columns)
    total, orphans = batch.one(
        f"SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {batch.table(audit.table)} AS t "
        f"WHERE {same})) FROM {rows} AS b WHERE {complete}")
    share = _share(orphans, total)
    return [_result(spec, audit, "", expected, f"{_pct(share)} ({orphans} of {total} rows)",
                    share <= audit.max_orphan_share)]


def _anomaly(batch: _Batch, spec: TableSpec, audit: Anomaly, delivered: bool) -> list[AuditResult]:
    _, read, valid, rejected = batch.counts(spec.name)
    if audit.metric == "row_count":
        value: float | None = float(valid)
        metric = "valid"
    else:
        value = rejected / read if read else None
        metric = "rejected / nullif(read, 0)"
    history = batch.history(spec.name, audit.runs)
    runs, median, mad = batch.one(
        f"SELECT count(m), median(m), mad(m) FROM (SELECT CAST({metric} AS DOUBLE) AS m FROM {history})"
    ) if history else (0, None, None)
    expected = f"within {audit.max_deviation:g} robust sd of the median of the last {audit.runs} runs"
    shown = _fmt_metric(audit, value)
    if value is None:
        return [_result(spec, audit, "", expected, "no rows read", True)]
    if runs < audit.min_runs:
        return [_result(spec, audit, "", expected, f"{shown} ({runs} earlier run(s), {audit.min_runs} needed: not "
                        "judged)", True)]
    median, mad = float(median), float(mad or 0.0)
    floor = audit.spread_floor * median if audit.metric == "row_count" else audit.spread_floor
    spread = max(MAD_SCALE * mad, floor, 1.0 if audit.metric == "row_count" else 1e-9)
    deviation = abs(value - median) / spread
    return [_result(spec, audit, "", f"{expected} (median {_fmt_metric(audit, median)}, sd "
                    f"{_fmt_metric(audit, spread)}, from {runs} runs)", f"{shown} ({deviation:.1f} sd)",
                    deviation <= audit.max_deviation)]


def _fmt_metric(audit: Anomaly, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g} rows" if audit.metric == "row_count" else _pct(value)


def _freshness(batch: _Batch, spec: TableSpec, audit: Freshness, delivered: bool) -> list[AuditResult]:
    rows = batch.batch_rows(spec.name)
    column = quote_ident(audit.column)
    newest = _utc(batch.one(f"SELECT max({column}) FROM {rows}")[0]) if rows else None
    shown = newest.isoformat() if newest else "no value"
    results = []
    if audit.max_age is not None:
        age = batch.ingestion_ts - newest if newest else None
        results.append(_result(spec, audit, "age", f"newest value at most {_duration(audit.max_age)} before the run",
                               f"{shown} ({_duration(age)} before the run)" if age is not None else shown,
                               age is None or age <= audit.max_age))
    if audit.max_lag is not None:
        published = _utc(batch.one(f"SELECT max({column}) FROM {batch.table(spec.name, PUBLISHED)}")[0]) \
            if batch.exists(spec.name, PUBLISHED) and audit.column in batch.columns(spec.name, PUBLISHED) else None
        lag = published - newest if newest and published else None
        results.append(_result(spec, audit, "lag", f"newest value at most {_duration(audit.max_lag)} before the published "
                               f"newest ({published.isoformat() if published else 'nothing published'})",
                               f"{shown} ({_duration(lag)} before it)" if lag is not None else shown,
                               lag is None or lag <= audit.max_lag))
    return results


def _utc(value: Any) -> datetime | None:
    """A timestamp or date from DuckDB as an aware UTC datetime (a date at its midnight)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _duration(value: timedelta | None) -> str:
    """A duration as text: whole days as `N days`, anything else as `[-][D day[s], ]H:MM:SS`."""
    if value is None:
        return "-"
    if value < timedelta(0):
        return f"-{_duration(-value)}"
    if value.days and not value.seconds and not value.microseconds:
        return f"{value.days} day{'s' if value.days != 1 else ''}"
    return str(value)


_CHECKS: dict[type[Audit], Callable[[_Batch, TableSpec, Any, bool], list[AuditResult]]] = cast(Any, {
    SchemaAudit: _schema, Completeness: _completeness, ValueRange: _range, AcceptedValues: _accepted,
    References: _references, Anomaly: _anomaly, Freshness: _freshness,
})
