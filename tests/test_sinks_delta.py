"""The Delta mirror: exactly once per load id, upserts that never go back in time, partitions and compaction."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, delta_table, make_sandbox, query
from deltalake import DeltaTable

from retail_bronze_source import settings
from retail_bronze_source.registry import RETAIL_TABLES
from retail_bronze_source.run import run_bronze
from retail_bronze_source.sinks import delta as delta_mirror
from retail_bronze_source.sinks.delta import (
    APP_ID,
    MirrorPlan,
    PackageRows,
    compact_tables,
    load_id_version,
    mirror_plan,
    mirror_to_delta,
)
from retail_bronze_source.storage import LAKE_SECTION, open_store


def mirror_table(target: Path, files: list[str], load_id: str, plan: MirrorPlan) -> tuple[int, str] | None:
    """One warehouse load's files of one table written to Delta (as one change log load of the same id)."""
    return delta_mirror.mirror_table(open_store(target, LAKE_SECTION), PackageRows.of(files), load_id, load_id, plan)


def _versions(path: Path, rows: list[tuple[int, str, int]]) -> str:
    """A parquet file of (id, value, version day) rows at `path`; returns its path."""
    table = pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "value": pa.array([r[1] for r in rows], pa.string()),
        "updated_at": pa.array([datetime(2024, 1, r[2], tzinfo=UTC) for r in rows], pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path)
    return str(path)


def test_upsert_never_replaces_a_newer_version(tmp_path: Path) -> None:
    target = tmp_path / "delta" / "things"
    plan = MirrorPlan(keys=("id",), sequence_column="updated_at")
    assert mirror_table(target, [_versions(tmp_path / "a.parquet", [(1, "v2", 2), (2, "v1", 1)])], "100.1", plan)
    assert mirror_table(target, [_versions(tmp_path / "b.parquet", [(1, "v1-late", 1), (2, "v3", 3)])], "100.2", plan)
    rows = sorted(DeltaTable(str(target)).to_pyarrow_table().select(["id", "value"]).to_pylist(), key=str)
    assert rows == [{"id": 1, "value": "v2"}, {"id": 2, "value": "v3"}]


@pytest.mark.parametrize("metadata", [{"pattern": "v[0-9]"}, {"pattern": "v.*", "mostly_distinct": "true"}, None],
                         ids=["changed-value", "added-key", "dropped"])
