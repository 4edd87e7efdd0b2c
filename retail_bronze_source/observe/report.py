"""The run report: a static HTML page per run and an index of runs, written beside the lake
(`<lake>/_retail_bronze/report/index.html` and `<run id>.html`), opened from disk with no server and no network.

Everything is inline: the style sheet, and charts drawn here as SVG (bars with a `<title>` each, which a browser shows
on hover); no script. Each figure of a page is also in an element carrying `data-figure` (and `data-table`,
`data-reason` where it applies), so that a test, or a scraper, reads the numbers without parsing the layout.

Configuration: `[retail_bronze.report] enabled = true` (default) and `runs = 30` (the runs of the index and of the
charts across runs).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import dlt

from ..sinks.identity import META_SCHEMA
from .lake import META_DIR, LakeRoot, write_lake_file
from .load_info import wap_text
from .record import RUNS_TABLE, STATUS_OK, RunRecord, TableFigures, Warehouse

SECTION = "retail_bronze.report"
REPORT_FOLDER = f"{META_DIR}/report"
DEFAULT_RUNS = 30
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#86bcb6", "#d37295")
"""Colours of tables in charts (Tableau 10 and two more), assigned in name order."""


@dataclass(frozen=True)
class ReportConfig:
    enabled: bool = True
    runs: int = DEFAULT_RUNS

    @classmethod
    def configured(cls) -> ReportConfig:
        enabled = dlt.config.get(f"{SECTION}.enabled", bool)
        runs = dlt.config.get(f"{SECTION}.runs", int)
        return cls(enabled=True if enabled is None else bool(enabled),
                   runs=DEFAULT_RUNS if runs is None else max(1, int(runs)))


def recent_records(wh: Warehouse, limit: int) -> list[RunRecord]:
    """The `limit` newest stored run records, oldest first."""
    if not wh.has(RUNS_TABLE, META_SCHEMA):
        return []
    rows = wh.rows(f"SELECT record FROM {META_SCHEMA}.{RUNS_TABLE} ORDER BY run_id DESC LIMIT {int(limit)}")
    return [RunRecord.from_json(json.loads(text)) for (text,) in reversed(rows)]


def write_report(lake: LakeRoot, record: RunRecord, recent: Sequence[RunRecord], config: ReportConfig) -> None:
    """Write the page of `record` and the index of the recent runs (`recent`, oldest first, then `record`)."""
    if not config.enabled:
        return
    earlier = [r for r in recent if r.run_id != record.run_id]
    write_pages(lake, [record], [*earlier, record][-config.runs:])


def write_pages(lake: LakeRoot, records: Sequence[RunRecord], index: Sequence[RunRecord]) -> list[str]:
    """Write a page per record of `records` and the index of `index` (oldest first); return the paths written."""
    written = []
    for record in records:
        history = [r for r in index if r.run_id <= record.run_id] or [record]
        written.append(write_lake_file(lake, f"{REPORT_FOLDER}/{page_name(record)}",
                                       run_page(record, history).encode()))
    written.append(write_lake_file(lake, f"{REPORT_FOLDER}/index.html", index_page(index).encode()))
    return written


def page_name(record: RunRecord) -> str:
    return f"{record.run_id}.html"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int | float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def _figure(value: int | None, figure: str, *, table: str | None = None, reason: str | None = None,
            tag: str = "td") -> str:
    attributes = f' data-figure="{_e(figure)}"'
    if table is not None:
        attributes += f' data-table="{_e(table)}"'
    if reason is not None:
        attributes += f' data-reason="{_e(reason)}"'
    return f'<{tag} class="num"{attributes}>{_n(value)}</{tag}>'


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(names))}


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _duration(record: RunRecord) -> float | None:
    if record.started_at and record.finished_at and record.recorded:
        return (datetime.fromisoformat(record.finished_at) - datetime.fromisoformat(record.started_at)).total_seconds()
    return None


def _badge(record: RunRecord) -> str:
    status = record.shown_status
    kind = "good" if status in (STATUS_OK, "loaded") else "bad" if status in ("failed", "audit_failed") else "warn"
    return f'<span class="badge {kind}" data-figure="status">{_e(status)}</span>'


def hbar_chart(items: Sequence[tuple[str, int, str]], *, title: str, figure: str, width: int = 520) -> str:
    """Horizontal bars: (label, value, colour) each, longest first as given."""
    if not items:
        return f'<p class="empty">{_e(title)}: none</p>'
    label_w, bar_h, gap = 190, 22, 8
    top = max(value for _, value, _ in items) or 1
    room = width - label_w - 70
    height = len(items) * (bar_h + gap) + gap
    parts = [f'<svg class="chart" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" data-chart="{_e(figure)}">']
    for i, (label, value, colour) in enumerate(items):
        y = gap + i * (bar_h + gap)
        w = max(2.0, room * value / top)
        parts.append(
            f'<g><title>{_e(label)}: {_n(value)}</title>'
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" class="label">{_e(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{colour}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" class="value">{_n(value)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_runs_chart(records: Sequence[RunRecord], *, width: int = 1180, height: int = 240) -> str:
    """Rows read per table across runs: a stacked column per run, a colour per table."""
    tables = sorted({name for r in records for name, f in r.tables.items() if f.rows_read})
    if not tables:
        return '<p class="empty">No rows were read in these runs.</p>'
    colours = _colours(tables)
    left, bottom, top_pad = 64, 34, 10
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max(sum(f.rows_read for f in r.tables.values()) for r in records) or 1
    step = plot_w / max(len(records), 1)
    bar_w = max(4.0, min(36.0, step * 0.7))
    parts = [f'<svg class="chart" role="img" aria-label="rows read per table across runs" viewBox="0 0 {width} '
             f'{height + 24 + 18 * ((len(tables) + 7) // 8)}" width="100%" data-chart="rows_across_runs">']
    for k in range(5):
        value = top * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_short(value)}</text>')
    for i, record in enumerate(records):
        x = left + i * step + (step - bar_w) / 2
        y = top_pad + plot_h
        for name in tables:
            rows = record.tables.get(name, TableFigures()).rows_read
            if not rows:
                continue
            h = plot_h * rows / top
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" '
                         f'fill="{colours[name]}"><title>{_e(record.run_id)} {_e(name)}: {_n(rows)} rows read'
                         f'</title></rect>')
        if len(records) <= 12 or i % max(1, len(records) // 8) == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle" '
                         f'class="axis">{_e(_short_run(record))}</text>')
    legend_y = height + 6
    for j, name in enumerate(tables):
        lx = left + (j % 8) * 135
        ly = legend_y + (j // 8) * 18
        parts.append(f'<rect x="{lx}" y="{ly}" width="11" height="11" rx="2" fill="{colours[name]}"/>'
                     f'<text x="{lx + 16}" y="{ly + 10}" class="legend">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def steps_chart(record: RunRecord, width: int = 1180) -> str:
    """The run's steps as one timeline bar, a segment per step."""
    total = sum(record.steps.values())
    if not total:
        return '<p class="empty">No step durations (a load no run recorded).</p>'
    names = list(record.steps)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    height = 44 + 16 * ((len(names) + 5) // 6)
    parts = [f'<svg class="chart" role="img" aria-label="step durations" viewBox="0 0 {width} {height}" '
             'width="100%" data-chart="steps">']
    x = 0.0
    for name in names:
        w = width * record.steps[name] / total
        parts.append(f'<rect x="{x:.1f}" y="4" width="{max(w, 0.5):.1f}" height="26" fill="{colours[name]}">'
                     f'<title>{_e(name)}: {_seconds(record.steps[name])}</title></rect>')
        x += w
    for j, name in enumerate(names):
        lx = (j % 6) * (width / 6)
        ly = 40 + (j // 6) * 16
        parts.append(f'<rect x="{lx:.1f}" y="{ly}" width="10" height="10" rx="2" fill="{colours[name]}"/>'
                     f'<text x="{lx + 14:.1f}" y="{ly + 9}" class="legend">{_e(name)} {_seconds(record.steps[name])}'
                     '</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}".replace(".0", "")
    return f"{value:.0f}"


def _short_run(record: RunRecord) -> str:
    stamp = record.started_at
    return datetime.fromisoformat(stamp).strftime("%m-%d %H:%M:%S") if stamp else record.run_id[:15]


STYLE = """
:root{--ink:#1f2933;--muted:#65717e;--line:#e3e7ec;--bg:#f5f7fa;--card:#fff;--good:#2f9e44;--bad:#d9480f;
--warn:#e67700;--accent:#4e79a7}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
sans-serif;color:var(--ink);background:var(--bg)}header{background:#1f2933;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:20px;font-weight:600}header .sub{color:#b8c2cc;font-size:13px;margin-top:4px}
header a{color:#9cc3ff}header code{background:rgba(255,255,255,.12);color:#fff}main{padding:20px 32px 40px;max-width:1280px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:12px;margin:4px 0 18px}.card{
background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 14px;box-shadow:0 1px 2px
rgba(0,0,0,.04)}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}.card .v{font-size:24px;
font-weight:600;margin-top:2px}.card.bad .v{color:var(--bad)}.card.good .v{color:var(--good)}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px;margin:0 0 16px;
box-shadow:0 1px 2px rgba(0,0,0,.04)}section h2{margin:0 0 10px;font-size:15px;font-weight:600}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:16px}.grid2 section{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:5px 8px;border-bottom:1px solid var(--line);
text-align:left;white-space:nowrap}th{color:var(--muted);font-weight:600;font-size:12px}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums}tr.total td{font-weight:600;border-top:2px solid var(--line)}
tbody tr:hover{background:#f0f4f8}.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;
font-weight:600;color:#fff}.badge.good{background:var(--good)}.badge.bad{background:var(--bad)}.badge.warn{
background:var(--warn)}.muted{color:var(--muted)}.empty{color:var(--muted);font-style:italic;margin:4px 0}
svg.chart{max-width:100%;height:auto}svg .label{font-size:12px;fill:var(--ink)}svg .value{font-size:11px;
fill:var(--muted)}svg .axis{font-size:10px;fill:var(--muted)}svg .legend{font-size:11px;fill:var(--ink)}
svg .grid{stroke:var(--line);stroke-width:1}code{font:12px ui-monospace,Menlo,Consolas,monospace;background:#eef1f5;
padding:1px 5px;border-radius:4px}ul{margin:4px 0;padding-left:20px}a{color:var(--accent)}
.fail td{color:var(--bad)}.pass td:last-child{color:var(--good)}.warn td:last-child{color:var(--warn)}td.reasons{white-space:normal;min-width:260px}
.chip{display:inline-block;margin:1px 3px 1px 0;padding:0 7px;border-radius:999px;background:#fdecea;color:#a61e1e;
font-size:11.5px}.chip b{font-weight:600;margin-left:4px}.scroll{overflow-x:auto}
"""


def _page(title: str, subtitle: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{_e(title)}</title><style>{STYLE}</style></head>'
            f'<body><header><h1>{_e(title)}</h1><div class="sub">{subtitle}</div></header><main>{body}</main>'
            '</body></html>')


def _card(label: str, value: int | None, figure: str, kind: str = "") -> str:
    return (f'<div class="card {kind}"><div class="k">{_e(label)}</div>'
            f'<div class="v" data-figure="{_e(figure)}">{_n(value)}</div></div>')


def run_page(record: RunRecord, history: Sequence[RunRecord]) -> str:
    """The page of one run; `history` are the recent runs up to it (oldest first) for the chart across runs."""
    total = record.total()
    rejected_rows = total.rows_rejected
    ids = (f'run <code data-figure="run_id">{_e(record.run_id)}</code> {_badge(record)} &nbsp; '
           f'warehouse load <code data-figure="warehouse_load_id">{_e(record.warehouse_load_id or "-")}</code> '
           f'&nbsp; lake load <code data-figure="lake_load_id">{_e(record.lake_load_id or "-")}</code> &nbsp; '
           f'<a href="index.html">all runs</a>')
    when = (f'started {_when(record.started_at)}, took {_seconds(_duration(record))}; ingestion_ts '
            f'<code>{_e(record.ingestion_ts or "-")}</code>')
    if not record.recorded:
        when += " — no run record: derived from what the sinks hold"
    cards = "".join([
        _card("files read", total.files_read, "files_read"),
        _card("files unchanged", total.files_unchanged, "files_unchanged"),
        _card("files rejected", total.files_rejected, "files_rejected", "bad" if total.files_rejected else ""),
        _card("rows read", total.rows_read, "rows_read"),
        _card("rows valid", total.rows_valid, "rows_valid", "good" if total.rows_valid else ""),
        _card("rows rejected", rejected_rows, "rows_rejected", "bad" if rejected_rows else ""),
        _card("superseded", total.rows_superseded, "rows_superseded"),
        _card("late", total.rows_late, "rows_late"),
    ])
    reasons = sorted(total.rejects.items(), key=lambda kv: (-kv[1], kv[0]))
    by_reason = hbar_chart([(code, n, "#e15759") for code, n in reasons[:12]], title="reject records by reason",
                           figure="rejects_by_reason")
    colours = _colours(list(record.tables))
    per_table = sorted(((name, sum(f.rejects.values())) for name, f in record.tables.items() if f.rejects),
                       key=lambda kv: (-kv[1], kv[0]))
    by_table = hbar_chart([(name, n, colours[name]) for name, n in per_table], title="reject records by table",
                          figure="rejects_by_table")
    body = [f'<div class="cards">{cards}</div>',
            f'<div class="grid2"><section><h2>Top failure types: reject records by reason</h2>{by_reason}</section>'
            f'<section><h2>Reject records by table</h2>{by_table}</section></div><br>',
            f'<section><h2>Tables</h2>{_tables_html(record)}</section>',
            f'<section><h2>Written to each sink</h2>{_sinks_html(record)}</section>',
            f'<section><h2>Audits</h2>{_audits_html(record)}</section>',
            f'<section><h2>Rows read per table across recent runs</h2>{stacked_runs_chart(history)}</section>',
            f'<section><h2>Steps</h2>{steps_chart(record)}</section>',
            f'<section><h2>Rejects CSV</h2>{_rejects_html(record)}</section>',
            f'<section><h2>Schema changes</h2>{_schema_html(record)}</section>']
    if record.notes or record.warnings or record.errors or record.earlier_loads:
        items = [*(f"<li>error: {_e(x)}</li>" for x in record.errors),
                 *(f"<li>warning: {_e(x)}</li>" for x in record.warnings),
                 *(f"<li>note: {_e(x)}</li>" for x in record.notes)]
        if record.earlier_loads:
            items.append(f"<li>completed earlier loads no run recorded (a killed run): "
                         f"{_e(', '.join(record.earlier_loads))}</li>")
        body.append(f'<section><h2>Notes</h2><ul>{"".join(items)}</ul></section>')
    return _page(f"retail_bronze run {record.run_id}", f"{ids}<br>{when}", "".join(body))


def _tables_html(record: RunRecord) -> str:
    head = ("<tr><th>table</th><th class=num>new</th><th class=num>changed</th><th class=num>unchanged</th>"
            "<th class=num>files rejected</th><th class=num>rows read</th><th class=num>valid</th>"
            "<th class=num>superseded</th><th class=num>late</th><th class=num>rejected</th><th class=num>MB read</th>"
            "<th>reject records by reason</th></tr>")
    rows = []
    for name, f in sorted(record.tables.items()):
        reasons = "".join(f'<span class="chip" data-figure="reject_records" data-table="{_e(name)}" '
                          f'data-reason="{_e(code)}" data-value="{n}">{_e(code)}<b>{n}</b></span>'
                          for code, n in sorted(f.rejects.items()))
        rows.append(f"<tr><td>{_e(name)}</td>{_figure(f.files_new, 'files_new', table=name)}"
                    f"{_figure(f.files_changed, 'files_changed', table=name)}"
                    f"{_figure(f.files_unchanged, 'files_unchanged', table=name)}"
                    f"{_figure(f.files_rejected, 'files_rejected', table=name)}"
                    f"{_figure(f.rows_read, 'rows_read', table=name)}{_figure(f.rows_valid, 'rows_valid', table=name)}"
                    f"{_figure(f.rows_superseded, 'rows_superseded', table=name)}"
                    f"{_figure(f.rows_late, 'rows_late', table=name)}"
                    f"{_figure(f.rows_rejected, 'rows_rejected', table=name)}"
                    f"<td class=num>{f.bytes_read / 1e6:,.2f}</td>"
                    f"<td class=reasons>{reasons or '<span class=muted>-</span>'}</td>"
                    "</tr>")
    t = record.total()
    rows.append(f"<tr class=total><td>total</td>{_figure(t.files_new, 'files_new', table='*')}"
                f"{_figure(t.files_changed, 'files_changed', table='*')}"
                f"{_figure(t.files_unchanged, 'files_unchanged', table='*')}"
                f"{_figure(t.files_rejected, 'files_rejected', table='*')}{_figure(t.rows_read, 'rows_read', table='*')}"
                f"{_figure(t.rows_valid, 'rows_valid', table='*')}"
                f"{_figure(t.rows_superseded, 'rows_superseded', table='*')}{_figure(t.rows_late, 'rows_late', table='*')}"
                f"{_figure(t.rows_rejected, 'rows_rejected', table='*')}<td class=num>{t.bytes_read / 1e6:,.2f}</td>"
                "<td></td></tr>")
    return f"<div class=scroll><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"


def _sinks_html(record: RunRecord) -> str:
    written = {n: s for n, s in record.sinks.items() if s.duckdb_rows or s.change_log_files or s.delta_version is not None}
    if not written:
        return '<p class="empty">Nothing was written: no file was new or changed.</p>'
    head = ("<tr><th>table</th><th class=num>DuckDB rows</th><th class=num>change log files</th>"
            "<th class=num>change log rows</th><th class=num>Delta version</th><th class=num>Delta rows</th></tr>")
    rows = "".join(
        f"<tr><td>{_e(n)}</td>{_figure(s.duckdb_rows, 'duckdb_rows', table=n)}"
        f"{_figure(s.change_log_files, 'change_log_files', table=n)}"
        f"{_figure(s.change_log_rows, 'change_log_rows', table=n)}{_figure(s.delta_version, 'delta_version', table=n)}"
        f"{_figure(s.delta_rows, 'delta_rows', table=n)}</tr>" for n, s in sorted(written.items()))
    return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _audits_html(record: RunRecord) -> str:
    wap = f'<p data-figure="wap">{_e(wap_text(record))}</p>' if record.wap is not None else ""
    if not record.audits:
        return f'{wap}<p class="empty" data-figure="audits">no audits</p>'
    failed, warned = record.audits_failed, record.audit_warnings
    rows = "".join(
        f'<tr class="{"pass" if a.passed else "fail" if a.blocks else "warn"}" data-figure="audit" '
        f'data-table="{_e(a.table_name)}" data-audit="{_e(a.audit)}" data-passed="{str(a.passed).lower()}">'
        f"<td>{_e(a.table_name)}</td><td>{_e(a.audit)}</td><td>{_e(a.severity)}</td><td>{_e(a.expected)}</td>"
        f"<td>{_e(a.observed)}</td><td>{'passed' if a.passed else 'FAILED' if a.blocks else 'warning'}</td></tr>"
        for a in record.audits)
    summary = (f'<p><span data-figure="audits_passed">{len(record.audits) - failed - warned}</span> passed, '
               f'<span data-figure="audits_failed">{failed}</span> failed, '
               f'<span data-figure="audit_warnings">{warned}</span> warning(s)</p>')
    return (f'{wap}{summary}<div class="scroll"><table><thead><tr><th>table</th><th>audit</th><th>severity</th>'
            f"<th>expected</th><th>observed</th><th>result</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _rejects_html(record: RunRecord) -> str:
    if not record.rejects_csv:
        return '<p class="empty">No reject records.</p>'
    links = "".join(f'<li><a data-figure="rejects_csv" href="../../{_e(path)}">{_e(path)}</a></li>'
                    for path in record.rejects_csv)
    return f"<ul>{links}</ul>"


def _schema_html(record: RunRecord) -> str:
    if not record.schema_changes and not record.table_resets:
        return '<p class="empty">No schema changes.</p>'
    items = [f'<li data-figure="schema_change">added <code>{_e(c["table_name"])}.{_e(c["column_name"])}</code> '
             f'({_e(c["data_type"])})</li>' for c in record.schema_changes]
    items += [f'<li data-figure="table_reset"><code>{_e(r["table_name"])}</code> reset: {_e(r["reason"])}</li>'
              for r in record.table_resets]
    return f"<ul>{''.join(items)}</ul>"


def index_page(records: Sequence[RunRecord]) -> str:
    """The index: the recent runs (newest first) and the rows read per table across them."""
    rows = []
    for record in reversed(records):
        t = record.total()
        audits = "-" if not record.audits else f"{len(record.audits) - record.audits_failed}/{len(record.audits)}"
        rows.append(
            f'<tr data-run="{_e(record.run_id)}"><td><a href="{_e(page_name(record))}">{_e(record.run_id)}</a></td>'
            f"<td>{_badge(record)}</td><td>{_when(record.started_at)}</td><td class=num>{_seconds(_duration(record))}"
            f"</td>{_figure(t.files_read, 'files_read')}{_figure(t.files_unchanged, 'files_unchanged')}"
            f"{_figure(t.files_rejected, 'files_rejected')}{_figure(t.rows_read, 'rows_read')}"
            f"{_figure(t.rows_valid, 'rows_valid')}{_figure(t.rows_rejected, 'rows_rejected')}"
            f"<td class=num>{audits}</td><td><code>{_e(record.warehouse_load_id or '-')}</code></td></tr>")
    head = ("<tr><th>run</th><th>status</th><th>started</th><th class=num>took</th><th class=num>files read</th>"
            "<th class=num>unchanged</th><th class=num>files rejected</th><th class=num>rows read</th>"
            "<th class=num>valid</th><th class=num>rejected</th><th class=num>audits</th><th>warehouse load</th></tr>")
    failing = sum(1 for r in records if r.shown_status not in (STATUS_OK, "loaded"))
    cards = "".join([_card("runs shown", len(records), "runs"),
                     _card("not ok", failing, "runs_not_ok", "bad" if failing else "good")])
    body = (f'<div class="cards">{cards}</div>'
            f"<section><h2>Rows read per table across runs</h2>{stacked_runs_chart(records)}</section>"
            f"<section><h2>Runs</h2><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>")
    return _page("retail_bronze runs", f"the {len(records)} most recent runs, newest first", body)
