"""`load-info`: what a run did, read back any time later from the warehouse and the lake.

Runs are read from their records (`record.stored_records`: the warehouse's, then the lake's it lacks). A completed
warehouse load that no record holds (loaded before run records existed, or by a run killed before its end) is
answered from the sinks (`record.derive_record`, marked as such). Audits come from `bronze.audit_results` when that
table exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from ..sinks import Layout
from ..storage import Store
from .lake import LakeRoot, lake_store
from .record import (
    RunRecord,
    SinkFigures,
    TableFigures,
    Warehouse,
    audit_results,
    completed_loads,
    derive_record,
    lake_imports,
    stored_records,
)


class RunNotFound(LookupError):
    """No run or load has the id asked for."""


@dataclass(frozen=True)
class _Entry:
    key: Decimal
    record: RunRecord | None
    load_id: str | None


def _key(record: RunRecord) -> Decimal:
    stamp = record.started_at or record.finished_at
    return Decimal(str(datetime.fromisoformat(stamp).timestamp())) if stamp else Decimal(0)


def load_info(layout: Layout | None = None, *, warehouse: Path | str | None = None, lake: Store | Path | str | None = None,
              load_id: str | None = None, last: int | None = None) -> list[RunRecord]:
    """The records of runs, oldest first: the run or load `load_id` (a run id, a warehouse or a lake load id), else
    the `last` runs (default 1). Give a `Layout`, or the `warehouse` file and the `lake` (a `Store`, a path or a URL,
    opened with the credentials of `[destination.retail_bronze_lake]`).

    Works from the lake alone when the warehouse is missing or held by a running run (loads no record holds are
    then not derived). Raises `RunNotFound` for an unknown id."""
    warehouse = Path(warehouse) if warehouse is not None else layout.warehouse if layout is not None else None
    where = lake if lake is not None else layout.lake_store if layout is not None else None
    if warehouse is None or where is None:
        raise ValueError("load_info needs a layout, or a warehouse and a lake")
    store = lake_store(where)
    con = _open(warehouse)
    try:
        return _select(Warehouse(con) if con is not None else None, store, load_id, last)
    finally:
        if con is not None:
            con.close()


def _open(warehouse: Path) -> duckdb.DuckDBPyConnection | None:
    """The warehouse opened read-only; None when it does not exist or a run holds it (the lake answers alone)."""
    if not warehouse.exists():
        return None
    try:
        return duckdb.connect(str(warehouse), read_only=True)
    except duckdb.IOException as error:
        if "lock" not in str(error).lower():
            raise
        return None


def _select(con: Warehouse | None, lake: LakeRoot, load_id: str | None, last: int | None) -> list[RunRecord]:
    records = stored_records(con, lake)
    covered = {load for record in records.values() for load in record.recorded_loads()}
    entries = [_Entry(_key(r), r, None) for r in records.values()]
    loads = completed_loads(con) if con is not None else []
    entries += [_Entry(Decimal(load), None, load) for load in loads if load not in covered]
    entries.sort(key=lambda e: e.key)
    if load_id is not None:
        chosen = [e for e in entries if _matches(e, load_id)]
        if not chosen and con is not None:
            imported = {lake_load: warehouse_load for warehouse_load, lake_load in lake_imports(lake).items()}
            chosen = [e for e in entries if imported.get(load_id) in ({e.load_id} if e.record is None
                                                                      else set(e.record.recorded_loads()))]
        if not chosen:
            raise RunNotFound(f"no run or load {load_id!r} in this warehouse or lake")
    else:
        count = 1 if last is None else last
        chosen = entries[-count:] if count > 0 else []
    imports: dict[str, str] | None = None
    out = []
    for entry in chosen:
        if entry.record is not None:
            record = entry.record
        else:
            assert con is not None and entry.load_id is not None
            imports = lake_imports(lake) if imports is None else imports
            record = derive_record(con, lake, entry.load_id, imports)
        if con is not None:
            record.audits = audit_results(con, [record.run_id, *record.recorded_loads()])
        out.append(record)
    return out


def _matches(entry: _Entry, wanted: str) -> bool:
    if entry.record is None:
        return entry.load_id == wanted
    return wanted in (entry.record.run_id, entry.record.lake_load_id, *entry.record.recorded_loads())


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def duration(record: RunRecord) -> float | None:
    if record.started_at and record.finished_at:
        return (datetime.fromisoformat(record.finished_at) - datetime.fromisoformat(record.started_at)).total_seconds()
    return None


def format_record(record: RunRecord) -> str:
    """A run as text: its ids, files and rows per table, what each sink got, steps, audits, schema changes."""
    took = duration(record)
    source = "" if record.recorded else " (no run record: derived from the sinks)"
    exit_code = f" (exit {record.exit_code})" if record.exit_code is not None else ""
    lines = [f"run {record.run_id}: {record.shown_status}" + (f" in {_seconds(took)}" if took is not None and
                                                               record.recorded else "") + exit_code + source]
    ids = [f"ingestion_ts {record.ingestion_ts or '-'}",
           f"warehouse load {record.warehouse_load_id or '- (nothing new)'}",
           f"lake load {record.lake_load_id or '-'}"]
    lines.append("  ".join(ids))
    others = [load for load in record.loads if load != record.warehouse_load_id]
    if others:
        lines.append(f"other warehouse loads of the run: {', '.join(others)}")
    if record.earlier_loads:
        lines.append(f"completed earlier loads no run recorded (a killed run): {', '.join(record.earlier_loads)}")
    if record.wap is not None:
        lines.append(wap_text(record))
    active = {name: f for name, f in record.tables.items() if f.files_read or f.files_skipped or f.rejects}
    total = record.total()
    if not active:
        unchanged = total.files_unchanged
        lines.append(f"nothing new: {unchanged if unchanged is not None else 'no'} file(s) unchanged in "
                     f"{len(record.tables)} table(s)")
    else:
        lines += _tables_text(record)
        lines += _sinks_text(record)
    for change in record.schema_changes:
        lines.append(f"schema: added {change['table_name']}.{change['column_name']} ({change['data_type']})")
    for reset in record.table_resets:
        lines.append(f"reset: {reset['table_name']} ({reset['reason']})")
    lines.append(_audits_text(record))
    if record.steps:
        lines.append("steps: " + ", ".join(f"{name} {_seconds(s)}" for name, s in record.steps.items()))
    if record.rejects_csv:
        lines.append(f"rejects CSV: {len(record.rejects_csv)} file(s): {', '.join(record.rejects_csv)}")
    for note in record.notes:
        lines.append(f"note: {note}")
    for warning in record.warnings:
        lines.append(f"warning: {warning}")
    for error in record.errors:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _tables_text(record: RunRecord) -> list[str]:
    """A line per table: files, rows, what the warehouse and Delta got, reject records by reason."""
    header = (f"{'table':<16}{'new':>5}{'changed':>8}{'unchanged':>10}{'rejected':>9}   "
              f"{'read':>9}{'valid':>9}{'superseded':>11}{'late':>6}{'rejected':>9}   {'duckdb':>8}{'delta':>6}  "
              "reject records by reason")
    lines = [f"{'':<16}{' files ':-^32}   {' rows ':-^44}   {' written ':-^14}", header, "-" * len(header)]

    def line(name: str, f: TableFigures, duckdb_rows: int, delta: str) -> str:
        reasons = ", ".join(f"{code}={n}" for code, n in sorted(f.rejects.items())) or "-"
        return (f"{name:<16}{f.files_new:>5}{f.files_changed:>8}{_count(f.files_unchanged):>10}{f.files_rejected:>9}   "
                f"{f.rows_read:>9}{f.rows_valid:>9}{f.rows_superseded:>11}{f.rows_late:>6}{f.rows_rejected:>9}   "
                f"{duckdb_rows:>8}{delta:>6}  {reasons}")

    for name, f in sorted(record.tables.items()):
        sink = record.sinks.get(name, SinkFigures())
        lines.append(line(name, f, sink.duckdb_rows, "-" if sink.delta_version is None else f"v{sink.delta_version}"))
    total = record.total()
    total.rejects = {}
    lines.append(line("total", total, sum(record.sinks.get(n, SinkFigures()).duckdb_rows for n in record.tables),
                      "").rstrip(" -"))
    return lines


def _sinks_text(record: RunRecord) -> list[str]:
    """The change log's share of the run, and the shared tables (rejects, manifest...) written."""
    lines = []
    files = sum(s.change_log_files for s in record.sinks.values())
    if files:
        rows = sum(s.change_log_rows for s in record.sinks.values())
        lines.append(f"change log: {files} file(s), {rows} row(s) in lake load {record.lake_load_id}")
    shared = [f"{name} {s.duckdb_rows} row(s)" + (f" (delta v{s.delta_version})" if s.delta_version is not None else "")
              for name, s in sorted(record.sinks.items()) if name not in record.tables and s.duckdb_rows]
    if shared:
        lines.append(f"shared tables: {', '.join(shared)}")
    return lines


