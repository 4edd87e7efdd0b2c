"""Columns outside the contract: kept per row in `_rescued_data` with a warning, or added everywhere on request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import SAMPLE, changelog_table, delta_table, generate, make_sandbox, query, warehouse_table

from retail_bronze_source.registry import TableSpec
from retail_bronze_source.run import RunResult, run_bronze
from schemas.schemas import col


def _box_with_new_upstream_column(tmp_path: Path, generator: ModuleType, evolve: bool):
    box = make_sandbox(tmp_path)
    generate(box.raw, "--tables", "returns")
    run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir), evolve_schema=evolve)
    commit = generator.append_returns_commit(box.raw, seed=3, n=20, with_reason_code=True)
    result = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir),
                        evolve_schema=evolve)
    return box, commit, result


def test_new_upstream_column_is_rescued_and_named_in_a_warning(tmp_path: Path, generator: ModuleType) -> None:
    box, commit, result = _box_with_new_upstream_column(tmp_path, generator, evolve=False)
    returns = warehouse_table(box.warehouse, "returns")
    assert "return_reason_code" not in returns.column_names
    rescued = [json.loads(r) for r in returns["_rescued_data"].to_pylist() if r is not None]
    assert len(rescued) == len(set(commit["new_ids"]) | set(commit["updated_ids"]))
    assert all(set(r) == {"return_reason_code"} and r["return_reason_code"].startswith("R0") for r in rescued)
    assert result.warnings == ["returns: column(s) return_reason_code are not in the contract and were kept in "
                               "_rescued_data; declare them in schemas/schemas.py, run with --evolve-schema, or "
                               "promote them later with --promote-rescued"]
    assert result.schema_changes == []


def test_evolve_schema_adds_the_column_in_every_sink_and_records_it(tmp_path: Path, generator: ModuleType) -> None:
    box, commit, result = _box_with_new_upstream_column(tmp_path, generator, evolve=True)
    changed = set(commit["new_ids"]) | set(commit["updated_ids"])
    for table in (warehouse_table(box.warehouse, "returns"), delta_table(box.lake, "returns")):
        by_id = dict(zip(table["return_id"].to_pylist(), table["return_reason_code"].to_pylist(), strict=True))
        assert all(by_id[i] is not None for i in changed)
        assert all(code is None for i, code in by_id.items() if i not in changed)
        assert pc.all(pc.is_null(table["_rescued_data"])).as_py()
    log = changelog_table(box.lake, "returns")
    assert "return_reason_code" in log.column_names
    assert query(box.warehouse, "SELECT table_name, column_name, data_type FROM bronze.schema_history") == [
        ("returns", "return_reason_code", "text")]
    assert [(c["table_name"], c["column_name"]) for c in result.schema_changes] == [("returns", "return_reason_code")]
    assert result.warnings == []


def test_columns_added_by_the_load_that_creates_the_table_are_recorded(tmp_path: Path,
                                                                     generator: ModuleType) -> None:
    """The first load of a table already brings a column outside the contract: with `--evolve-schema` it is added
    and recorded once in `bronze.schema_history` (and a later run records nothing again)."""
    box = make_sandbox(tmp_path)
    generate(box.raw, "--tables", "returns")
    generator.append_returns_commit(box.raw, seed=3, n=20, with_reason_code=True)
    first = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir), evolve_schema=True)
    assert [(c["table_name"], c["column_name"]) for c in first.schema_changes] == [("returns", "return_reason_code")]
    again = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir), evolve_schema=True)
    assert again.schema_changes == []
    assert query(box.warehouse, "SELECT table_name, column_name, data_type, load_id FROM bronze.schema_history") == [
        ("returns", "return_reason_code", "text", first.warehouse_load_id)]


def test_an_added_column_that_changes_type_rejects_its_file_and_the_run_goes_on(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    items = pq.read_table(sorted((SAMPLE / "order_items").glob("order_items_*.parquet"))[0])
    (box.raw / "order_items").mkdir()

    def deliver(name: str, start: int, promo: pa.Array) -> None:
        rows = items.slice(start, len(promo)).append_column("Promo Code", promo)
        pq.write_table(rows, box.raw / "order_items" / name)

    deliver("a.parquet", 0, pa.array(range(40), pa.int64()))
    deliver("b.parquet", 100, pa.array([f"P{i}" for i in range(30)]))  # text in the same load
    first = run_bronze(box.layout, table_names=["order_items"], pipelines_dir=str(box.pipelines_dir),
                       evolve_schema=True)
    deliver("c.parquet", 200, pa.array([f"Q{i}" for i in range(20)]))  # text in the next load
    second = run_bronze(box.layout, table_names=["order_items"], pipelines_dir=str(box.pipelines_dir),
                        evolve_schema=True)

    assert first.summary["order_items"].reasons["COLUMN_TYPE_CHANGED"] == 1
    assert second.summary["order_items"].reasons == {"COLUMN_TYPE_CHANGED": 1}
    assert query(box.warehouse, "SELECT src_filename, reason_detail FROM bronze.rejects "
                                "WHERE reason_code = 'COLUMN_TYPE_CHANGED' ORDER BY 1") == [
        (f"order_items/{name}", "column promo_code is text in this file but bigint in table order_items; a column "
                                "keeps the type it was first loaded with") for name in ("b.parquet", "c.parquet")]
    valid = first.summary["order_items"].valid
    for table in (warehouse_table(box.warehouse, "order_items"), delta_table(box.lake, "order_items")):
        assert table.num_rows == valid and set(table["src_filename"].to_pylist()) == {"order_items/a.parquet"}
        assert table.schema.field("promo_code").type == pa.int64()


def test_rescued_columns_are_promoted_in_every_sink_after_the_fact(tmp_path: Path, generator: ModuleType) -> None:
    from retail_bronze_source.run import promote_rescued

    box, _commit, _ = _box_with_new_upstream_column(tmp_path, generator, evolve=False)
    before = {r["return_id"]: json.loads(r["_rescued_data"])["return_reason_code"]
              for r in warehouse_table(box.warehouse, "returns").to_pylist() if r["_rescued_data"]}
    result = promote_rescued(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    assert [(p.table_name, p.column_name, p.rows) for p in result.promoted] == [
        ("returns", "return_reason_code", len(before))]
    for table in (warehouse_table(box.warehouse, "returns"), delta_table(box.lake, "returns")):
        by_id = dict(zip(table["return_id"].to_pylist(), table["return_reason_code"].to_pylist(), strict=True))
        assert {i: code for i, code in by_id.items() if code is not None} == before
        assert pc.all(pc.is_null(table["_rescued_data"])).as_py()
    assert query(box.warehouse, "SELECT table_name, column_name, data_type FROM bronze.schema_history") == [
        ("returns", "return_reason_code", "text")]
    assert "return_reason_code" in delta_table(box.lake, "schema_history")["column_name"].to_pylist()
    assert promote_rescued(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir)).promoted == []
    # Later deliveries fill the promoted column, in every sink, without --evolve-schema.
    later = generator.append_returns_commit(box.raw, seed=4, n=5, with_reason_code=True)
    again = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    assert again.failed_jobs == [] and again.warnings == []
    for table in (warehouse_table(box.warehouse, "returns"), delta_table(box.lake, "returns")):
        by_id = dict(zip(table["return_id"].to_pylist(), table["return_reason_code"].to_pylist(), strict=True))
        assert all(by_id[i] is not None for i in set(later["new_ids"]) | set(later["updated_ids"]))


def test_a_promotion_undone_by_a_reload_is_done_again_in_every_sink(tmp_path: Path) -> None:
    """A reload reads the files by the contract again (the promoted column's values back in `_rescued_data` of the
    warehouse) while the Delta mirror keeps the column: promoting again brings both to the same rows."""
    from retail_bronze_source.run import promote_rescued

    box = make_sandbox(tmp_path)
    shutil.copytree(SAMPLE / "orders", box.raw / "orders")
    header = (SAMPLE / "orders" / "orders_2024-03-01.csv").read_text().splitlines()[0]
    (box.raw / "orders" / "orders_extra.csv").write_text(
        f"{header},gift_wrap\n900001,210,1,2024-03-06T00:07:08+00:00,2024-03-06,paid,app,EUR,239.31,,,"
        "2024-03-10T00:00:00+00:00,yes\n")
    args = {"table_names": ["orders"], "pipelines_dir": str(box.pipelines_dir)}

    def gift_wraps() -> dict[str, list[tuple[object, ...]]]:
        out = {}
        for sink, table in (("duckdb", warehouse_table(box.warehouse, "orders")),
                            ("delta", delta_table(box.lake, "orders"))):
            assert table.schema.field("gift_wrap").type == pa.string(), sink
            out[sink] = sorted((r["order_id"], r["gift_wrap"], r["_rescued_data"]) for r in table.to_pylist()
                               if r["gift_wrap"] is not None or r["_rescued_data"] is not None)
        return out

    run_bronze(box.layout, **args)
    assert [p.rows for p in promote_rescued(box.layout, **args).promoted] == [1]
    assert gift_wraps() == {"duckdb": [(900001, "yes", None)], "delta": [(900001, "yes", None)]}
    reloaded = run_bronze(box.layout, reload=["orders"], **args)
    assert reloaded.failed_jobs == [] and reloaded.delta_failures == []
    again = promote_rescued(box.layout, **args)
    assert [(p.column_name, p.rows, p.refused) for p in again.promoted] == [("gift_wrap", 1, None)]
    assert gift_wraps() == {"duckdb": [(900001, "yes", None)], "delta": [(900001, "yes", None)]}
    assert promote_rescued(box.layout, **args).promoted == []
    run_bronze(box.layout, **args)
    assert gift_wraps() == {"duckdb": [(900001, "yes", None)], "delta": [(900001, "yes", None)]}


def test_evolve_schema_can_be_configured(tmp_path: Path, generator: ModuleType, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__EVOLVE_SCHEMA", "true")
    box, _commit, result = _box_with_new_upstream_column(tmp_path, generator, evolve=None)  # type: ignore[arg-type]
    assert "return_reason_code" in warehouse_table(box.warehouse, "returns").column_names
    assert [(c["table_name"], c["column_name"]) for c in result.schema_changes] == [("returns", "return_reason_code")]


def test_an_added_column_whose_name_collides_rejects_its_file_and_never_blocks_later_runs(tmp_path: Path) -> None:
    # Order_ID is order_id in the warehouse: dlt failed the load, and every later one, with or without the flag.
    spec = TableSpec(name="orders_x", schema=pa.schema([col("order_id", pa.int64(), required=True)]),
                     files="orders_x/*.csv", formats=("csv",), primary_key=("order_id",), write_disposition="merge")
    box = make_sandbox(tmp_path)
    folder = box.raw / "orders_x"
    folder.mkdir()
    (folder / "a.csv").write_text("order_id,Order_ID\n1,1\n")
    (folder / "b.csv").write_text("order_id,note\n2,fine\n")

    def run(evolve: bool) -> RunResult:
        return run_bronze(box.layout, tables=[spec], pipelines_dir=str(box.pipelines_dir), evolve_schema=evolve)

    first = run(True)
    assert first.failed_jobs == [] and first.summary["orders_x"].reasons == {"COLUMN_NAME_CONFLICT": 1}
    assert query(box.warehouse, "SELECT src_filename, reason_detail FROM bronze.rejects") == [
        ("orders_x/a.csv", "column 'Order_ID' would be added as 'order_id', the name of table column 'order_id'; "
                           "rename it in the file or declare it in the contract")]
    assert query(box.warehouse, "SELECT order_id, note FROM bronze.orders_x") == [(2, "fine")]
    (folder / "a.csv").unlink()
    (folder / "c.csv").write_text("order_id\n3\n")
    assert run(False).summary["orders_x"].valid == 1
    (folder / "d.csv").write_text("order_id,Order Note\n4,x\n")
    assert run(True).summary["orders_x"].valid == 1
    assert query(box.warehouse, "SELECT order_id, note, order_note FROM bronze.orders_x ORDER BY 1") == [
        (2, "fine", None), (3, None, None), (4, None, "x")]
    assert delta_table(box.lake, "orders_x").num_rows == 3
