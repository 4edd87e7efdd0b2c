"""The source inside a data engineer's own pipeline, in a process without this repository's `.dlt/`: the README's
library snippet into DuckDB, dlt's filesystem destination with plain Parquet and with Delta, over a late version of a
key and a changed file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pytest
from conftest import REPO, SAMPLE
from deltalake import DeltaTable

SNIPPET = """
import sys
import dlt
from retail_bronze_source import retail_source

destination, raw, out = sys.argv[1], sys.argv[2], sys.argv[3]
if destination == "duckdb":
    pipeline = dlt.pipeline("my_bronze", destination=dlt.destinations.duckdb(out + "/my.duckdb"),
                            dataset_name="bronze", pipelines_dir=out + "/pipelines")
    info = pipeline.run(retail_source(raw_url=raw, table_names=["orders", "events"]), loader_file_format="parquet")
else:
    pipeline = dlt.pipeline("my_bronze", destination=dlt.destinations.filesystem("file://" + out + "/lake"),
                            dataset_name="bronze", pipelines_dir=out + "/pipelines")
    info = pipeline.run(retail_source(raw_url=raw, table_names=["orders", "events"]), loader_file_format="parquet",
                        table_format="delta" if destination == "delta" else None)
assert not info.has_failed_jobs, info
"""
LATE = ("100002,226,26,2024-02-27T19:04:58-05:00,2024-02-28,placed,app,CHF,127.06,customer226@example.com,,"
        "2024-02-28T10:00:00-05:00\n")
"""A version of order 100002 older than the one the sample delivers (updated 2024-02-29T19:17:30-05:00)."""
NEWEST_STATUS = "cancelled"


def _run(destination: str, raw: Path, out: Path) -> None:
    """The snippet in a fresh process whose working directory has no `.dlt/` (dlt's defaults everywhere)."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", SNIPPET, destination, str(raw), str(out)], cwd=work,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(out / "home"),
                               "RUNTIME__DLTHUB_TELEMETRY": "false"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _deliveries(raw: Path) -> None:
    """The second delivery: a late version of an order, and an events file changed in place (one line fewer, one
    value changed)."""
    (raw / "orders" / "orders_late.csv").write_text(
        (SAMPLE / "orders" / "orders_2024-03-01.csv").read_text().splitlines()[0] + "\n" + LATE)
    events = raw / "events" / "events_3.jsonl"
    lines = events.read_text().splitlines()[:-1]
    first = json.loads(lines[0])
    first["event_type"] = "login"
    events.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


def _orders_and_events(destination: str, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    columns = ["order_id", "status", "_dlt_load_id"]
    event_columns = ["src_filename", "src_row_number", "event_type", "_dlt_load_id"]
    if destination == "duckdb":
        with duckdb.connect(str(out / "my.duckdb"), read_only=True) as con:
            orders = con.execute(f"SELECT {', '.join(columns)} FROM bronze.orders").to_arrow_table()
            events = con.execute(f"SELECT {', '.join(event_columns)} FROM bronze.events").to_arrow_table()
    elif destination == "delta":
        orders = DeltaTable(str(out / "lake" / "bronze" / "orders")).to_pyarrow_table(columns=columns)
        events = DeltaTable(str(out / "lake" / "bronze" / "events")).to_pyarrow_table(columns=event_columns)
    else:
        orders = ds.dataset(str(out / "lake" / "bronze" / "orders"), format="parquet").to_table(columns=columns)
        events = ds.dataset(str(out / "lake" / "bronze" / "events"), format="parquet").to_table(columns=event_columns)
    return orders.to_pylist(), events.to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize("destination", ["duckdb", "delta", "parquet"])
def test_library_snippet_keeps_the_guarantees(tmp_path: Path, destination: str) -> None:
    raw = tmp_path / "raw"
    for table in ("orders", "events"):
        shutil.copytree(SAMPLE / table, raw / table)
    out = tmp_path / "out"
    _run(destination, raw, out)
    first_orders, first_events = _orders_and_events(destination, out)
    _deliveries(raw)
    _run(destination, raw, out)
    orders, events = _orders_and_events(destination, out)

    assert all(row["_dlt_load_id"] for row in orders + events)  # without any normalizer configuration
    changed = [e for e in events if e["src_filename"] == "events/events_3.jsonl"]
    lines = len((raw / "events" / "events_3.jsonl").read_text().splitlines())
    versions = [o["status"] for o in orders if o["order_id"] == 100002]
    if destination == "parquet":
        # Plain files never replace a row: every delivery is appended (the change-log form), as documented.
        assert len(orders) == len(first_orders) + 1 and sorted(versions) == sorted([NEWEST_STATUS, "placed"])
        assert len(events) == len(first_events) + lines
        return
    assert versions == [NEWEST_STATUS]  # the late version never replaces the newer one
    assert len(orders) == len(first_orders)
    assert [e["event_type"] for e in changed if e["src_row_number"] == 1] == ["login"]
    positions = sorted(e["src_row_number"] for e in changed)
    assert positions == sorted(set(positions))  # the changed file's rows replaced, never doubled
    # DuckDB replaces the file's rows; Delta can only upsert them by position, so the row of the line that is gone
    # stays (documented: `run_bronze`'s own Delta mirror deletes it).
    assert len(positions) == (lines if destination == "duckdb" else lines + 1)
