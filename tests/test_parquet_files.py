import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_bronze_source import settings
from retail_bronze_source.parquet_files import RowFiles, files_for, parquet_options

MIN_ROWS_PER_FILE = settings.MIN_ROWS_PER_PARQUET_FILE
ROW_GROUP_ROWS = settings.PARQUET_ROW_GROUP_ROWS
SAMPLE_ROWS = settings.PARQUET_SAMPLE_ROWS


def bronze_like(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({
        "order_id": pa.array(ids, pa.int64()),
        "status": pa.array([("placed", "paid", "shipped")[i % 3] for i in ids]),
        "src_row_hash": pa.array([hashlib.sha256(str(i).encode()).hexdigest() for i in ids]),
        "note": pa.nulls(n, pa.string()),
    })


def column_chunks(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    group = pq.ParquetFile(path).metadata.row_group(0)
    chunks = [group.column(i) for i in range(group.num_columns)]
    return {c.path_in_schema: (c.compression, c.encodings) for c in chunks}


def test_repeating_columns_get_a_dictionary_and_row_hashes_neither_compression_nor_statistics(tmp_path: Path) -> None:
    table = bronze_like(SAMPLE_ROWS)
    options = parquet_options(table)
    assert options["use_dictionary"] == ["status", "note"]
    assert options["compression"] == {"order_id": "snappy", "status": "snappy", "src_row_hash": "none",
                                      "note": "snappy"}
    assert options["write_statistics"] == ["order_id", "status", "note"]
    pq.write_table(table, tmp_path / "t.parquet", **options)
    chunks = column_chunks(tmp_path / "t.parquet")
    assert chunks["src_row_hash"][0] == "UNCOMPRESSED" and "RLE_DICTIONARY" not in chunks["src_row_hash"][1]
    assert "RLE_DICTIONARY" in chunks["status"][1]
    group = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    with_statistics = {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}
    assert with_statistics == {"order_id": True, "status": True, "src_row_hash": False, "note": True}
    assert pq.read_table(tmp_path / "t.parquet").equals(table)


def test_a_sample_too_small_to_tell_gets_pyarrows_defaults() -> None:
    assert parquet_options(bronze_like(SAMPLE_ROWS // 10 - 1)) == {"use_dictionary": True, "compression": "snappy"}


@pytest.mark.parametrize(("rows", "files"), [(0, 1), (MIN_ROWS_PER_FILE - 1, 1), (2 * MIN_ROWS_PER_FILE, 2),
                                            (10 * MIN_ROWS_PER_FILE, 2)])
def test_files_for_keeps_each_file_big_enough(rows: int, files: int) -> None:
    assert files_for(rows) == files


def test_row_files_share_rows_evenly_and_lose_none(tmp_path: Path) -> None:
    with RowFiles(tmp_path, "orders", files=2) as out:
        for start, n in [(0, 200_000), (200_000, 90_000), (290_000, 200_000), (490_000, 10_000)]:
            out.write(bronze_like(n, start).select(["order_id", "status"]))
        written = out.close()
    assert sorted(w.path.name for w in written) == ["orders.0.0.parquet", "orders.1.0.parquet"]
    assert sorted(w.rows for w in written) == [210_000, 290_000]
    ids = pa.concat_tables([pq.read_table(w.path) for w in written])["order_id"].to_pylist()
    assert sorted(ids) == list(range(500_000))
    assert all(pq.ParquetFile(w.path).metadata.num_rows == w.rows for w in written)


def test_small_tables_are_written_in_whole_row_groups(tmp_path: Path) -> None:
    with RowFiles(tmp_path, "t") as out:
        for start in range(0, 200_000, 20_000):
            out.write(bronze_like(20_000, start).select(["order_id"]))
        written = out.close()
    metadata = pq.ParquetFile(written[0].path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [ROW_GROUP_ROWS,
                                                                                        200_000 - ROW_GROUP_ROWS]
    assert pq.read_table(written[0].path)["order_id"].to_pylist() == list(range(200_000))


def test_a_file_that_reaches_the_target_size_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "TARGET_FILE_SIZE", 1024)
    with RowFiles(tmp_path, "t") as out:
        for start in range(0, 3 * ROW_GROUP_ROWS + 5, ROW_GROUP_ROWS):
            out.write(bronze_like(min(ROW_GROUP_ROWS, 3 * ROW_GROUP_ROWS + 5 - start), start).select(["order_id"]))
        written = out.close()
    assert [(w.path.name, w.rows) for w in written] == [
        ("t.0.0.parquet", ROW_GROUP_ROWS), ("t.0.1.parquet", ROW_GROUP_ROWS), ("t.0.2.parquet", ROW_GROUP_ROWS),
        ("t.0.3.parquet", 5)]
    ids = pa.concat_tables([pq.read_table(w.path) for w in written])["order_id"].to_pylist()
    assert ids == list(range(3 * ROW_GROUP_ROWS + 5))


def test_row_files_start_a_new_file_when_the_columns_change(tmp_path: Path) -> None:
    with RowFiles(tmp_path, "t") as out:
        out.write(bronze_like(5).select(["order_id"]))
        out.write(bronze_like(3, 5).select(["order_id", "status"]))
        out.write(pa.table({"order_id": pa.array([], pa.int64())}))
        written = out.close()
    assert [(w.path.name, w.rows, w.schema.names) for w in written] == [
        ("t.0.0.parquet", 5, ["order_id"]), ("t.0.1.parquet", 3, ["order_id", "status"])]


def test_a_failed_write_is_raised_not_lost(tmp_path: Path) -> None:
    with RowFiles(tmp_path / "missing", "t") as out:
        out.write(bronze_like(3))
        with pytest.raises(RuntimeError, match=r"writing Parquet file .*missing.* failed"):
            out.close()
