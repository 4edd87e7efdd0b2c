"""The command line: `python scripts/bronze_dlt_pipeline.py [--raw DIR|URL] [--lake DIR] [--warehouse FILE] ...`,
and its subcommands `load-info [LOAD_ID | --last N] [--json]` (what runs did) and `report [--last N]` (their pages).

Every message it prints goes through `redact.redact`: a URL's credentials never reach the terminal or a log.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import dlt
from dlt.common.pipeline import get_dlt_pipelines_dir

from . import SECTION
from .observe import format_progress, format_record
from .observe.lake import lake_store
from .observe.load_info import RunNotFound, format_records, load_info, records_json
from .observe.report import REPORT_FOLDER, page_name, write_pages
from .outputs import OUTCOME_FAILED
from .process import freeze_imports, tune_malloc
from .redact import redact
from .registry import RETAIL_TABLES
from .run import (
    DEFAULT_LOCK_TIMEOUT,
    Layout,
    PublishRefused,
    RunResult,
    TableSummary,
    check_layout,
    dry_run,
    promote_rescued,
    publish_staged,
    recorded_ledgers,
    run_bronze,
)
from .run_lock import RunLocked
from .sinks.delta import DeltaTablesFailed, compact_tables
from .sinks.identity import SinkMismatch, pipeline_names
from .sinks.warehouse import WarehouseBusy, WarehouseTaken
from .storage import LOCAL_PROTOCOLS, StoreError, StoreStepFailed, protocol_of


class CliError(Exception):
    """A run that cannot start or finish; the message is the one-line cause."""


DEFAULT_RAW = "data_raw"
RAW_URL_KEY = f"sources.{SECTION}.raw_url"
"""Where `--raw` comes from when it is not given: dlt's configuration (the environment variable
`SOURCES__RETAIL_BRONZE__RAW_URL`, then `.dlt/secrets.toml`, then `.dlt/config.toml`), else `DEFAULT_RAW`."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bronze_dlt_pipeline", description="Load raw retail files into Bronze.")
    parser.add_argument("--raw", default=None,
                        help="raw files: a directory or an fsspec URL (default: raw_url of [sources.retail_bronze] in "
                             "dlt's config or SOURCES__RETAIL_BRONZE__RAW_URL, else data_raw)")
    parser.add_argument("--lake", default="lake",
                        help="lake root: a directory or an s3:// URL (default lake)")
    parser.add_argument("--warehouse", default="duckdb/warehouse.duckdb",
                        help="DuckDB file (default duckdb/warehouse.duckdb)")
    parser.add_argument("--tables", default="", help="comma-separated tables to load (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="read and validate only; write nothing")
    parser.add_argument("--evolve-schema", action="store_true", default=None,
                        help="add columns outside the contract to the tables (with their types) instead of keeping "
                             "them in _rescued_data; each addition is recorded in bronze.schema_history (default: "
                             "[sources.retail_bronze] evolve_schema in .dlt/config.toml, else off)")
    parser.add_argument("--promote-rescued", action="store_true",
                        help="promote the columns kept in _rescued_data of the loaded rows to real (text) columns in "
                             "the warehouse and Delta (all tables, or those of --tables), then exit (no load)")
    parser.add_argument("--reload", default="",
                        help="comma-separated tables to load again from their raw files, replacing them (and their "
                             "rejects and manifest records) in every sink")
    parser.add_argument("--compact", action="store_true",
                        help="compact every Delta table under <lake>/bronze/delta now, then exit (no load)")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT,
                        help="seconds to wait for another run on the same warehouse or lake (default 60)")
    parser.add_argument("--pipelines-dir", default=None, help="dlt pipelines dir (default: dlt's own, ~/.dlt)")
    parser.add_argument("--wap", action="store_true", default=None,
                        help="write-audit-publish: load a staged copy of the warehouse, run the tables' audits on it "
                             "and publish only if they pass (default: [sources.retail_bronze] wap); exit 3: held for "
                             "inspection, exit 4: audits failed, nothing published")
    parser.add_argument("--publish", action="store_true",
                        help="publish the staging a write-audit-publish run held for inspection, then exit")
    return parser.parse_args(argv)


def _layout(args: argparse.Namespace) -> Layout:
    if protocol_of(args.warehouse) not in LOCAL_PROTOCOLS:
        raise CliError(f"the warehouse is a local DuckDB file, not {redact(args.warehouse)}; put the lake on object "
                       "storage with --lake")
    return Layout(raw_url=args.raw or raw_url_from_config(), lake=args.lake, warehouse=Path(args.warehouse))


