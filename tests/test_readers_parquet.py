"""Parquet reader and the JSON rendering of rejected binary records."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_bronze_source.helpers import records_as_json, row_number_array
from retail_bronze_source.raw import FileRejected, RawFile
from retail_bronze_source.readers.parquet import read_parquet
from retail_bronze_source.reasons import FILE_UNREADABLE, PATTERN_MISMATCH
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.validate import Validator
from schemas.schemas import col

BAD_DATA = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "parquet" / "parquet-testing" / "bad_data"
DECODABLE_BAD_DATA = {"ARROW-GH-43605.parquet": 21186}
"""Files of bad_data/ that pyarrow decodes completely, with their row counts; every other file is rejected."""


def raw_file(path: Path) -> RawFile:
    return RawFile(fs=fsspec.filesystem("file"), path=str(path), rel_path=path.name)


def sample_table() -> pa.Table:
    return pa.table({
        "id": pa.array([1, 2, 3, 4, 5], pa.int32()),
        "name": ["a", "b", None, "d", "e"],
        "price": pa.array([Decimal("1.50"), Decimal("2.00"), None, Decimal("0.01"), Decimal("10.10")],
                          pa.decimal128(9, 2)),
        "ts": pa.array([dt.datetime(2024, 1, i, 12, tzinfo=dt.UTC) for i in range(1, 6)], pa.timestamp("us", tz="UTC")),
        "tags": pa.array([["x"], [], None, ["y", "z"], ["w"]], pa.list_(pa.string())),
    })


def test_chunks_keep_stored_types_and_file_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pq.write_table(sample_table(), path, row_group_size=3)
    chunks = list(read_parquet(raw_file(path), 2))
    assert [c.data.num_rows for c in chunks] == [2, 2, 1]
    assert [c.row_numbers.to_pylist() for c in chunks] == [[1, 2], [3, 4], [5]]
    assert all(c.data.schema == sample_table().schema for c in chunks)
    assert all(not c.rejects and c.sheet is None for c in chunks)
    assert pa.concat_tables(c.data for c in chunks).equals(sample_table())


def test_view_types_are_read_as_plain_types_and_validate(tmp_path: Path) -> None:
    # Files written with string and binary views (Polars writes them) are read as plain strings and binaries: Arrow has
    # no take or regular expression kernels for views, and a reject among such rows failed the whole file. List views
    # stay (see `raw.plain_types`).
    path = tmp_path / "views.parquet"
    pq.write_table(pa.table({
        "code": pa.array(["AB-1", "bad", "CD-2"], pa.string_view()),
        "blob": pa.array([b"x", b"y", b"z"], pa.binary_view()),
        "meta": pa.array([{"k": "a"}, {"k": None}, None], pa.struct([("k", pa.string_view())])),
        "kept": pa.array([[1], [], [2, 3]], pa.list_view(pa.int64())),
    }), path)
    [chunk] = list(read_parquet(raw_file(path), 10))
    assert chunk.data.schema.field("code").type == pa.string()
    assert chunk.data.schema.field("blob").type == pa.binary()
    assert chunk.data.schema.field("meta").type == pa.struct([("k", pa.string())])
    assert pa.types.is_list_view(chunk.data.schema.field("kept").type)
    assert chunk.data["meta"].to_pylist() == [{"k": "a"}, {"k": None}, None]
    spec = TableSpec(name="v", schema=pa.schema([col("code", pa.string(), pattern="[A-Z]{2}-[0-9]")]), files="v/*",
                     formats=("parquet",), primary_key=(), write_disposition="append", sequence_column=None)
    result = Validator(spec).validate(chunk, "v/views.parquet")
    assert result.valid["code"].to_pylist() == ["AB-1", "CD-2"]
    assert [(r["src_row_number"], r["reason_code"]) for r in result.rejects.to_pylist()] == [(2, PATTERN_MISMATCH)]


def test_zero_row_file_gives_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(sample_table().slice(0, 0), path)
    assert sum(c.data.num_rows for c in read_parquet(raw_file(path), 10)) == 0


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.99], ids=["cut-30pct", "cut-70pct", "cut-99pct"])
def test_truncated_file_is_unreadable(tmp_path: Path, cut: float) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(sample_table(), whole)
    data = whole.read_bytes()
    path = tmp_path / "truncated.parquet"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FileRejected) as info:
        list(read_parquet(raw_file(path), 2))
    assert info.value.reason_code == FILE_UNREADABLE
    assert "truncated.parquet" in info.value.reason_detail


def test_not_parquet_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    path.write_text("order_id,amount\n1,2.5\n")
    with pytest.raises(FileRejected) as info:
        list(read_parquet(raw_file(path), 2))
    assert info.value.reason_code == FILE_UNREADABLE


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileRejected) as info:
        list(read_parquet(raw_file(tmp_path / "gone.parquet"), 2))
    assert info.value.reason_code == FILE_UNREADABLE


def bad_data_files() -> list[Path]:
    return sorted(BAD_DATA.glob("*.parquet")) if BAD_DATA.is_dir() else []


@pytest.mark.skipif(not BAD_DATA.is_dir(), reason="shared corpus absent")
def test_bad_data_corpus_is_complete() -> None:
    names = {p.name for p in bad_data_files()}
    assert names >= {*DECODABLE_BAD_DATA, "PARQUET-1481.parquet", "ARROW-GH-41317.parquet", "ARROW-GH-41321.parquet",
                     "ARROW-GH-45185.parquet", "ARROW-GH-47662.parquet", "ARROW-RS-GH-6229-DICTHEADER.parquet",
                     "ARROW-RS-GH-6229-LEVELS.parquet"}


@pytest.mark.skipif(not BAD_DATA.is_dir(), reason="shared corpus absent")
@pytest.mark.parametrize("path", bad_data_files(), ids=lambda p: p.name)
def test_bad_data_rejects_or_decodes_every_row(path: Path) -> None:
    rows = 0
    try:
        for chunk in read_parquet(raw_file(path), 1000):
            rows += chunk.data.num_rows
            assert chunk.row_numbers.to_pylist() == list(range(rows - chunk.data.num_rows + 1, rows + 1))
    except FileRejected as rejected:
        assert path.name not in DECODABLE_BAD_DATA, rejected
        assert rejected.reason_code == FILE_UNREADABLE
        assert path.name in rejected.reason_detail
        return
    assert rows == DECODABLE_BAD_DATA.get(path.name), f"{path.name} decoded but was expected to be rejected"
    assert rows == pq.ParquetFile(path).metadata.num_rows


def test_records_as_json_keeps_original_values() -> None:
    table = pa.table({
        "id": [1, None],
        "score": [float("nan"), float("-inf")],
        "price": pa.array([Decimal("1.500"), Decimal("-0.010")], pa.decimal128(7, 3)),
        "blob": [b"\x00\xff", None],
        "ts": pa.array([1_000_001, None], pa.timestamp("ns", tz="UTC")),
        "day": pa.array([dt.date(2024, 2, 29), None], pa.date32()),
        "nested": [{"a": [1.5, float("inf")]}, None],
    })
    texts = records_as_json(table).to_pylist()
    assert texts[0] == ('{"id":1,"score":"NaN","price":"1.500","blob":"AP8=","ts":"1970-01-01T00:00:00.001000001Z",'
                        '"day":"2024-02-29","nested":{"a":[1.5,"Infinity"]}}')
    assert json.loads(texts[1]) == {"id": None, "score": "-Infinity", "price": "-0.010", "blob": None, "ts": None,
                                    "day": None, "nested": None}
    assert records_as_json(table) == records_as_json(table)


def test_records_as_json_keeps_duplicate_column_names() -> None:
    table = pa.table([pa.array([1]), pa.array(["x"])], names=["a", "a"])
    assert records_as_json(table).to_pylist() == ['{"a":1,"a":"x"}']


def test_row_number_array() -> None:
    assert row_number_array(7, 3).to_pylist() == [7, 8, 9]
    assert row_number_array(1, 0).to_pylist() == []


def test_int96_timestamps_beyond_the_nanosecond_range_keep_their_value(tmp_path: Path) -> None:
    # Read as nanoseconds (pyarrow's default), 9999-12-31 wrapped around to 1816-03-30.
    stamps = [dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(2024, 1, 1), dt.datetime(1, 1, 1), None]
    path = tmp_path / "spark.parquet"
    pq.write_table(pa.table({"ts": pa.array(stamps, pa.timestamp("us"))}), path, use_deprecated_int96_timestamps=True)
    assert pq.ParquetFile(path).schema.column(0).physical_type == "INT96"
    chunks = list(read_parquet(raw_file(path), 3))
    assert [v for c in chunks for v in c.data["ts"].to_pylist()] == stamps
    assert all(not c.rejects for c in chunks)


def test_int96_nanoseconds_below_the_microsecond_reject_their_row(tmp_path: Path) -> None:
    path = tmp_path / "impala.parquet"
    table = pa.table({"id": [1, 2, 3], "ts": pa.array([1_000_000_123, 2_000_000_000, None], pa.timestamp("ns"))})
    pq.write_table(table, path, use_deprecated_int96_timestamps=True, row_group_size=2)
    chunks = list(read_parquet(raw_file(path), 1))
    assert [r for c in chunks for r in c.data.to_pylist()] == [
        {"id": 2, "ts": dt.datetime(1970, 1, 1, 0, 0, 2)}, {"id": 3, "ts": None}]
    assert [r for c in chunks for r in c.row_numbers.to_pylist()] == [2, 3]
    [reject] = [r for c in chunks for r in c.rejects]
    assert (reject.row_number, reject.reason_code) == (1, "TYPE_MISMATCH")
    assert "123 ns" in reject.reason_detail and json.loads(reject.raw_record)["id"] == 1
