"""The upstream Delta table of returns: read by increments, tombstones as soft (or hard) deletes, re-inserts revive."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from conftest import Sandbox, delta_table, generate, make_sandbox, query, warehouse_table
from deltalake import DeltaTable, write_deltalake

from retail_bronze_source.registry import RETAIL_TABLES
from retail_bronze_source.run import run_bronze

RETURNS = next(s for s in RETAIL_TABLES if s.name == "returns")




def _returns_box(tmp_path: Path) -> Sandbox:
    box = make_sandbox(tmp_path)
    generate(box.raw, "--tables", "returns")
    return box


def _by_id(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {row["return_id"]: row for row in table.to_pylist()}


def _manifest_rows(box: Sandbox) -> int:
    return query(box.warehouse, "SELECT row_count FROM bronze.manifest_processed_files WHERE src_path = 'returns' "
                                "ORDER BY processed_at DESC LIMIT 1")[0][0]


def test_later_commits_are_read_as_increments_with_soft_deletes(tmp_path: Path, generator: ModuleType) -> None:
    box = _returns_box(tmp_path)
    first = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    initial = _by_id(warehouse_table(box.warehouse, "returns"))
    assert first.summary["returns"].rows_read == 100

    commit = generator.append_returns_commit(box.raw, seed=7, n=40)
    second = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    assert second.summary["returns"].rows_read == commit["rows"] == 40
    assert _manifest_rows(box) == 40
    rows = _by_id(warehouse_table(box.warehouse, "returns"))
    assert set(rows) == set(initial) | set(commit["new_ids"])
    assert commit["deleted_ids"]
    for rid in commit["deleted_ids"]:
        assert rows[rid]["is_deleted"] is True
        assert rows[rid]["deleted_at"] == rows[rid]["updated_at"]
    for rid in set(commit["updated_ids"]) - set(commit["deleted_ids"]):
        assert rows[rid]["updated_at"] > initial[rid]["updated_at"]
        assert rows[rid]["deleted_at"] is None
    assert _by_id(delta_table(box.lake, "returns")).keys() == rows.keys()

    revived_id = commit["deleted_ids"][0]
    current = DeltaTable(str(box.raw / "returns")).to_pyarrow_table(columns=list(RETURNS.schema.names))
    revived = current.filter(pc.equal(current["return_id"], revived_id)).sort_by([("updated_at", "descending")])
    revived = revived.slice(0, 1)
    revived = revived.set_column(revived.schema.get_field_index("is_deleted"), "is_deleted", pa.array([False]))
    later = pc.add(revived["updated_at"], pa.scalar(timedelta(days=1)))
    revived = revived.set_column(revived.schema.get_field_index("updated_at"), "updated_at", later)
    write_deltalake(str(box.raw / "returns"), revived, mode="append")
    third = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    assert third.summary["returns"].rows_read == 1
    for table in (warehouse_table(box.warehouse, "returns"), delta_table(box.lake, "returns")):
        row = _by_id(table)[revived_id]
        assert (row["is_deleted"], row["deleted_at"]) == (False, None)


def test_hard_delete_flag_removes_tombstoned_keys(tmp_path: Path, generator: ModuleType) -> None:
    box = _returns_box(tmp_path)
    hard = dataclasses.replace(RETURNS, hard_delete=True)
    run_bronze(box.layout, tables=[hard], pipelines_dir=str(box.pipelines_dir))
    commit = generator.append_returns_commit(box.raw, seed=7, n=40)
    run_bronze(box.layout, tables=[hard], pipelines_dir=str(box.pipelines_dir))
    for table in (warehouse_table(box.warehouse, "returns"), delta_table(box.lake, "returns")):
        ids = set(table["return_id"].to_pylist())
        assert commit["deleted_ids"] and not ids & set(commit["deleted_ids"])
        assert set(commit["new_ids"]) <= ids
    assert not pc.any(warehouse_table(box.warehouse, "returns")["is_deleted"]).as_py()
