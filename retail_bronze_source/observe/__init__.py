"""See every run: what it did, kept where it can be read any time later, shown as a page and measured.

- `record`: the run record, built from what the sinks hold and kept in the warehouse (`_retail_bronze.runs`) and the
  lake (`<lake>/_retail_bronze/runs/<run id>.json`);
- `load_info`: the records read back (loads no run recorded are derived from the sinks), as text or JSON;
- `report`: a static HTML page per run and an index of runs (`<lake>/_retail_bronze/report/`);
- `metrics`: Prometheus metrics as a node-exporter textfile and a Pushgateway push (`[retail_bronze.metrics]`);
- `lake`: the one door of these files to the lake.

`RunObserver` is what `run_bronze` calls: step laps, per-table progress, and at the end the record, the report and
the metrics; a run that fails after its sinks were opened is recorded with its error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ..redact import redact
from ..resources import TableProgress
from ..sinks.identity import pipeline_names
from .load_info import format_progress, format_record, format_records, load_info
from .metrics import MetricsConfig, publish_metrics, stored_successes
from .record import (
    ProgressLog,
    RunRecord,
    StepClock,
    TableFigures,
    Warehouse,
    audit_results,
    complete_run,
    draft_run,
    store_record,
    warehouse_figures,
)
from .report import ReportConfig, recent_records, write_report

if TYPE_CHECKING:
    from ..run import RunResult
    from ..sinks import Layout

ProgressReport = Callable[[TableProgress], None]


@dataclass
class _Draft:
    """What the observer reads from the warehouse before the run ends (see `RunObserver.prepare`)."""

    record: RunRecord
    recent: list[RunRecord]
    successes: dict[str, float]


class RunObserver:
    """Watches one run: `lap` closes a step, `progress` receives each table's extraction, `prepare` reads the
    run's figures once the warehouse is complete, `finish` records."""

    def __init__(self, layout: Layout, tables: Sequence[str], report: ProgressReport | None = None) -> None:
        self.layout = layout
        self.tables = list(tables)
        self.started = datetime.now(UTC)
        self.clock = StepClock()
        self.progress = ProgressLog(report)
        self.report_config = ReportConfig.configured()
        self.metrics_config = MetricsConfig.configured()
        self._opened = False
        self._draft: _Draft | None = None
        self._staged: tuple[dict[str, TableFigures], dict[str, int]] | None = None
        self._connection: duckdb.DuckDBPyConnection | None = None

    def lap(self, step: str) -> None:
        self.clock.lap(step)
        self._opened = True

    def staged(self, warehouse: Path, load_id: str) -> None:
        """Read the figures of a write-audit-publish load that is not being published from its staged copy of the
        warehouse (`warehouse`), before the copy is held or dropped: the warehouse readers see never holds them."""
        with duckdb.connect(str(warehouse), read_only=True) as con:
            self._staged = warehouse_figures(Warehouse(con), [load_id])

    def prepare(self, lake_load_id: str | None, *, failed: bool = False) -> None:
        """Read the run's figures from the warehouse and the change log: the run calls this as soon as both are
        complete, beside the Delta mirror (which does not touch the warehouse), so that `finish` has only the Delta
        versions to read and the record to write.

        The warehouse connection opened here stays open until `finish` (opening one costs more than the rest of
        the record): in between, the run must not open the warehouse in this process with other settings."""
        if self._connection is None:
            self._connection = duckdb.connect(str(self.layout.warehouse))
        wh = Warehouse(self._connection)
        record = draft_run(wh, self.layout.lake_store, started=self.started, tables=self.tables,
                           lake_load_id=lake_load_id, failed=failed)
        recent = recent_records(wh, self.report_config.runs) if self.report_config.enabled else []
        successes = stored_successes(wh) if self.metrics_config.enabled else {}
        self._draft = _Draft(record, recent, successes)

    def finish(self, result: RunResult) -> RunRecord:
        """Record the run, write its report page and publish its metrics; return the record."""
        try:
            if self._draft is None:
                self.prepare(result.lake_load_id)
            return self._publish(result, None)
        finally:
            self._release()

    @contextmanager
    def recording_failure(self) -> Iterator[None]:
        """Record a run that raises once its sinks are open (its first step done), then let the error go on; a
        failure to record is added to the error's notes."""
        try:
            yield
        except Exception as error:
            if self._opened:
                try:
                    self.prepare(None, failed=True)
                    self._publish(None, error)
                except Exception as failure:  # the run's own error is the one to raise; this one is attached to it
                    error.add_note(f"the run could not be recorded either: {type(failure).__name__}: {failure}")
            self._release()
            raise

    def _release(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _publish(self, result: RunResult | None, error: BaseException | None) -> RunRecord:
        assert self._draft is not None
        draft = self._draft
        record = complete_run(draft.record, self.layout.lake_store, result, clock=self.clock, progress=self.progress,
                              error=error, staged=self._staged)
        if not record.pipelines:
            names = pipeline_names(self.layout.warehouse, self.layout.lake_store)
            record.pipelines = {"warehouse": names[0], "lake": names[1]}
        assert self._connection is not None
        try:
            wh = Warehouse(self._connection)
            record.audits = audit_results(wh, [record.run_id, *record.recorded_loads()])
            write_report(self.layout.lake_store, record, draft.recent, self.report_config)
            record.warnings += [redact(w) for w in publish_metrics(record, draft.successes, self.metrics_config)]
            store_record(wh, self.layout.lake_store, record)
            # The record is in the write-ahead log, durable; the next run's load checkpoints it with its own rows.
            self._connection.execute("PRAGMA disable_checkpoint_on_shutdown")
        finally:
            self._release()
        if result is not None:
            result.warnings += [w for w in record.warnings if w not in result.warnings]
        return record


__all__ = ["ProgressReport", "RunObserver", "RunRecord", "format_progress", "format_record", "format_records",
           "load_info"]