WAP_OUTCOMES = {
    "published": "published",
    "held": "audits passed; the load is held for inspection: publish it with --publish",
    "failed": "audits failed, nothing published",
    "nothing": "nothing new to stage",
}


def wap_text(record: RunRecord) -> str:
    """What a write-audit-publish run did with its staged load, and what became of that load since."""
    assert record.wap is not None
    wap = record.wap
    text = f"write-audit-publish: {WAP_OUTCOMES.get(wap.outcome, wap.outcome)}"
    if wap.load_id:
        text += f"; staged load {wap.load_id}"
    now = record.staged_outcome
    if now is not None and now != wap.outcome:
        text += f", since {now}"
    if wap.staging and now in (None, wap.outcome):
        text += f"; staging kept at {wap.staging}"
    if wap.staged_rows:
        text += "\n  staged rows (not published): " + ", ".join(f"{t} {n}" for t, n in sorted(wap.staged_rows.items()))
    return text


def _audits_text(record: RunRecord) -> str:
    if not record.audits:
        return "audits: no audits"
    failed = [a for a in record.audits if not a.passed]
    text = f"audits: {len(record.audits) - len(failed)} passed, {record.audits_failed} failed"
    if record.audit_warnings:
        text += f", {record.audit_warnings} warning(s)"
    for audit in failed:
        text += (f"\n  {'failed' if audit.blocks else 'warning'}: {audit.table_name} {audit.audit}: expected "
                 f"{audit.expected}, observed {audit.observed}")
    return text


def format_records(records: Sequence[RunRecord]) -> str:
    return "\n\n".join(format_record(r) for r in records)


def records_json(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Records as JSON values (the audits included)."""
    out = []
    for record in records:
        data = record.to_json()
        data["status"] = record.shown_status
        data["audits"] = [audit.__dict__ for audit in record.audits]
        if data.get("wap") is not None:
            data["wap"]["outcome_now"] = record.staged_outcome
        out.append(data)
    return out


def format_progress(progress: Any) -> str:
    """One progress line: a table whose extraction is done."""
    return (f"extracted {progress.table_name}: {progress.files_read} file(s) read, {progress.files_unchanged} "
            f"unchanged, {progress.rows_emitted} row(s) to load ({progress.seconds:.1f} s)")
