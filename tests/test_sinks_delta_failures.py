"""A broken Delta table of the mirror stops neither the other tables nor the run's other sinks, and the next run
after it is removed rebuilds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE, Sandbox, delta_table, make_sandbox, query
from deltalake import DeltaTable

from retail_bronze_source.run import run_bronze
from retail_bronze_source.sinks.delta import DeltaTablesFailed, MirrorPlan, PackageRows, compact_tables, mirror_table
from retail_bronze_source.storage import LAKE_SECTION, open_store

TABLES = ["customers", "events"]


def _raw(box: Sandbox) -> None:
    for table in TABLES:
        shutil.copytree(SAMPLE / table, box.raw / table)


def _deliver_more(box: Sandbox) -> None:
    lines = (SAMPLE / "customers" / "customers_2.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    (box.raw / "customers" / "customers_3.csv").write_text(
        "\n".join([header, *(r.replace(r.split(",")[0], str(90000 + i), 1) for i, r in enumerate(rows))]) + "\n")
    shutil.copy(SAMPLE / "events" / "events_1.jsonl", box.raw / "events" / "events_9.jsonl")


def _break(delta: Path) -> None:
    (delta / "_delta_log" / f"{0:020d}.json").unlink()


def _count(box: Sandbox, table: str) -> int:
    return int(query(box.warehouse, f"SELECT count(*) FROM bronze.{table}")[0][0])


def test_a_broken_delta_table_is_named_and_every_other_table_and_sink_completes(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    _raw(box)
    run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    delta_root = box.lake / "bronze" / "delta"
    _break(delta_root / "customers")
    _deliver_more(box)
    result = run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    [failure] = result.delta_failures
    assert failure.table_name == "customers" and failure.target == str(delta_root / "customers")
    assert str(failure).startswith("Delta table customers could not be written (DeltaError: ")
    assert f"remove {delta_root / 'customers'} to have the next run rebuild it" in str(failure)
    assert "\n" not in str(failure)
    assert result.summary["customers"].rows_read > 0 and result.summary["events"].rows_read > 0
    for table in ("events", "rejects", "manifest_processed_files"):
        assert delta_table(box.lake, table).num_rows == _count(box, table), table
    assert {m.table_name for m in result.mirrored} == {"events", "rejects", "manifest_processed_files"}
    assert result.rejects_files

    shutil.rmtree(delta_root / "customers")
    again = run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    assert again.delta_failures == []
    assert delta_table(box.lake, "customers").num_rows == _count(box, "customers")
    assert {m.table_name for m in again.mirrored} == {"customers"}
    assert len({m.load_id for m in again.mirrored}) == 2  # both loads, in order


def test_compaction_goes_on_past_a_broken_table(tmp_path: Path) -> None:
    delta_root = tmp_path / "delta"
    for name in ("broken", "fine"):
        for i in range(3):
            path = tmp_path / f"{name}{i}.parquet"
            pq.write_table(pa.table({"id": [i]}), path)
            mirror_table(open_store(delta_root / name, LAKE_SECTION), PackageRows.of([str(path)]), f"{100 + i}.0", f"{100 + i}.0", MirrorPlan())
    _break(delta_root / "broken")
    with pytest.raises(DeltaTablesFailed) as info:
        compact_tables(open_store(delta_root, LAKE_SECTION), force=True)
    assert [(c.table_name, c.files_before, c.files_after) for c in info.value.done] == [("fine", 3, 1)]
    assert [f.table_name for f in info.value.failures] == ["broken"]
    assert sorted(DeltaTable(str(delta_root / "fine")).to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2]


@pytest.mark.slow
def test_the_command_line_ends_with_one_line_naming_the_table_and_a_non_zero_exit(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    _raw(box)
    command = [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(box.raw), "--lake",
               str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
               "--tables", ",".join(TABLES)]
    assert subprocess.run(command, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    _break(box.lake / "bronze" / "delta" / "customers")
    _deliver_more(box)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        line for line in done.stderr.splitlines() if line.startswith("error: Delta table customers could not be written")]
    assert len(done.stderr.splitlines()) == 1
    assert "customers" in done.stdout and "rejects CSV: 0 file(s)" not in done.stdout
    assert delta_table(box.lake, "events").num_rows == _count(box, "events")