def format_summary(summary: dict[str, TableSummary]) -> str:
    """The per-table summary as a fixed-width text table."""
    header = f"{'table':<16}{'files':>7}{'read':>10}{'valid':>10}{'rejected':>10}  reasons"
    lines = [header, "-" * len(header)]
    for name in sorted(summary):
        s = summary[name]
        reasons = ", ".join(f"{code}={n}" for code, n in sorted(s.reasons.items())) or "-"
        lines.append(f"{name:<16}{s.files:>7}{s.rows_read:>10}{s.valid:>10}{s.rejected:>10}  {reasons}")
    total = TableSummary()
    for s in summary.values():
        total.files += s.files
        total.rows_read += s.rows_read
        total.valid += s.valid
        total.rejected += s.rejected
    lines.append(f"{'total':<16}{total.files:>7}{total.rows_read:>10}{total.valid:>10}{total.rejected:>10}")
    return "\n".join(lines)


def raw_url_from_config() -> str:
    """The raw URL configured for dlt (`RAW_URL_KEY`), else `DEFAULT_RAW`."""
    value = dlt.config.get(RAW_URL_KEY, str)
    return value if isinstance(value, str) and value.strip() else DEFAULT_RAW


def say(text: str, *, error: bool = False) -> None:
    """Print one message of the command line, with the credentials of any URL in it redacted."""
    print(redact(text), file=sys.stderr if error else sys.stdout)


SUBCOMMANDS = ("load-info", "report")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return inspect_runs(argv[0], argv[1:])
    args = parse_args(argv)
    tune_malloc()  # this process is the command line's own
    freeze_imports()
    if dlt.config.get("runtime.log_level") is None:
        # dlt logs every retried job with a traceback; the command line prints each failure as one line itself.
        dlt.config["runtime.log_level"] = "CRITICAL"
    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    try:
        layout = _layout(args)
        known = {t.name for t in RETAIL_TABLES}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CliError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        check_layout(layout, write=not args.dry_run)
        if args.compact:
            return _compact(layout)
        if args.promote_rescued:
            return _promote(layout, names, args)
        if args.publish:
            return _publish(layout, args)
        if args.dry_run:
            ledgers = _existing_ledgers(layout, args.pipelines_dir)
            say("dry run: nothing is written; this is what a run would load and reject")
            say(format_summary(dry_run(layout, table_names=names, ledgers=ledgers)))
            return 0
        reload = [t.strip() for t in args.reload.split(",") if t.strip()]
        result = run_bronze(layout, table_names=names, pipelines_dir=args.pipelines_dir, lock_timeout=args.lock_timeout,
                            evolve_schema=args.evolve_schema, reload=reload, wap=args.wap,
                            progress=lambda done: say(format_progress(done)))
    except (StoreStepFailed, WarehouseTaken) as error:
        say(f"error: {error}", error=True)
        return 1
    except (CliError, RunLocked, WarehouseBusy, SinkMismatch, StoreError, PublishRefused) as error:
        say(f"error: {error}", error=True)
        return 2
    except Exception as error:
        cause = error.__cause__ or error
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        say(f"error: {type(cause).__name__}: {first_line}", error=True)
        return 1
    if result.record is not None:
        say(format_record(result.record))
    if result.failed_jobs:
        say(f"{len(result.failed_jobs)} load job(s) refused by a destination: their rows are LOAD_FAILED rejects")
    say(f"delta: {len(result.mirrored)} table load(s) mirrored, {len(result.compacted)} table(s) compacted; "
        f"rejects CSV: {len(result.rejects_files)} file(s) under {layout.rejects_root}")
    inspect = f" --pipelines-dir {args.pipelines_dir}" if args.pipelines_dir else ""
    say(f"inspect: dlt pipeline{inspect} {result.pipelines[0]} info|trace|load-package "
        f"(the lake: {result.pipelines[1]})")
    if result.record is not None:
        say(f"this run later: bronze_dlt_pipeline.py load-info {result.record.run_id}; its page: "
            f"{layout.lake_store.url_of(*REPORT_FOLDER.split('/'), page_name(result.record))}")
    for failure in result.delta_failures:
        say(f"error: {failure}", error=True)
    if result.wap is not None:
        _report_wap(result)
    return result.exit_code


