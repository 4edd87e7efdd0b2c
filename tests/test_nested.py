"""Nested and binary contract columns: typed and JSON text values converted exactly or rejected, loaded everywhere."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Sandbox, changelog_table, delta_table, query

from retail_bronze_source import reasons
from retail_bronze_source.nested import convert
from retail_bronze_source.raw import RawChunk
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.run import run_bronze
from retail_bronze_source.validate import Validator
from schemas.schemas import col

UTC_TS = pa.timestamp("us", tz="UTC")
ATTRS = pa.struct([("size", pa.int32()), ("at", UTC_TS), ("price", pa.decimal128(6, 2))])
SCHEMA = pa.schema([
    col("id", pa.int64(), required=True),
    col("tags", pa.list_(pa.string())),
    col("attrs", ATTRS),
    col("counts", pa.map_(pa.string(), pa.int64())),
    col("blob", pa.binary()),
])


def converted(values: list[Any], type_: pa.DataType, source: pa.DataType | None = None,
              time_zone: str = "UTC") -> list[tuple[Any, bool]]:
    result, failed = convert(pa.chunked_array([pa.array(values, source)]), type_, time_zone)
    return list(zip(result.to_pylist(), failed.to_pylist(), strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"size": 3}', {"size": 3, "at": None, "price": None}),
        ('{"at": "2024-01-01T10:00:00+02:00"}', {"size": None, "at": dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC),
                                                  "price": None}),
        ('{"at": "2024-01-01 10:00:00.123456000"}',
         {"size": None, "at": dt.datetime(2024, 1, 1, 10, 0, 0, 123456, tzinfo=dt.UTC), "price": None}),
        ('{"price": 12.3}', {"size": None, "at": None, "price": Decimal("12.30")}),
        ('{"price": 1e2}', {"size": None, "at": None, "price": Decimal("100.00")}),
        ("null", None),
    ],
    ids=["missing-fields-read-null", "offset-to-utc", "zero-nanoseconds", "decimal-widened", "exponent", "json-null"],
)
def test_json_text_converts_into_a_struct(text: str, expected: dict[str, Any] | None) -> None:
    [(value, failed)] = converted([text], ATTRS)
    assert (value, failed) == (expected, False)


@pytest.mark.parametrize(
    "text",
    ['{"size": 3, "colour": "red"}', '{"size": 1.5}', '{"size": "3"}', '{"size": 3000000000}', '{"price": 12.345}',
     '{"at": "2024-01-01 10:00:00.123456789"}', '{"at": "epoch"}', '{"size": 1, "size": 2}', '{"size": NaN}',
     '[1, 2]', '{"size": 1', '{"size": true}'],
    ids=["unknown-key-would-be-lost", "fraction-for-integer", "string-for-integer", "integer-out-of-range",
         "decimal-would-round", "nanoseconds", "word-for-timestamp", "duplicate-key", "nan", "array-for-struct",
         "broken-json", "boolean-for-integer"],
)
def test_json_text_that_would_change_is_a_mismatch(text: str) -> None:
    assert converted([text], ATTRS) == [(None, True)]


def test_lists_maps_and_binary_from_text() -> None:
    assert converted(['["a", "b"]', "[]", "[1]", ""], pa.list_(pa.string())) == [
        (["a", "b"], False), ([], False), (None, True), (None, False)]
    assert converted(['{"k": 1}', '[["k", 2]]', '[["k", 1], ["k", 2]]'], pa.map_(pa.string(), pa.int64())) == [
        ([("k", 1)], False), ([("k", 2)], False), (None, True)]
    assert converted(['{"7": "x"}', '{"x": "y"}'], pa.map_(pa.int32(), pa.string())) == [
        ([(7, "x")], False), (None, True)]
    assert converted(["//4=", "YQ", "not base64!", "é"], pa.binary()) == [
        (b"\xff\xfe", False), (None, True), (None, True), (None, True)]


def test_naive_timestamps_in_json_text_are_read_in_the_table_time_zone() -> None:
    [(value, _)] = converted(['["2024-07-01T10:00:00"]'], pa.list_(UTC_TS), time_zone="Europe/Berlin")
    assert value == [dt.datetime(2024, 7, 1, 8, tzinfo=dt.UTC)]


def test_typed_values_convert_by_arrow_safe_cast_row_by_row() -> None:
    assert converted([[1, 2], [1, 300], None, [5]], pa.list_(pa.int8()), pa.list_(pa.int64())) == [
        ([1, 2], False), (None, True), (None, False), ([5], False)]
    assert converted([{"size": 1}, {"size": 2**40}], ATTRS, pa.struct([("size", pa.int64())])) == [
        ({"size": 1, "at": None, "price": None}, False), (None, True)]
    # A struct with a field the contract lacks would lose it: every value is a mismatch.
    assert converted([{"size": 1, "colour": "red"}], ATTRS) == [(None, True)]
    assert converted([[1001], [2000]], pa.list_(UTC_TS), pa.list_(pa.timestamp("ns", tz="UTC"))) == [
        (None, True), ([dt.datetime(1970, 1, 1, 0, 0, 0, 2, tzinfo=dt.UTC)], False)]
    assert converted([b"ab", None], pa.binary(), pa.binary(2)) == [(b"ab", False), (None, False)]
    assert converted([["12"]], pa.list_(pa.int64())) == [(None, True)]  # text leaves are not parsed as numbers
    assert converted([[dt.datetime(2024, 1, 1, 5)]], pa.list_(pa.date32())) == [(None, True)]


def test_the_validator_rejects_the_rows_and_shows_their_values() -> None:
    spec = TableSpec(name="n", schema=SCHEMA, files="n/*", formats=("jsonl",), primary_key=(),
                     write_disposition="append")
    data = pa.table({"id": ["1", "2", "3"], "tags": ['["x"]', "[1]", None], "attrs": [None, None, '{"size": 1}'],
                     "blob": ["YQ==", None, "!"]})
    result = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1, 2, 3]), columns_per_record=True),
                                      "n/a.jsonl")
    assert result.valid.to_pylist()[0] | {"src_row_hash": None} == {
        "id": 1, "tags": ["x"], "attrs": None, "counts": None, "blob": b"a", "src_row_number": 1,
        "src_row_hash": None, "_rescued_data": None}
    assert result.valid.schema.field("attrs").type == ATTRS
    assert [(r["src_row_number"], r["reason_code"], r["column_name"], r["reason_detail"])
            for r in result.rejects.to_pylist()] == [
        (2, reasons.TYPE_MISMATCH, "tags", "'[1]' is not a valid list<item: string>"),
        (3, reasons.TYPE_MISMATCH, "blob", "'!' is not a valid binary")]


def test_nested_columns_load_into_every_sink(sandbox: Sandbox) -> None:
    spec = TableSpec(name="nested", schema=SCHEMA, files="nested/*", formats=("csv", "jsonl", "parquet"),
                     primary_key=("id",), write_disposition="merge")
    folder = sandbox.raw / "nested"
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        '{"id": 1, "tags": ["x", "y"], "attrs": {"size": 3, "at": "2024-01-01T00:00:00Z"}, "counts": {"k": 1}, '
        '"blob": "//4="}\n{"id": 2, "tags": [1]}\n')
    (folder / "b.csv").write_text('id,tags,attrs,counts,blob\n3,"[""z""]","{""price"": 1.5}","{""a"": 2}",YQ==\n')
    pq.write_table(pa.table({"id": [4], "tags": pa.array([["p"]], pa.list_(pa.large_string())),
                             "attrs": pa.array([{"size": 9}], pa.struct([("size", pa.int64())]))}),
                   folder / "c.parquet")
    result = run_bronze(sandbox.layout, tables=[spec], pipelines_dir=str(sandbox.pipelines_dir))

    assert (result.summary["nested"].valid, result.summary["nested"].reasons) == (3, {reasons.TYPE_MISMATCH: 1})
    # DuckDB: dlt's json type (JSON text); binary as BLOB.
    assert dict(query(sandbox.warehouse, "SELECT column_name, data_type FROM information_schema.columns "
                                         "WHERE table_name = 'nested' AND column_name IN ('tags', 'attrs', 'counts', "
                                         "'blob')")) == {"tags": "JSON", "attrs": "JSON", "counts": "JSON",
                                                         "blob": "BLOB"}
    rows = query(sandbox.warehouse, "SELECT id, tags, attrs, counts, blob FROM bronze.nested ORDER BY id")
    assert [(i, json.loads(t), json.loads(a) if a else None, json.loads(c) if c else None, b)
            for i, t, a, c, b in rows] == [
        (1, ["x", "y"], {"size": 3, "at": "2024-01-01 00:00:00+00", "price": None}, {"k": 1}, b"\xff\xfe"),
        (3, ["z"], {"size": None, "at": None, "price": 1.5}, {"a": 2}, b"a"),
        (4, ["p"], {"size": 9, "at": None, "price": None}, None, None)]
    # The change log and Delta keep the contract's nested types.
    expected = [
        {"id": 1, "tags": ["x", "y"], "attrs": {"size": 3, "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "price": None},
         "counts": [("k", 1)], "blob": b"\xff\xfe"},
        {"id": 3, "tags": ["z"], "attrs": {"size": None, "at": None, "price": Decimal("1.50")}, "counts": [("a", 2)],
         "blob": b"a"},
        {"id": 4, "tags": ["p"], "attrs": {"size": 9, "at": None, "price": None}, "counts": None, "blob": None}]
    for table in (delta_table(sandbox.lake, "nested"), changelog_table(sandbox.lake, "nested")):
        assert table.schema.field("attrs").type == ATTRS
        assert pa.types.is_map(table.schema.field("counts").type)
        assert table.select(["id", "tags", "attrs", "counts", "blob"]).sort_by("id").to_pylist() == expected
    again = run_bronze(sandbox.layout, tables=[spec], pipelines_dir=str(sandbox.pipelines_dir))
    assert again.summary["nested"].files == 0


def test_a_parquet_column_of_the_contract_type_passes_unchanged() -> None:
    values = pa.array([{"size": 1, "at": None, "price": Decimal("2.50")}], ATTRS)
    result, failed = convert(pa.chunked_array([values]), ATTRS, "UTC")
    assert result.equals(values) and failed.to_pylist() == [False]