def test_upsert_takes_rows_whose_contract_metadata_changed(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    target = tmp_path / "delta" / "things"
    plan = MirrorPlan(keys=("id",), sequence_column="updated_at")
    for load_id, name, meta, rows in (("100.1", "a", {"pattern": "v.*"}, [(1, "v1", 1), (2, "v1", 1)]),
                                      ("100.2", "b", metadata, [(1, "v2", 2), (3, "v2", 2)])):
        table = pq.read_table(_versions(tmp_path / f"{name}.parquet", rows))
        field = table.schema.field("value").with_metadata(meta) if meta else table.schema.field("value")
        pq.write_table(table.cast(table.schema.set(1, field.with_nullable(False))), tmp_path / f"{name}.parquet")
        assert mirror_table(target, [str(tmp_path / f"{name}.parquet")], load_id, plan)
    rows = sorted(DeltaTable(str(target)).to_pyarrow_table().select(["id", "value"]).to_pylist(), key=str)
    assert rows == [{"id": 1, "value": "v2"}, {"id": 2, "value": "v1"}, {"id": 3, "value": "v2"}]


def test_a_load_id_is_mirrored_once_even_when_repeated(tmp_path: Path) -> None:
    target = tmp_path / "delta" / "log"
    files = [_versions(tmp_path / "a.parquet", [(1, "x", 1), (2, "y", 1)])]
    assert mirror_table(target, files, "200.5", MirrorPlan()) == (2, "append")
    assert mirror_table(target, files, "200.5", MirrorPlan()) is None
    assert mirror_table(target, files, "199.0", MirrorPlan()) is None
    table = DeltaTable(str(target))
    assert table.to_pyarrow_table().num_rows == 2
    assert table.transaction_version(APP_ID) == load_id_version("200.5")


@pytest.mark.parametrize("max_open_files", [32, 2], ids=["streamed", "sorted-first"])
def test_partitioned_append_keeps_every_row_in_its_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             max_open_files: int) -> None:
    monkeypatch.setattr(settings, "DELTA_MAX_OPEN_FILES", max_open_files)
    monkeypatch.setattr(settings, "DELTA_MAX_ROWS_PER_FILE", 7)
    monkeypatch.setattr(settings, "BATCH_ROWS", 4)
    monkeypatch.setattr(settings, "DELTA_MAX_PENDING_ROWS", 10)
    regions = ["north", "a/b c", None, "zürich=1"]
    first = pa.table({"id": pa.array(range(40), pa.int64()),
                      "region": pa.array([regions[i % 4] for i in range(40)], pa.string()),
                      "deleted": pa.array([i % 10 == 3 if i % 7 else None for i in range(40)], pa.bool_())})
    second = pa.table({"id": pa.array(range(40, 50), pa.int64()), "region": pa.array(["north"] * 10, pa.string()),
                       "deleted": pa.array([False] * 10), "note": pa.array([f"n{i}" for i in range(10)])})
    files = []
    for name, table in (("a", first), ("b", second)):
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=6)
        files.append(str(tmp_path / f"{name}.parquet"))
    target = tmp_path / "delta" / "regional"
    plan = MirrorPlan(partition_by=("region",), hard_delete_marker="deleted")
    assert mirror_table(target, files, "300.1", plan) == (50, "append")
    table = DeltaTable(str(target))
    assert table.metadata().partition_columns == ["region"]
    sizes = table.get_add_actions(flatten=True).column("num_records").to_pylist()
    assert max(sizes) <= 7 and sum(sizes) == 46
    loaded = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    expected = [r | {"note": None} for r in first.to_pylist() if r["deleted"] is not True]
    expected += [r for r in second.to_pylist()]
    assert loaded == sorted(expected, key=lambda r: r["id"])


def _regional(path: Path, rows: list[tuple[int, str, int, str]]) -> str:
    """A parquet file of (id, region, version day, value) rows at `path`; returns its path."""
    pq.write_table(pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "region": pa.array([r[1] for r in rows], pa.string()),
        "updated_at": pa.array([datetime(2024, 1, r[2], tzinfo=UTC) for r in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([r[3] for r in rows], pa.string()),
    }), path)
    return str(path)


@pytest.mark.parametrize("moved", [False, True], ids=["partition-wise", "key-moved-partition"])
def test_partitioned_upsert_keeps_one_newest_version_per_key(tmp_path: Path, moved: bool) -> None:
    target = tmp_path / "delta" / "regional"
    plan = MirrorPlan(keys=("id",), sequence_column="updated_at", partition_by=("region",))
    first = [(1, "north", 2, "a"), (2, "north", 2, "b"), (3, "south", 2, "c"), (4, "east", 2, "d")]
    assert mirror_table(target, [_regional(tmp_path / "a.parquet", first)], "400.1", plan) == (4, "append")
    update = [(1, "north", 3, "a2"), (2, "north", 1, "b-late"), (3, "south", 3, "c2"), (5, "west", 3, "e"),
              (4, "west" if moved else "east", 3, "d2")]
    mode = "upsert" if moved else "upsert by partition"
    assert mirror_table(target, [_regional(tmp_path / "b.parquet", update)], "400.2", plan) == (5, mode)
    table = DeltaTable(str(target))
    rows = sorted((r["id"], r["region"], r["value"]) for r in table.to_pyarrow_table().to_pylist())
    assert rows == [(1, "north", "a2"), (2, "north", "b"), (3, "south", "c2"),
                    (4, "west" if moved else "east", "d2"), (5, "west", "e")]
    assert table.transaction_version(APP_ID) == load_id_version("400.2")
    assert mirror_table(target, [str(tmp_path / "b.parquet")], "400.2", plan) is None