def _report_wap(result: RunResult) -> None:
    """Print the failed audits of a write-audit-publish run on stderr (what it did with its staged load is in the
    run's text)."""
    outcome = result.wap
    assert outcome is not None
    for warning in outcome.warnings:
        say(f"audit warning: {warning}", error=True)
    for failed in outcome.failed:
        say(f"audit failed: {failed}", error=True)
    if outcome.status == OUTCOME_FAILED:
        kept = f"; the staging is kept at {outcome.staging}" if outcome.staging else ""
        say(f"write-audit-publish: {len(outcome.failed)} audit(s) failed, nothing was published (load "
            f"{outcome.load_id}){kept}", error=True)


def _publish(layout: Layout, args: argparse.Namespace) -> int:
    result = publish_staged(layout, pipelines_dir=args.pipelines_dir, lock_timeout=args.lock_timeout)
    for note in result.notes:
        say(f"note: {note}")
    say(f"lake load {result.lake_load_id or '-'}; delta: {len(result.mirrored)} table load(s) mirrored")
    for failure in result.delta_failures:
        say(f"error: {failure}", error=True)
    return 1 if result.delta_failures else 0


def _promote(layout: Layout, names: list[str], args: argparse.Namespace) -> int:
    result = promote_rescued(layout, table_names=names, pipelines_dir=args.pipelines_dir,
                             lock_timeout=args.lock_timeout)
    for done in result.promoted:
        say(f"promoted {done.table_name}.{done.column_name} from _rescued_data key {done.key!r} ({done.rows} rows)")
    for refused in result.refused:
        say(f"not promoted: {refused.table_name} key {refused.key!r}: {refused.refused}")
    if not result.promoted and not result.refused:
        say("nothing to promote: no loaded row keeps columns in _rescued_data")
    for failure in result.delta_failures:
        say(f"error: {failure}", error=True)
    return 1 if result.delta_failures else 0


def _compact(layout: Layout) -> int:
    try:
        done, failures = compact_tables(layout.delta_root, force=True), []
    except DeltaTablesFailed as incomplete:
        done, failures = incomplete.done, incomplete.failures
    for compaction in done:
        say(f"compacted {compaction.table_name}: {compaction.files_before} -> {compaction.files_after} files")
    for failure in failures:
        say(f"error: {failure}", error=True)
    return 1 if failures else 0


def _existing_ledgers(layout: Layout, pipelines_dir: str | None) -> dict[str, dict[str, object]]:
    root = Path(pipelines_dir) if pipelines_dir else Path(get_dlt_pipelines_dir())
    name = pipeline_names(layout.warehouse, layout.lake_store)[0]
    if not (root / name).is_dir():
        return {}
    return recorded_ledgers(dlt.attach(name, pipelines_dir=str(root)))


def parse_inspect_args(command: str, argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"bronze_dlt_pipeline {command}", description=(
        "What runs did: files, rows per table and reason, what each sink got, audits, steps; read from the warehouse "
        "and the lake, also for runs made before run records existed." if command == "load-info" else
        "Write the report pages of runs and their index under <lake>/_retail_bronze/report/."))
    if command == "load-info":
        parser.add_argument("load_id", nargs="?", default=None,
                            help="a run id, or a warehouse or lake load id (default: the last run)")
        parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--last", type=int, default=None, help="the last N runs (default 1)")
    parser.add_argument("--lake", default="lake", help="lake root: a directory or an fsspec URL (default lake)")
    parser.add_argument("--warehouse", default="duckdb/warehouse.duckdb", type=Path,
                        help="DuckDB file (default duckdb/warehouse.duckdb)")
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error("--last must be a positive number of runs")
    if getattr(args, "load_id", None) is not None and args.last is not None:
        parser.error("give a LOAD_ID or --last, not both")
    return args


def inspect_runs(command: str, argv: Sequence[str]) -> int:
    """`load-info`: print what runs did; `report`: write their pages. Exit 2 when there is nothing to read."""
    args = parse_inspect_args(command, argv)
    try:
        lake = lake_store(args.lake)
        if not args.warehouse.exists() and not lake.fs.isdir(lake.root):
            raise CliError(f"neither the warehouse {str(args.warehouse)!r} nor the lake {str(lake)!r} exists")
        records = load_info(warehouse=args.warehouse, lake=lake, load_id=getattr(args, "load_id", None),
                            last=args.last)
    except (CliError, RunNotFound, StoreError) as error:
        say(f"error: {error}", error=True)
        return 2
    if not records:
        say("no runs recorded yet")
        return 0
    if command == "report":
        written = write_pages(lake, records, records)
        say(f"wrote {len(written)} page(s): {written[-1]}")
    elif args.json:
        say(json.dumps(records_json(records), indent=2))
    else:
        say(format_records(records))
    return 0
