"""The file ledger: unchanged files skipped, late copies loaded, changed files reloaded (or skipped, or failing)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, changelog_table, delta_table, make_sandbox, query, warehouse_table

from retail_bronze_source.registry import RETAIL_TABLES
from retail_bronze_source.run import run_bronze

EVENTS = next(s for s in RETAIL_TABLES if s.name == "events")
LINE = ('{{"event_id": "{id}", "event_ts": "2024-03-0{day}T10:00:00Z", "event_type": "search", "channel": "web", '
        '"customer_id": 1, "session_id": "s", "properties": {{"q": "{q}"}}}}\n')


def _event(n: int, q: str = "x") -> str:
    return LINE.format(id=f"00000000-0000-0000-0000-{n:012d}", day=1 + n % 5, q=q)


def _events_box(tmp_path: Path) -> tuple:
    box = make_sandbox(tmp_path)
    (box.raw / "events").mkdir()
    return box, box.raw / "events"


def _sinks(box) -> dict[str, list]:
    return {
        "duckdb": sorted(warehouse_table(box.warehouse, "events")["event_id"].to_pylist()),
        "delta": sorted(delta_table(box.lake, "events")["event_id"].to_pylist()),
    }


def test_changed_file_replaces_its_rows_and_an_old_mtime_file_still_loads(tmp_path: Path) -> None:
    box, folder = _events_box(tmp_path)
    (folder / "a.jsonl").write_text(_event(1) + _event(2))
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))

    (folder / "a.jsonl").write_text(_event(1, "changed") + _event(3))
    late = folder / "b.jsonl"
    late.write_text(_event(4))
    os.utime(late, (946684800, 946684800))
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))

    expected = sorted(f"00000000-0000-0000-0000-{n:012d}" for n in (1, 3, 4))
    assert _sinks(box) == {"duckdb": expected, "delta": expected}
    props = {r["event_id"][-1]: r["properties"] for r in warehouse_table(box.warehouse, "events").to_pylist()}
    assert "changed" in props["1"]
    assert changelog_table(box.lake, "events").num_rows == 5
    manifest = query(box.warehouse, "SELECT src_path, replaced_fingerprint IS NOT NULL FROM "
                                    "bronze.manifest_processed_files ORDER BY processed_at, src_path")
    assert manifest == [("events/a.jsonl", False), ("events/a.jsonl", True), ("events/b.jsonl", False)]


def test_unchanged_files_and_touched_files_load_nothing(tmp_path: Path) -> None:
    box, folder = _events_box(tmp_path)
    (folder / "a.jsonl").write_text(_event(1))
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    os.utime(folder / "a.jsonl")
    again = run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert again.summary["events"].files == 0
    assert query(box.warehouse, "SELECT count(*) FROM bronze.manifest_processed_files")[0][0] == 1


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_changed_file_policies(tmp_path: Path, policy: str) -> None:
    box, folder = _events_box(tmp_path)
    table = dataclasses.replace(EVENTS, changed_files=policy)
    (folder / "a.jsonl").write_text(_event(1))
    run_bronze(box.layout, tables=[table], pipelines_dir=str(box.pipelines_dir))
    (folder / "a.jsonl").write_text(_event(2))
    if policy == "fail":
        with pytest.raises(Exception, match="changed after it was loaded"):
            run_bronze(box.layout, tables=[table], pipelines_dir=str(box.pipelines_dir))
    else:
        run_bronze(box.layout, tables=[table], pipelines_dir=str(box.pipelines_dir))
        statuses = query(box.warehouse, "SELECT status FROM bronze.manifest_processed_files ORDER BY processed_at")
        assert statuses == [("ok",), ("changed_skipped",)]
    assert _sinks(box)["duckdb"] == ["00000000-0000-0000-0000-000000000001"]


def test_ledger_survives_a_wiped_pipelines_dir(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "stores", raw / "stores")
    shutil.copytree(SAMPLE / "customers", raw / "customers")
    box = make_sandbox(tmp_path, raw=raw)
    run_bronze(box.layout, table_names=["stores", "customers"], pipelines_dir=str(box.pipelines_dir))
    counts = query(box.warehouse, "SELECT (SELECT count(*) FROM bronze.customers), (SELECT count(*) FROM bronze.rejects)")
    shutil.rmtree(box.pipelines_dir)
    again = run_bronze(box.layout, table_names=["stores", "customers"], pipelines_dir=str(box.pipelines_dir))
    assert all(s.files == 0 for s in again.summary.values())
    assert query(box.warehouse, "SELECT (SELECT count(*) FROM bronze.customers), (SELECT count(*) FROM bronze.rejects)") == counts


def test_a_new_warehouse_and_lake_get_everything_despite_old_local_state(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "stores", raw / "stores")
    first = make_sandbox(tmp_path / "a", raw=raw)
    run_bronze(first.layout, table_names=["stores"], pipelines_dir=str(tmp_path / "shared_pipelines"))
    second = make_sandbox(tmp_path / "b", raw=raw)
    result = run_bronze(second.layout, table_names=["stores"], pipelines_dir=str(tmp_path / "shared_pipelines"))
    assert result.summary["stores"].files == 2
    assert warehouse_table(second.warehouse, "stores").num_rows == warehouse_table(first.warehouse, "stores").num_rows
    assert delta_table(second.lake, "stores").num_rows == warehouse_table(first.warehouse, "stores").num_rows


def test_deleted_outputs_are_rebuilt_from_the_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "stores", raw / "stores")
    box = make_sandbox(tmp_path, raw=raw)
    run_bronze(box.layout, table_names=["stores"], pipelines_dir=str(box.pipelines_dir))
    rows = warehouse_table(box.warehouse, "stores").num_rows
    shutil.rmtree(box.warehouse.parent)
    shutil.rmtree(box.lake)
    result = run_bronze(box.layout, table_names=["stores"], pipelines_dir=str(box.pipelines_dir))
    assert result.summary["stores"].files == 2
    assert warehouse_table(box.warehouse, "stores").num_rows == rows
    assert delta_table(box.lake, "stores").num_rows == rows


def test_a_changed_file_with_its_size_and_mtime_restored_is_loaded_again(tmp_path: Path) -> None:
    """`cp -p` and `rsync -t` keep the modification time: only the content tells the versions apart."""
    box, folder = _events_box(tmp_path)
    path = folder / "a.jsonl"
    path.write_text(_event(1, "aaaa") + _event(2))
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    stat = path.stat()
    path.write_text(_event(1, "bbbb") + _event(2))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert again.summary["events"].files == 1
    for table in (warehouse_table(box.warehouse, "events"), delta_table(box.lake, "events")):
        props = {r["event_id"][-1]: r["properties"] for r in table.to_pylist()}
        assert "bbbb" in props["1"] and len(props) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_loaded_once_it_can_be_read(tmp_path: Path) -> None:
    box, folder = _events_box(tmp_path)
    path = folder / "a.jsonl"
    path.write_text(_event(1) + _event(2))
    path.chmod(0)
    first = run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert first.summary["events"].reasons == {"FILE_UNREADABLE": 1}
    path.chmod(0o644)
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert len(_sinks(box)["duckdb"]) == len(_sinks(box)["delta"]) == 2


def test_a_file_that_could_not_be_read_is_read_again_by_the_next_run(tmp_path: Path) -> None:
    """A file gone between listing and reading (the same happens with permissions or a failing disk): recorded in
    the manifest as `FILE_UNREADABLE`, never in the ledger, so the next run that can read it loads its rows."""
    from datetime import UTC, datetime

    from retail_bronze_source.discovery import discover_files
    from retail_bronze_source.extract import TableExtractor

    box, folder = _events_box(tmp_path)
    path = folder / "a.jsonl"
    path.write_text(_event(1) + _event(2))
    ledger: dict = {}

    def extract() -> dict[str, list]:
        found = discover_files(EVENTS, str(box.raw))
        if path.exists() and attempt == 0:
            path.rename(folder / "moved_away")
        extractor = TableExtractor(EVENTS, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=1000,
                                   ledger=ledger)
        out: dict[str, list] = {}
        for kind, table in extractor.run(found):
            out.setdefault(kind, []).extend(table.to_pylist())
        return out

    attempt = 0
    first = extract()
    assert [(r["reason_code"], r["src_filename"]) for r in first["rejects"]] == [("FILE_UNREADABLE", "events/a.jsonl")]
    assert "events/a.jsonl" not in ledger
    (folder / "moved_away").rename(path)
    attempt = 1
    second = extract()
    assert len(second["rows"]) == 2 and "rejects" not in second
    assert ledger["events/a.jsonl"]["fingerprint"].startswith("sha256:")


def test_a_dangling_link_is_recorded_once_and_loaded_when_it_leads_to_a_file(tmp_path: Path) -> None:
    box, folder = _events_box(tmp_path)
    target = box.raw / "incoming" / "a.jsonl"
    (folder / "a.jsonl").symlink_to(target)
    first = run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert first.summary["events"].reasons == {"FILE_UNREADABLE": 1}
    assert run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir)).summary[
        "events"].files == 0
    target.parent.mkdir()
    target.write_text(_event(1) + _event(2))
    run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))
    assert _sinks(box)["duckdb"] == _sinks(box)["delta"] and len(_sinks(box)["duckdb"]) == 2


def test_a_delta_table_with_an_unsupported_feature_is_rejected_once(tmp_path: Path) -> None:
    from conftest import CORPUS

    source = CORPUS / "delta" / "delta-rs" / "table-with-dv-small"
    if not source.is_dir():
        pytest.skip("shared corpus absent")
    returns = next(s for s in RETAIL_TABLES if s.name == "returns")
    box = make_sandbox(tmp_path)
    shutil.copytree(source, box.raw / "returns")
    first = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    again = run_bronze(box.layout, table_names=["returns"], pipelines_dir=str(box.pipelines_dir))
    assert returns.formats == ("delta",)
    assert list(first.summary["returns"].reasons) in (["UNSUPPORTED_FILE"], ["MISSING_REQUIRED_COLUMN"])
    assert again.summary["returns"].files == 0
    assert query(box.warehouse, "SELECT count(*) FROM bronze.rejects")[0][0] == 1
    assert query(box.warehouse, "SELECT count(*) FROM bronze.manifest_processed_files")[0][0] == 1
