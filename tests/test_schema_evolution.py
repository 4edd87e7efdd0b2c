"""Columns outside the contract: kept per row in `_rescued_data` with a warning, or added everywhere on request."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pyarrow.compute as pc
from conftest import changelog_table, delta_table, generate, make_sandbox, query, warehouse_table

from retail_bronze_source.run import run_bronze


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
                               "_rescued_data; declare them in schemas/schemas.py or run with --evolve-schema"]
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
