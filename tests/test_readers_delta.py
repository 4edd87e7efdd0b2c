"""Delta reader: full reads of the corpus tables, increments after a version, and rejected tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers.delta import delta_version, read_delta
from retail_bronze_source.reasons import FILE_UNREADABLE, UNSUPPORTED_FILE

CORPUS = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "delta" / "delta-rs"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus absent")


def raw_file(path: Path) -> RawFile:
    return RawFile(fs=fsspec.filesystem("file"), path=str(path), rel_path=path.name)


def read_all(path: Path, chunk_size: int = 1000, starting_version: int | None = None) -> pa.Table:
    chunks = list(read_delta(raw_file(path), chunk_size, starting_version=starting_version))
    assert_positions(chunks)
    return pa.concat_tables(c.data for c in chunks) if chunks else pa.table({})


def assert_positions(chunks: list[RawChunk]) -> None:
    seen = 0
    for chunk in chunks:
        assert chunk.sheet is None and not chunk.rejects
        assert chunk.row_numbers.to_pylist() == list(range(seen + 1, seen + chunk.data.num_rows + 1))
        seen += chunk.data.num_rows


@needs_corpus
@pytest.mark.parametrize(("name", "rows", "version"), [
    ("simple_table", 3, 4),
    ("simple_table_with_checkpoint", 11, 10),
    ("delta-0.8.0-partitioned", 7, 0),
    ("table_with_column_mapping", 5, 0),
    ("table-with-dv-small", 8, 1),
])
def test_corpus_row_counts(name: str, rows: int, version: int) -> None:
    assert read_all(CORPUS / name).num_rows == rows
    assert delta_version(raw_file(CORPUS / name)) == version


@needs_corpus
def test_corpus_values() -> None:
    assert sorted(read_all(CORPUS / "simple_table").column("id").to_pylist()) == [5, 7, 9]
    assert sorted(read_all(CORPUS / "simple_table_with_checkpoint").column("version").to_pylist()) == [
        0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    partitioned = read_all(CORPUS / "delta-0.8.0-partitioned")
    assert partitioned.schema == pa.schema([(c, pa.string()) for c in ("value", "year", "month", "day")])
    assert sorted(partitioned.to_pylist(), key=lambda r: int(r["value"]))[0] == {
        "value": "1", "year": "2020", "month": "1", "day": "1"}
    mapped = read_all(CORPUS / "table_with_column_mapping")
    assert mapped.column_names == ["Company Very Short", "Super Name"]
    assert mapped.column("Super Name").null_count == 0
    assert sorted(mapped.column("Super Name").to_pylist())[0] == "Anthony Johnson"
    assert sorted(read_all(CORPUS / "table-with-dv-small").column("value").to_pylist()) == [1, 2, 3, 4, 5, 6, 7, 8]


@needs_corpus
def test_scan_order_is_reproducible() -> None:
    path = CORPUS / "simple_table_with_checkpoint"
    first = read_all(path, chunk_size=4)
    assert all(read_all(path, chunk_size=4).equals(first) for _ in range(5))


def test_chunks_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": list(range(10))}))
    write_deltalake(path, pa.table({"return_id": list(range(10, 17))}), mode="append")
    chunks = list(read_delta(raw_file(path), 4))
    assert [c.data.num_rows for c in chunks] == [4, 4, 4, 4, 1]
    assert_positions(chunks)
    assert sorted(pa.concat_tables(c.data for c in chunks).column("return_id").to_pylist()) == list(range(17))


def test_rows_added_after_a_version_without_change_feed(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": [1, 2], "region": ["n", "s"]}), partition_by=["region"])
    write_deltalake(path, pa.table({"return_id": [3], "region": ["n"]}), mode="append", partition_by=["region"])
    write_deltalake(path, pa.table({"return_id": [4], "region": ["a b"]}), mode="append", partition_by=["region"])
    assert delta_version(raw_file(path)) == 2
    assert sorted(read_all(path, starting_version=0).column("return_id").to_pylist()) == [3, 4]
    assert read_all(path, starting_version=1).to_pylist() == [{"return_id": 4, "region": "a b"}]
    assert read_all(path, starting_version=2).num_rows == 0
    assert read_all(path, starting_version=9).num_rows == 0


def test_rows_added_after_a_version_with_change_feed(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": [1, 2], "status": ["open", "open"]}),
                    configuration={"delta.enableChangeDataFeed": "true"})
    write_deltalake(path, pa.table({"return_id": [3], "status": ["open"]}), mode="append")
    DeltaTable(path).update(updates={"status": "'closed'"}, predicate="return_id = 1")
    DeltaTable(path).delete(predicate="return_id = 2")
    added = read_all(path, starting_version=0)
    assert added.column_names == ["return_id", "status"]
    assert sorted(added.to_pylist(), key=lambda r: r["return_id"]) == [
        {"return_id": 1, "status": "closed"}, {"return_id": 3, "status": "open"}]
    assert read_all(path, starting_version=3).num_rows == 0


def test_not_a_delta_table(tmp_path: Path) -> None:
    (tmp_path / "returns").mkdir()
    (tmp_path / "returns" / "part-0.parquet").write_bytes(b"PAR1")
    for path in (tmp_path / "returns", tmp_path / "missing"):
        with pytest.raises(FileRejected) as info:
            list(read_delta(raw_file(path), 10))
        assert info.value.reason_code == UNSUPPORTED_FILE
        assert "is not a Delta table" in info.value.reason_detail


def test_unknown_reader_feature_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": [1]}))
    log = path / "_delta_log" / "00000000000000000000.json"
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    for action in actions:
        if "protocol" in action:
            action["protocol"] = {"minReaderVersion": 3, "minWriterVersion": 7,
                                  "readerFeatures": ["teleportation"], "writerFeatures": ["teleportation"]}
    log.write_text("".join(json.dumps(action) + "\n" for action in actions))
    with pytest.raises(FileRejected) as info:
        list(read_delta(raw_file(path), 10))
    assert info.value.reason_code == UNSUPPORTED_FILE
    assert "teleportation" in info.value.reason_detail


def test_missing_data_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": [1, 2]}))
    next(path.glob("*.parquet")).unlink()
    with pytest.raises(FileRejected) as info:
        list(read_delta(raw_file(path), 10))
    assert info.value.reason_code == FILE_UNREADABLE


def test_corrupt_log_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    write_deltalake(path, pa.table({"return_id": [1, 2]}))
    (path / "_delta_log" / "00000000000000000000.json").write_text('{"add": {"path": ')
    with pytest.raises(FileRejected) as info:
        list(read_delta(raw_file(path), 10))
    assert info.value.reason_code == FILE_UNREADABLE
    assert "\n" not in info.value.reason_detail


def test_int96_files_added_after_a_version_keep_their_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "spark_table"
    first = pa.table({"id": pa.array([1], pa.int64()), "ts": pa.array([0], pa.timestamp("us", tz="UTC"))})
    write_deltalake(str(path), first)
    # Spark writes INT96 timestamps by default; an added file as Spark would write it.
    stamps = [dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(1, 1, 1, tzinfo=dt.UTC)]
    added = pa.table({"id": pa.array([2, 3], pa.int64()), "ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    pq.write_table(added, path / "part-int96.parquet", use_deprecated_int96_timestamps=True)
    commit = [{"add": {"path": "part-int96.parquet", "partitionValues": {}, "size": os.path.getsize(
        path / "part-int96.parquet"), "modificationTime": int(time.time() * 1000), "dataChange": True}},
              {"commitInfo": {"operation": "WRITE"}}]
    (path / "_delta_log" / "00000000000000000001.json").write_text("\n".join(json.dumps(a) for a in commit) + "\n")
    assert read_all(path, starting_version=0).to_pylist() == [{"id": 2, "ts": stamps[0]}, {"id": 3, "ts": stamps[1]}]
    assert read_all(path).sort_by("id").column("ts").to_pylist()[1:] == stamps
