"""Prometheus metrics of each run, exposed the two standard ways of batch jobs: a node-exporter textfile
(`<textfile_dir>/<pipeline>.prom`, replaced atomically) and a push to a Pushgateway (grouped by `job` and
`pipeline`, replacing the group's previous push). Both are off until configured:

```toml
[retail_bronze.metrics]
textfile_dir = "/var/lib/prometheus/node-exporter"  # node-exporter's --collector.textfile.directory
pushgateway_url = "http://127.0.0.1:9091"
job = "retail_bronze"                               # the Pushgateway's job label
push_timeout = 5.0                                  # seconds
```

(or `RETAIL_BRONZE__METRICS__TEXTFILE_DIR` and so on). Every metric is a gauge of the last run, labelled with the
warehouse's `pipeline` name, so that several Bronze layers on one host never collide. A metrics file that cannot be
written or a push that fails is a warning of the run, never a failed run: the data is loaded.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import dlt

from ..helpers import quote_literal
from ..sinks.identity import META_SCHEMA
from .record import RUN_TABLES_TABLE, RUNS_TABLE, STATUS_OK, RunRecord, Warehouse

SECTION = "retail_bronze.metrics"
DEFAULT_JOB = "retail_bronze"
DEFAULT_PUSH_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class MetricsConfig:
    """Where the metrics go (`[retail_bronze.metrics]` in `.dlt/config.toml`)."""

    textfile_dir: str | None = None
    pushgateway_url: str | None = None
    job: str = DEFAULT_JOB
    push_timeout: float = DEFAULT_PUSH_TIMEOUT

    @classmethod
    def configured(cls) -> MetricsConfig:
        """The configuration dlt resolves for `SECTION` (environment, `.dlt/secrets.toml`, `.dlt/config.toml`)."""
        textfile_dir = dlt.config.get(f"{SECTION}.textfile_dir", str)
        url = dlt.config.get(f"{SECTION}.pushgateway_url", str)
        job = dlt.config.get(f"{SECTION}.job", str)
        timeout = dlt.config.get(f"{SECTION}.push_timeout", float)
        return cls(textfile_dir=textfile_dir or None, pushgateway_url=url or None, job=job or DEFAULT_JOB,
                   push_timeout=float(timeout) if timeout is not None else DEFAULT_PUSH_TIMEOUT)

    @property
    def enabled(self) -> bool:
        return bool(self.textfile_dir or self.pushgateway_url)


@dataclass
class _Family:
    name: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def exposition(families: Iterable[_Family]) -> str:
    """Families in Prometheus' text exposition format (version 0.0.4)."""
    lines = []
    for family in families:
        if not family.samples:
            continue
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} gauge"]
        for labels, value in family.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{family.name}{{{text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def _timestamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def run_metrics(record: RunRecord, pipeline: str, table_successes: dict[str, float]) -> list[_Family]:
    """The metric families of a run (`table_successes`: table -> time of its last successful run)."""
    def family(name: str, text: str) -> _Family:
        return _Family(f"retail_bronze_{name}", text)

    info = family("run_info", "The last run's ids and status (value 1).")
    success = family("run_success", "1 when the last run completed (and its audits passed), else 0.")
    finished = family("run_finished_timestamp_seconds", "When the last run ended (Unix time).")
    took = family("run_duration_seconds", "Wall time of the last run.")
    steps = family("step_duration_seconds", "Wall time of each step of the last run.")
    files = family("files", "Files of the last run by status (new, changed, unchanged, rejected, skipped).")
    rows = {kind: family(f"rows_{kind}", f"Rows {kind} by the last run.")
            for kind in ("read", "valid", "superseded", "late", "rejected")}
    rejects = family("reject_records", "Reject records of the last run by reason code.")
    size = family("bytes_read", "Bytes of the raw files the last run read.")
    sink_rows = family("sink_rows", "Rows the last run wrote, by sink (duckdb, change_log, delta).")
    delta = family("delta_version", "Delta table version holding the last run's load.")
    table_success = family("table_last_success_timestamp_seconds",
                           "When a run that included the table last completed (Unix time).")
    last_success = family("last_success_timestamp_seconds", "When a run last completed (Unix time).")
    audits = family("audits", "Audits of the last run by result (passed, failed, warning).")
    audit_failures = family("audit_failures", "Failed audits of the last run that held its load back.")
    audit_failed = family("audit_failed", "1 when an audit of the last run failed, else 0, by table and audit.")
    exit_code = family("run_exit_code", "The command line's exit code for the last run (3 held, 4 audits failed).")

    ok = record.status == STATUS_OK and not record.audits_failed
    info.add(1, pipeline=pipeline, run_id=record.run_id, status=record.shown_status,
             warehouse_load_id=record.warehouse_load_id or "", lake_load_id=record.lake_load_id or "")
    success.add(1 if ok else 0, pipeline=pipeline)
    exit_code.add(record.exit_code, pipeline=pipeline)
    finished.add(_timestamp(record.finished_at), pipeline=pipeline)
    start, end = _timestamp(record.started_at), _timestamp(record.finished_at)
    took.add(end - start if start is not None and end is not None else None, pipeline=pipeline)
    for step, seconds in record.steps.items():
        steps.add(seconds, pipeline=pipeline, step=step)
    for table, f in sorted(record.tables.items()):
        for status, n in (("new", f.files_new), ("changed", f.files_changed), ("unchanged", f.files_unchanged),
                          ("rejected", f.files_rejected), ("skipped", f.files_skipped)):
            files.add(n, pipeline=pipeline, table=table, status=status)
        for kind, n in (("read", f.rows_read), ("valid", f.rows_valid), ("superseded", f.rows_superseded),
                        ("late", f.rows_late), ("rejected", f.rows_rejected)):
            rows[kind].add(n, pipeline=pipeline, table=table)
        for reason, n in sorted(f.rejects.items()):
            rejects.add(n, pipeline=pipeline, table=table, reason=reason)
        size.add(f.bytes_read, pipeline=pipeline, table=table)
    for table, s in sorted(record.sinks.items()):
        sink_rows.add(s.duckdb_rows, pipeline=pipeline, table=table, sink="duckdb")
        sink_rows.add(s.change_log_rows, pipeline=pipeline, table=table, sink="change_log")
        sink_rows.add(s.delta_rows, pipeline=pipeline, table=table, sink="delta")
        delta.add(s.delta_version, pipeline=pipeline, table=table)
    for table, stamp in sorted(table_successes.items()):
        table_success.add(stamp, pipeline=pipeline, table=table)
    if table_successes:
        last_success.add(max(table_successes.values()), pipeline=pipeline)
    by_table: dict[str, dict[str, int]] = {}
    for audit in record.audits:
        result = "passed" if audit.passed else "failed" if audit.blocks else "warning"
        counts = by_table.setdefault(audit.table_name, {"passed": 0, "failed": 0, "warning": 0})
        counts[result] += 1
        audit_failed.add(0 if audit.passed else 1, pipeline=pipeline, table=audit.table_name, audit=audit.audit,
                         severity=audit.severity)
    for table, counts in sorted(by_table.items()):
        for result, n in counts.items():
            audits.add(n, pipeline=pipeline, table=table, result=result)
        audit_failures.add(counts["failed"], pipeline=pipeline, table=table)
    return [info, success, exit_code, finished, took, last_success, steps, files, *rows.values(), rejects, size,
            sink_rows, delta, table_success, audits, audit_failures, audit_failed]


def stored_successes(wh: Warehouse) -> dict[str, float]:
    """Table -> end of the last successful stored run that included it (Unix time)."""
    out: dict[str, float] = {}
    if wh.has(RUNS_TABLE, META_SCHEMA) and wh.has(RUN_TABLES_TABLE, META_SCHEMA):
        for table, stamp in wh.rows(
                f"SELECT t.table_name, max(r.finished_at) FROM {META_SCHEMA}.{RUN_TABLES_TABLE} AS t JOIN "
                f"{META_SCHEMA}.{RUNS_TABLE} AS r USING (run_id) WHERE r.status = {quote_literal(STATUS_OK)} "
                "GROUP BY ALL"):
            if stamp is not None:
                out[table] = stamp.timestamp()
    return out


def table_successes(stored: dict[str, float], record: RunRecord) -> dict[str, float]:
    """`stored_successes`, with `record`'s tables when it succeeded."""
    out = dict(stored)
    end = _timestamp(record.finished_at)
    if record.status == STATUS_OK and not record.audits_failed and end is not None:
        for table in record.tables:
            out[table] = max(out.get(table, 0.0), end)
    return out


def write_textfile(directory: str | Path, pipeline: str, text: str) -> Path:
    """Replace `<directory>/<pipeline>.prom` with `text` atomically (node-exporter never reads half a file: it
    ignores names not ending in `.prom`, such as the temporary one)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_safe(pipeline)}.prom"
    temporary = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target


def push(url: str, job: str, pipeline: str, text: str, timeout: float) -> None:
    """PUT `text` to the Pushgateway at `url` as the group {job, pipeline} (replacing its previous push)."""
    target = f"{url.rstrip('/')}/metrics/job/{quote(job, safe='')}/pipeline/{quote(pipeline, safe='')}"
    request = urllib.request.Request(target, data=text.encode(), method="PUT",
                                     headers={"Content-Type": CONTENT_TYPE})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def publish_metrics(record: RunRecord, stored: dict[str, float], config: MetricsConfig) -> list[str]:
    """Write the textfile and push, as configured (`stored`: `stored_successes` before this run); return the
    warnings (a file not written, a push refused)."""
    if not config.enabled:
        return []
    pipeline = record.pipelines.get("warehouse") or "retail_bronze"
    text = exposition(run_metrics(record, pipeline, table_successes(stored, record)))
    warnings = []
    if config.textfile_dir:
        try:
            write_textfile(config.textfile_dir, pipeline, text)
        except OSError as error:
            warnings.append(f"metrics: cannot write the textfile in {config.textfile_dir}: {error}")
    if config.pushgateway_url:
        try:
            push(config.pushgateway_url, config.job, pipeline, text, config.push_timeout)
        except (OSError, urllib.error.URLError) as error:
            warnings.append(f"metrics: the push to {config.pushgateway_url} failed: {error}")
    return warnings
