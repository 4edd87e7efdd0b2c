"""Versions of a key delivered out of order across loads: the newest wins in every sink; late ones are counted."""

from __future__ import annotations

from pathlib import Path

from conftest import changelog_table, delta_table, make_sandbox, query, warehouse_table

from retail_bronze_source.run import run_bronze

HEADER = "customer_id,email,first_name,last_name,country_code,loyalty_tier,is_active,created_at,updated_at\n"


def _customer(customer_id: int, version: int) -> str:
    return (f"{customer_id},c{customer_id}.v{version}@example.com,Ann,Lee,DE,gold,true,2024-01-01T00:00:00Z,"
            f"2024-02-{version:02d}T00:00:00+02:00\n")


def test_shuffled_versions_never_go_back_in_time(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    folder = box.raw / "customers"
    folder.mkdir()
    deliveries = [[(1, 5), (2, 1)], [(1, 2), (2, 7), (3, 3)], [(1, 9), (3, 1), (2, 4)], [(3, 8), (1, 1)]]
    for i, delivery in enumerate(deliveries):
        (folder / f"customers_{i}.csv").write_text(HEADER + "".join(_customer(c, v) for c, v in delivery))
        run_bronze(box.layout, table_names=["customers"], pipelines_dir=str(box.pipelines_dir))
    newest = {1: "c1.v9@example.com", 2: "c2.v7@example.com", 3: "c3.v8@example.com"}
    for table in (warehouse_table(box.warehouse, "customers"), delta_table(box.lake, "customers")):
        assert dict(zip(table["customer_id"].to_pylist(), table["email"].to_pylist(), strict=True)) == newest
    log = changelog_table(box.lake, "customers")
    late = 4  # (1, 2), (3, 1), (2, 4), (1, 1) each arrive after a newer version of their key was loaded
    assert log.num_rows == sum(len(d) for d in deliveries) - late
    assert query(box.warehouse, "SELECT sum(valid_count), sum(late_count), sum(superseded_count) "
                                "FROM bronze.manifest_processed_files")[0] == (10, late, 0)
