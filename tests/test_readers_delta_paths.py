"""Delta reader: a table's log may not make the reader read data outside the table directory."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from retail_bronze_source import reasons
from retail_bronze_source.discovery import discover_files
from retail_bronze_source.extract import TableExtractor
from retail_bronze_source.raw import FileRejected, RawFile
from retail_bronze_source.readers.delta import read_delta
from retail_bronze_source.registry import TableSpec
from schemas.schemas import col

OUTSIDE_ROWS = [666, 667]


def _table(raw: Path, *, change_feed: bool = False) -> Path:
    path = raw / "returns"
    configuration = {"delta.enableChangeDataFeed": "true"} if change_feed else None
    write_deltalake(path, pa.table({"id": [1, 2]}), configuration=configuration)
    return path


def _outside_file(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir(exist_ok=True)
    target = tmp_path / "outside" / "evil.parquet"
    pq.write_table(pa.table({"id": OUTSIDE_ROWS}), target)
    return target


def _commit(table: Path, version: int, actions: list[dict[str, object]]) -> None:
    lines = [{"commitInfo": {"operation": "WRITE", "timestamp": 0}}, *actions]
    (table / "_delta_log" / f"{version:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in lines))


def _add(path: str, size: int) -> dict[str, object]:
    return {"add": {"path": path, "partitionValues": {}, "size": size, "modificationTime": 0, "dataChange": True}}


def _file(path: Path, *, confined: bool = True) -> RawFile:
    return RawFile(fs=fsspec.filesystem("file"), path=str(path), rel_path=path.name, confined=confined)


def _ids(file: RawFile, starting_version: int | None = None) -> list[int]:
    return sorted(i for chunk in read_delta(file, 100, starting_version=starting_version)
                  for i in chunk.data.column("id").to_pylist())


def _paths(target: Path, table: Path) -> dict[str, str]:
    """Spellings of a data file outside `table` that deltalake reads, by name."""
    return {
        "absolute path": str(target),
        "file URL": target.as_uri(),
        "parent path": os.path.relpath(target, table),
        "percent-encoded parent path": os.path.relpath(target, table).replace("..", "%2E%2E"),
    }


@pytest.mark.parametrize("kind", ["absolute path", "file URL", "parent path", "percent-encoded parent path"])
def test_an_add_action_pointing_outside_the_table_is_refused_before_any_data_is_read(tmp_path: Path,
                                                                                      kind: str) -> None:
    table = _table(tmp_path / "raw")
    target = _outside_file(tmp_path)
    _commit(table, 1, [_add(_paths(target, table)[kind], target.stat().st_size)])
    assert _ids(_file(table, confined=False)) == [1, 2, *OUTSIDE_ROWS]  # what deltalake alone reads
    with pytest.raises(FileRejected) as info:
        _ids(_file(table))
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT
    assert info.value.reason_detail.startswith("returns: a data file of version 1 ")
    assert str(tmp_path) not in info.value.reason_detail


def test_a_data_file_linked_to_outside_the_table_is_refused(tmp_path: Path) -> None:
    table = _table(tmp_path / "raw")
    target = _outside_file(tmp_path)
    os.symlink(target, table / "linked.parquet")
    _commit(table, 1, [_add("linked.parquet", target.stat().st_size)])
    with pytest.raises(FileRejected) as info:
        _ids(_file(table))
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT
    assert "symbolic link" in info.value.reason_detail


def test_a_log_entry_linked_to_outside_the_table_is_refused(tmp_path: Path) -> None:
    table = _table(tmp_path / "raw")
    target = _outside_file(tmp_path)
    foreign = tmp_path / "outside" / "commit.json"
    foreign.write_text(json.dumps(_add(str(target), target.stat().st_size)) + "\n")
    os.symlink(foreign, table / "_delta_log" / f"{1:020d}.json")
    with pytest.raises(FileRejected) as info:
        _ids(_file(table))
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT
    assert "log entry" in info.value.reason_detail


def test_an_increment_without_change_feed_is_checked(tmp_path: Path) -> None:
    table = _table(tmp_path / "raw")
    write_deltalake(table, pa.table({"id": [3]}), mode="append")
    assert _ids(_file(table), starting_version=0) == [3]
    target = _outside_file(tmp_path)
    _commit(table, 2, [_add(target.as_uri(), target.stat().st_size)])
    with pytest.raises(FileRejected) as info:
        _ids(_file(table), starting_version=1)
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT


@pytest.mark.parametrize("action", ["add", "remove", "cdc"])
def test_an_increment_read_from_the_change_feed_is_checked(tmp_path: Path, action: str) -> None:
    """A change feed reads the files the increment's commits add, remove or record as changes: each is checked.
    deltalake resolves a change file's path inside the table, so a link is the way out."""
    table = _table(tmp_path / "raw", change_feed=True)
    write_deltalake(table, pa.table({"id": [3]}), mode="append")
    assert _ids(_file(table), starting_version=0) == [3]
    target = _outside_file(tmp_path)
    pq.write_table(pa.table({"id": OUTSIDE_ROWS, "_change_type": ["insert", "insert"]}), target)
    (table / "_change_data").mkdir()
    os.symlink(target, table / "_change_data" / "linked.parquet")
    path, size = "_change_data/linked.parquet", target.stat().st_size
    entry = {
        "add": _add(path, size),
        "remove": {"remove": {"path": path, "deletionTimestamp": 0, "dataChange": True, "size": size}},
        "cdc": {"cdc": {"path": path, "partitionValues": {}, "size": size, "dataChange": False}},
    }[action]
    _commit(table, 2, [entry])
    if action == "cdc":
        assert _ids(_file(table, confined=False), starting_version=1) == OUTSIDE_ROWS  # what deltalake alone reads
    with pytest.raises(FileRejected) as info:
        _ids(_file(table), starting_version=1)
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT
    where = "a data file of version 2" if action == "add" else f"a file of the {action} action"
    assert where in info.value.reason_detail


def test_the_extractor_loads_nothing_of_a_refused_table(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    table = _table(raw)
    target = _outside_file(tmp_path)
    _commit(table, 1, [_add(target.as_uri(), target.stat().st_size)])
    spec = TableSpec(name="returns", schema=pa.schema([col("id", pa.int64(), required=True)]), files="returns",
                     formats=("delta",), primary_key=("id",), write_disposition="merge", sequence_column=None)
    for allowed, rows in ((False, []), (True, [1, 2, *OUTSIDE_ROWS])):
        out: dict[str, list[pa.Table]] = {"rows": [], "rejects": [], "manifest": []}
        extractor = TableExtractor(replace(spec, allow_outside_raw_root=allowed), ingestion_ts=datetime.now(UTC),
                                   load_id="1", chunk_size=100, ledger={})
        for kind, data in extractor.run(discover_files(replace(spec, allow_outside_raw_root=allowed), str(raw))):
            out[kind].append(data)
        assert sorted(i for t in out["rows"] for i in t.column("id").to_pylist()) == rows
        codes = [r["reason_code"] for t in out["rejects"] for r in t.to_pylist()]
        assert codes == ([] if allowed else [reasons.OUTSIDE_RAW_ROOT])