def test_registry_plans_partition_the_big_tables() -> None:
    plans = {spec.name: mirror_plan(spec.name, RETAIL_TABLES) for spec in RETAIL_TABLES}
    assert plans["orders"] == MirrorPlan(keys=("order_id",), sequence_column="updated_at", partition_by=("order_dt",))
    assert plans["events"].partition_by == ("event_date",) and plans["events"].keys == ()
    assert plans["sensors"].partition_by == ("store_id", "reading_month")
    assert mirror_plan("manifest_processed_files", RETAIL_TABLES).keys == ("src_path", "file_fingerprint")


def test_run_mirrors_partitioned_tables_and_rerun_of_the_mirror_writes_nothing(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=SAMPLE)
    result = run_bronze(box.layout, table_names=["orders", "events", "sensors"], pipelines_dir=str(box.pipelines_dir))
    delta_root = box.lake / "bronze" / "delta"
    for name, columns in (("orders", ["order_dt"]), ("events", ["event_date"]), ("sensors", ["store_id", "reading_month"])):
        assert DeltaTable(str(delta_root / name)).metadata().partition_columns == columns
    events = delta_table(box.lake, "events")
    assert events.column("event_date").to_pylist() == [ts.date() for ts in events.column("event_ts").to_pylist()]
    versions = {p.name: DeltaTable(str(p)).version() for p in delta_root.iterdir()}
    assert mirror_to_delta(open_store(box.lake, LAKE_SECTION), RETAIL_TABLES) == []
    assert versions == {p.name: DeltaTable(str(p)).version() for p in delta_root.iterdir()}
    assert {m.load_id for m in result.mirrored} == {result.warehouse_load_id}


def test_mirror_interrupted_half_way_is_completed_exactly_once(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=SAMPLE)
    run_bronze(box.layout, table_names=["customers", "events"], pipelines_dir=str(box.pipelines_dir))
    delta_root = box.lake / "bronze" / "delta"
    events_version = DeltaTable(str(delta_root / "events")).version()
    for name in ("customers", "rejects"):
        shutil.rmtree(delta_root / name)
    redone = mirror_to_delta(open_store(box.lake, LAKE_SECTION), RETAIL_TABLES)
    assert sorted(m.table_name for m in redone) == ["customers", "rejects"]
    assert DeltaTable(str(delta_root / "events")).version() == events_version
    for name in ("customers", "events", "rejects", "manifest_processed_files"):
        assert delta_table(box.lake, name).num_rows == query(box.warehouse, f"SELECT count(*) FROM bronze.{name}")[0][0]


@pytest.mark.parametrize("force", [False, True], ids=["automatic", "forced"])
def test_compaction_rewrites_small_files_and_keeps_every_row(tmp_path: Path, force: bool) -> None:
    delta_root = tmp_path / "delta"
    target = delta_root / "small"
    files = 40 if not force else 3
    for i in range(files):
        path = _versions(tmp_path / f"{i}.parquet", [(i * 10 + j, f"v{i}", 1) for j in range(5)])
        mirror_table(target, [path], f"{300 + i}.0", MirrorPlan())
    before = DeltaTable(str(target)).to_pyarrow_table().sort_by("id")
    done = compact_tables(open_store(delta_root, LAKE_SECTION), force=force)
    assert [(c.table_name, c.files_before) for c in done] == [("small", files)]
    assert done[0].files_after == 1
    assert DeltaTable(str(target)).to_pyarrow_table().sort_by("id").equals(before)


def test_few_small_files_are_left_alone_without_force(tmp_path: Path) -> None:
    target = tmp_path / "delta" / "few"
    for i in range(3):
        mirror_table(target, [_versions(tmp_path / f"{i}.parquet", [(i, "x", 1)])], f"{400 + i}.0", MirrorPlan())
    assert compact_tables(open_store(tmp_path / "delta", LAKE_SECTION)) == []
