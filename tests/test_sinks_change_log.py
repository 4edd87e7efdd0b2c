"""The Parquet change log: warehouse loads imported from their packages, or exported from the warehouse when the
packages are gone; `change_log_imports` says which, and each load is imported once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
from conftest import SAMPLE, Sandbox, changelog_table, delta_table, make_sandbox, query, warehouse_table

from retail_bronze_source.run import run_bronze


def _imports(box: Sandbox) -> list[tuple[str, str]]:
    files = sorted((box.lake / "bronze" / "parquet" / "change_log_imports").glob("*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return sorted((row["warehouse_load_id"], row["source"]) for row in rows)


def _run(box: Sandbox) -> None:
    run_bronze(box.layout, table_names=["stores"], pipelines_dir=str(box.pipelines_dir))


def _stores_box(tmp_path: Path) -> Sandbox:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "stores", raw / "stores")
    return make_sandbox(tmp_path, raw=raw)


def _deliver_update(box: Sandbox) -> None:
    """A second file holding a newer version of store 2."""
    (box.raw / "stores" / "stores_update.csv").write_text(
        "store_id,store_name,country_code,city,store_format,opened_on,updated_at\n"
        "2,Store 2 New York Midtown,US,New York,online,2014-08-01,2025-01-01T00:00:00Z\n")


def _warehouse_loads(box: Sandbox) -> list[str]:
    return sorted(row[0] for row in query(box.warehouse, "SELECT load_id FROM bronze._dlt_loads WHERE status = 0"))


def test_each_warehouse_load_is_imported_once_from_its_package(tmp_path: Path) -> None:
    box = _stores_box(tmp_path)
    _run(box)
    _deliver_update(box)
    _run(box)
    _run(box)  # nothing new: nothing imported again
    loads = _warehouse_loads(box)
    assert len(loads) == 2
    assert _imports(box) == [(load, "package") for load in loads]
    log = changelog_table(box.lake, "stores")
    # The log keeps both versions of store 2; the warehouse the newest only.
    names = sorted(r["store_name"] for r in log.to_pylist() if r["store_id"] == 2)
    assert names == ["Store 2 New York", "Store 2 New York Midtown"]
    assert log.num_rows == warehouse_table(box.warehouse, "stores").num_rows + 1
    assert sorted(log.column("_dlt_load_id").unique().to_pylist()) == loads


def test_a_lost_lake_and_pipelines_dir_are_rebuilt_from_the_warehouse(tmp_path: Path) -> None:
    box = _stores_box(tmp_path)
    _run(box)
    _deliver_update(box)
    _run(box)
    loads = _warehouse_loads(box)
    shutil.rmtree(box.lake)
    shutil.rmtree(box.pipelines_dir)
    _run(box)
    assert _warehouse_loads(box) == loads  # no new load: the raw files were recognised from the manifest
    assert _imports(box) == [(load, "warehouse") for load in loads]
    # Exported from the warehouse: the rows each load left there, so the replaced version of store 2 is gone.
    warehouse = warehouse_table(box.warehouse, "stores")
    log = changelog_table(box.lake, "stores")
    assert sorted(log.column("src_row_hash").to_pylist()) == sorted(warehouse.column("src_row_hash").to_pylist())
    assert sorted(log.column("_dlt_load_id").to_pylist()) == sorted(warehouse.column("_dlt_load_id").to_pylist())
    mirrored = delta_table(box.lake, "stores")
    assert sorted(mirrored.column("src_row_hash").to_pylist()) == sorted(warehouse.column("src_row_hash").to_pylist())
    rejects = query(box.warehouse, "SELECT count(*) FROM bronze.rejects")[0][0]
    assert changelog_table(box.lake, "rejects").num_rows == rejects > 0
