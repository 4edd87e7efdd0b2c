"""The benchmark's contenders, one per child process: each loads one raw table and reports rows and wall seconds.

`python bench/contenders.py CONTENDER --raw DIR --target DIR --table NAME --result FILE`

Imports and set-up happen before the clock starts; the clock covers reading, validating and writing. The result file
holds `{"rows": n, "wall_s": s, "extra": {...}}`, or `{"unavailable": why}` when this machine cannot run the contender.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Work = Callable[[], tuple[int, dict[str, Any]]]
"""Runs the load; returns the rows loaded and contender-specific details."""


class Unavailable(Exception):
    """This machine cannot run the contender (a missing optional library or offline extension)."""


DUCKDB_SOURCES: Mapping[str, str] = {
    "orders": "read_csv('{raw}/orders/*.csv', header = true)",
    "products": "read_parquet('{raw}/products/*.parquet')",
    "order_items": "read_parquet('{raw}/order_items/*.parquet')",
    "events": "read_json('{raw}/events/*.jsonl', format = 'newline_delimited')",
    "returns": "delta_scan('{raw}/returns')",
    "sensors": "(SELECT * FROM read_csv('{raw}/sensors/*.csv', header = true) "
               "UNION ALL BY NAME SELECT * FROM read_parquet('{raw}/sensors/*.parquet'))",
}
"""DuckDB's own reader for each table's delivery format; tables missing here have none (XLSX)."""

DUCKDB_EXTENSIONS: Mapping[str, str] = {"returns": "delta"}
"""Tables whose DuckDB reader lives in an extension that must already be on this machine."""


def duckdb_native(raw: Path, target: Path, table: str) -> Work:
    """DuckDB alone: `CREATE TABLE ... AS SELECT * FROM <its reader>` into a fresh DuckDB file."""
    import duckdb

    if table not in DUCKDB_SOURCES:
        raise Unavailable("n/a (DuckDB has no reader for this format)")
    con = duckdb.connect(str(target / "native.duckdb"))
    con.execute("SET autoinstall_known_extensions = false")
    if table in DUCKDB_EXTENSIONS:
        try:
            con.execute(f"LOAD {DUCKDB_EXTENSIONS[table]}")
        except duckdb.Error as exc:
            con.close()
            raise Unavailable("n/a (no offline extension)") from exc
    source = DUCKDB_SOURCES[table].format(raw=raw.resolve().as_posix())

    def work() -> tuple[int, dict[str, Any]]:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM {source}")
        counted = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        con.close()
        return int(counted[0]) if counted else 0, {}

    return work


def package(raw: Path, target: Path, table: str) -> Work:
    """This package: `run_bronze` for one table into DuckDB, the Parquet lake and the Delta mirror, in a process
    tuned as the command line tunes its own."""
    from retail_bronze_source.process import freeze_imports, tune_malloc
    from retail_bronze_source.run import Layout, run_bronze

    tune_malloc()
    freeze_imports()
    layout = Layout(raw_url=str(raw.resolve()), lake=target / "lake", warehouse=target / "warehouse.duckdb")

    def work() -> tuple[int, dict[str, Any]]:
        result = run_bronze(layout, table_names=[table], pipelines_dir=str(target / "pipelines"))
        summary = result.summary[table]
        return summary.rows_read, {"files": summary.files, "valid": summary.valid, "rejected": summary.rejected,
                                   "reasons": dict(summary.reasons), "failed_jobs": len(result.failed_jobs),
                                   "delta_rows": sum(m.rows for m in result.mirrored if m.table_name == table)}

    return work


def dlt_read_csv(raw: Path, target: Path, table: str) -> Work:
    """dlt's built-in `filesystem() | read_csv()` (pandas chunks turned into dicts) into DuckDB."""
    try:
        import pandas  # noqa: F401
    except ImportError as exc:
        raise Unavailable("n/a (dlt's read_csv needs pandas, which is not installed)") from exc
    from dlt.sources.filesystem import read_csv

    return _dlt_filesystem(raw, target, table, read_csv())


def dlt_read_csv_duckdb(raw: Path, target: Path, table: str) -> Work:
    """dlt's built-in `filesystem() | read_csv_duckdb()` (DuckDB-parsed, yielded as dicts) into DuckDB."""
    from dlt.sources.filesystem import read_csv_duckdb

    return _dlt_filesystem(raw, target, table, read_csv_duckdb())


def _dlt_filesystem(raw: Path, target: Path, table: str, reader: Any) -> Work:
    import dlt
    from dlt.sources.filesystem import filesystem

    pipeline = dlt.pipeline(pipeline_name=f"bench_dlt_{table}", pipelines_dir=str(target / "pipelines"),
                            destination=dlt.destinations.duckdb(str(target / "dlt.duckdb")), dataset_name="bench")
    files = filesystem(bucket_url=raw.resolve().as_uri(), file_glob=f"{table}/*.csv")
    resource = (files | reader).with_name(table)

    def work() -> tuple[int, dict[str, Any]]:
        info = pipeline.run(resource)
        failed = sum(len(p.jobs.get("failed_jobs", [])) for p in info.load_packages)
        with pipeline.sql_client() as client:
            counted = client.execute_sql(f"SELECT count(*) FROM {client.make_qualified_table_name(table)}")
        return int(counted[0][0]) if counted else 0, {"failed_jobs": failed}

    return work


CONTENDERS: Mapping[str, Callable[[Path, Path, str], Work]] = {
    "duckdb": duckdb_native,
    "package": package,
    "dlt_read_csv": dlt_read_csv,
    "dlt_read_csv_duckdb": dlt_read_csv_duckdb,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run one contender and write its result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=sorted(CONTENDERS))
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        work = CONTENDERS[args.contender](args.raw, args.target, args.table)
    except Unavailable as exc:
        args.result.write_text(json.dumps({"unavailable": str(exc)}))
        return
    started = time.perf_counter()
    rows, extra = work()
    wall = time.perf_counter() - started
    args.result.write_text(json.dumps({"rows": rows, "wall_s": wall, "extra": extra}))


if __name__ == "__main__":
    main()
