"""The validator: typed parsing, every contract reason code, one reject record per failed check, the row hash."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from retail_bronze_source import reasons, settings
from retail_bronze_source.raw import FileRejected, ParseReject, RawChunk
from retail_bronze_source.readers.csv import format_csv_records
from retail_bronze_source.registry import DerivedColumn, TableSpec
from retail_bronze_source.row_hash import row_hashes
from retail_bronze_source.validate import Validator, _pattern_matches
from schemas.schemas import col

SCHEMA = pa.schema(
    [
        col("id", pa.int64(), required=True, min_value="1"),
        col("amount", pa.decimal128(6, 2), min_value="0", max_value="1000"),
        col("status", pa.string(), accepted=("new", "done")),
        col("email", pa.string(), pattern=r"[a-z]+@[a-z]+\.[a-z]{2,}"),
        col("seen_at", pa.timestamp("us", tz="UTC")),
        col("day", pa.date32()),
        col("flag", pa.bool_()),
        col("props", pa.string(), json_text=True),
    ]
)
UTC_TS = pa.timestamp("us", tz="UTC")
SPEC = TableSpec(name="things", schema=SCHEMA, files="things/*", formats=("csv",), primary_key=("id",),
                 write_disposition="append", sequence_column=None)


def text_chunk(rows: list[dict[str, str]], **kwargs: object) -> RawChunk:
    """A chunk as the CSV reader gives it (its records re-serialized for rejects)."""
    names = list(rows[0]) if rows else list(SCHEMA.names)
    data = pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})
    kwargs.setdefault("render", format_csv_records)
    return RawChunk(data=data, row_numbers=pa.array(range(1, len(rows) + 1), pa.int64()), **kwargs)  # type: ignore[arg-type]


GOOD = {"id": "7", "amount": "12.50", "status": "new", "email": "a@b.de", "seen_at": "2024-03-01T10:00:00+02:00",
        "day": "2024-03-01", "flag": "true", "props": '{"k": [1, 2]}'}


def test_valid_text_row_is_parsed_into_contract_types() -> None:
    result = Validator(SPEC).validate(text_chunk([GOOD]), "things/a.csv")
    assert result.rejects.num_rows == 0
    row = result.valid.to_pylist()[0]
    assert row["id"] == 7
    assert row["amount"] == Decimal("12.50")
    assert row["seen_at"] == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert row["day"] == date(2024, 3, 1)
    assert row["flag"] is True
    assert row["src_row_number"] == 1
    assert result.valid.schema.field("amount").type == pa.decimal128(6, 2)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("id", "1.5", reasons.TYPE_MISMATCH),
        ("id", "", reasons.NOT_NULL),
        ("id", "0", reasons.OUT_OF_RANGE),
        ("amount", "12.345", reasons.TYPE_MISMATCH),
        ("amount", "1000.01", reasons.OUT_OF_RANGE),
        ("amount", "12.3.4", reasons.TYPE_MISMATCH),
        ("status", "lost", reasons.ACCEPTED_VALUES),
        ("email", "not-an-email", reasons.PATTERN_MISMATCH),
        ("seen_at", "yesterday", reasons.TYPE_MISMATCH),
        ("day", "2024-02-30", reasons.TYPE_MISMATCH),
        ("flag", "maybe", reasons.TYPE_MISMATCH),
        ("props", "{broken", reasons.TYPE_MISMATCH),
    ],
    ids=lambda v: str(v) if v else "empty",
)
def test_each_contract_violation_has_its_reason(column: str, value: str, reason: str) -> None:
    result = Validator(SPEC).validate(text_chunk([GOOD, {**GOOD, column: value}]), "things/a.csv")
    assert result.valid.num_rows == 1
    assert result.rows_rejected == 1
    rejects = result.rejects.to_pylist()
    assert [(r["reason_code"], r["column_name"], r["src_row_number"]) for r in rejects] == [(reason, column, 2)]
    assert value in rejects[0]["reason_detail"] or reason == reasons.NOT_NULL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7), ("0012", 12), ("9223372036854775807", 2**63 - 1),  # digits only: no regular expression
        (" 12 ", 12), ("+12", 12), ("-3", None),  # the regular expression decides; -3 is out of range (min 1)
        ("1.5", None), ("1e3", None), ("0x10", None), ("1_000", None), ("\uff11\uff12", None), ("9223372036854775808", None),
    ],
)
def test_integer_text_converts_only_when_it_is_an_integer(text: str, expected: int | None) -> None:
    result = Validator(SPEC).validate(text_chunk([{**GOOD, "id": text}]), "things/a.csv")
    assert [row["id"] for row in result.valid.to_pylist()] == ([] if expected is None else [expected])
    assert result.rows_rejected == (expected is None)


def test_a_pattern_found_in_arrow_matches_what_duckdb_full_matches() -> None:
    # Text columns' patterns are matched in Arrow before the validation query; DuckDB's regexp_full_match is the rule.
    patterns = ["[A-Z]{3}", ".+", "a.b", "a|b", "^a", "b$", r"\w+", r"\d{2}", "(?i)abc", "[[:alpha:]]+", r"\s*x\s*",
                "\u00e9+", r"\p{L}+", "a*", ""]
    values = ["ABC", "abc", "a\nb", "a\rb", "ab", "a", "b", "ba", "\u00e9", "\u00c4BC", "12", "\u0661\u0662", " x ",
              "x\n", "\n", "", "aaa", "AbC", "a\u2028b", None]
    con = duckdb.connect()
    for pattern in patterns:
        expected = [m for (m,) in con.execute("SELECT regexp_full_match(v, ?) FROM unnest(?) WITH ORDINALITY AS t(v, i) "
                                              "ORDER BY i", [pattern, values]).fetchall()]
        assert _pattern_matches(pa.chunked_array([pa.array(values, pa.string())]), pattern).to_pylist() == expected
    assert any(expected)


def test_a_pattern_is_checked_on_text_and_on_typed_values() -> None:
    schema = pa.schema([col("code", pa.string(), pattern="[A-Z]{2}-[0-9]+")])
    spec = TableSpec(name="t", schema=schema, files="t/*", formats=("csv",), primary_key=(), write_disposition="append",
                     sequence_column=None)
    text = ["AB-12", "ab-12", "AB-", ""]
    for values in (pa.array(text), pa.array(text, pa.large_string()), pa.array([1, 2, 3, 4])):
        data = pa.table({"code": values})
        result = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1, 2, 3, 4])), "t.parquet")
        reasons_found = [(r["src_row_number"], r["reason_code"]) for r in result.rejects.to_pylist()]
        if not pa.types.is_integer(values.type):
            assert result.valid["code"].to_pylist() == ["AB-12", None]  # empty text is missing, not checked
            assert reasons_found == [(2, reasons.PATTERN_MISMATCH), (3, reasons.PATTERN_MISMATCH)]
        else:
            assert reasons_found == [(n, reasons.PATTERN_MISMATCH) for n in (1, 2, 3, 4)]


def test_row_failing_several_checks_counts_once() -> None:
    bad = {**GOOD, "status": "lost", "email": "nope", "id": "x"}
    result = Validator(SPEC).validate(text_chunk([bad]), "things/a.csv")
    assert result.rows_read == 1 and result.rows_rejected == 1 and result.valid.num_rows == 0
    assert sorted(r["reason_code"] for r in result.rejects.to_pylist()) == sorted(
        [reasons.TYPE_MISMATCH, reasons.ACCEPTED_VALUES, reasons.PATTERN_MISMATCH])
    assert {r["raw_record"] for r in result.rejects.to_pylist()} == {
        'x,,lost,nope,2024-03-01T10:00:00+02:00,2024-03-01,true,"{""k"": [1, 2]}"'.replace(",,", ",12.50,")}


def test_parse_rejects_are_carried_and_counted() -> None:
    chunk = text_chunk([GOOD], rejects=[ParseReject(2, reasons.TOO_MANY_COLUMNS, "4 fields, expected 3", "a,b,c,d")])
    result = Validator(SPEC).validate(chunk, "things/a.csv")
    assert (result.rows_read, result.rows_rejected, result.valid.num_rows) == (2, 1, 1)
    assert result.rejects.to_pylist()[0]["raw_record"] == "a,b,c,d"


def test_missing_required_column_rejects_the_file_but_missing_optional_reads_null() -> None:
    without_id = {k: v for k, v in GOOD.items() if k != "id"}
    with pytest.raises(FileRejected) as raised:
        Validator(SPEC).validate(text_chunk([without_id]), "things/a.csv")
    assert raised.value.reason_code == reasons.MISSING_REQUIRED_COLUMN
    assert "id" in raised.value.reason_detail
    without_status = {k: v for k, v in GOOD.items() if k != "status"}
    result = Validator(SPEC).validate(text_chunk([without_status]), "things/a.csv")
    assert result.valid.to_pylist()[0]["status"] is None


def test_records_with_own_keys_turn_a_missing_required_key_into_not_null() -> None:
    without_id = {k: v for k, v in GOOD.items() if k != "id"}
    result = Validator(SPEC).validate(text_chunk([without_id], columns_per_record=True), "things/a.jsonl")
    assert [(r["reason_code"], r["column_name"]) for r in result.rejects.to_pylist()] == [(reasons.NOT_NULL, "id")]


def test_columns_outside_the_contract_are_rescued_not_lost() -> None:
    result = Validator(SPEC).validate(text_chunk([{**GOOD, "extra": "kept"}]), "things/a.csv")
    assert json.loads(result.valid.to_pylist()[0]["_rescued_data"]) == {"extra": "kept"}


def test_rows_stay_aligned_in_chunks_that_duckdb_scans_in_parallel() -> None:
    n = 5 * settings.PARALLEL_BATCH_ROWS + 123
    rows = [{**GOOD, "id": str(i), "status": "bad" if i % 7 == 0 else "new", "props": f'{{"k": {i}}}', "extra": str(i)}
            for i in range(1, n + 1)]
    chunk = text_chunk(rows)
    chunk = RawChunk(data=pa.Table.from_batches(chunk.data.to_batches(max_chunksize=10_000)),
                     row_numbers=chunk.row_numbers, render=chunk.render)
    result = Validator(SPEC).validate(chunk, "things/a.csv")
    valid = result.valid.select(["id", "props", "_rescued_data", "src_row_number", "src_row_hash"]).to_pylist()
    assert len(valid) == n - n // 7
    assert all(json.loads(r["props"])["k"] == r["id"] == r["src_row_number"] == int(json.loads(r["_rescued_data"])["extra"])
               for r in valid)
    canonical = "".join(f"{len(k)}:{k}={len(v.encode())}:{v};" for k, v in sorted(rows[0].items()))
    assert valid[0]["src_row_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    rejected = result.rejects.select(["src_row_number", "reason_code", "raw_record"]).to_pylist()
    assert [r["src_row_number"] for r in rejected] == list(range(7, n + 1, 7))
    assert {r["reason_code"] for r in rejected} == {reasons.ACCEPTED_VALUES}
    assert all(r["raw_record"].startswith(f"{r['src_row_number']},") for r in rejected)


def test_row_hash_is_sha256_of_the_documented_canonical_form() -> None:
    result = Validator(SPEC).validate(text_chunk([GOOD]), "things/a.csv")
    canonical = "".join(f"{len(k)}:{k}={len(GOOD[k].encode())}:{GOOD[k]};" for k in sorted(GOOD))
    assert result.valid.to_pylist()[0]["src_row_hash"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_row_hash_of_a_known_record_never_changes() -> None:
    record = {"b": None, "a": "1", "é": "x;y"}
    data = pa.table({k: pa.array([v], pa.string()) for k, v in record.items()})
    assert row_hashes(data).to_pylist() == [hashlib.sha256("1:a=1:1;2:é=3:x;y;".encode()).hexdigest()]


def test_row_hash_leaves_out_missing_values_row_by_row() -> None:
    data = pa.table({"a": pa.array(["1", None, "x"]), "b": pa.array([None, "", "y"])})
    canonical = ["1:a=1:1;", "1:b=0:;", "1:a=1:x;1:b=1:y;"]
    assert row_hashes(data).to_pylist() == [hashlib.sha256(c.encode()).hexdigest() for c in canonical]


def test_row_hash_of_columns_whose_values_share_one_length() -> None:
    rows = [("ab", "é", "1"), ("cd", "xy", "22"), ("zz", "ü", "333")]
    data = pa.table({"code": [r[0] for r in rows], "two_bytes": [r[1] for r in rows], "empty": ["", "", ""],
                     "free": [r[2] for r in rows]})
    canonical = [f"4:code=2:{c};5:empty=0:;4:free={len(f)}:{f};9:two_bytes=2:{t};" for c, t, f in rows]
    assert row_hashes(data).to_pylist() == [hashlib.sha256(c.encode()).hexdigest() for c in canonical]


def test_typed_sources_convert_exactly_or_mismatch() -> None:
    data = pa.table({
        "id": pa.array([1, 2, 3], pa.int32()),
        "amount": pa.array([1.25, 1.255, 3.0], pa.float64()),
        "seen_at": pa.array([datetime(2024, 1, 1, 12), None, None], pa.timestamp("us")),
        "flag": pa.array([True, False, None]),
    })
    chunk = RawChunk(data=data, row_numbers=pa.array([1, 2, 3], pa.int64()))
    result = Validator(SPEC).validate(chunk, "things/a.parquet")
    assert [r["id"] for r in result.valid.to_pylist()] == [1, 3]
    assert result.valid.to_pylist()[0]["seen_at"] == datetime(2024, 1, 1, 12, tzinfo=UTC)
    rejected = result.rejects.to_pylist()
    assert [(r["reason_code"], r["column_name"], r["src_row_number"]) for r in rejected] == [
        (reasons.TYPE_MISMATCH, "amount", 2)]
    assert json.loads(rejected[0]["raw_record"])["amount"] == 1.255


def test_naive_timestamps_are_read_in_the_table_time_zone() -> None:
    spec = TableSpec(name="things", schema=SCHEMA, files="things/*", formats=("csv",), primary_key=("id",),
                     write_disposition="append", sequence_column=None, source_time_zone="Europe/Berlin")
    result = Validator(spec).validate(text_chunk([{**GOOD, "seen_at": "2024-03-01 10:00:00"}]), "things/a.csv")
    assert result.valid.to_pylist()[0]["seen_at"] == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def test_row_hashes_stay_in_row_order_across_many_batches() -> None:
    values = [f"value {i}" for i in range(50_000)]
    table = pa.Table.from_batches(pa.table({"v": values}).to_batches(max_chunksize=1_000))
    expected = [hashlib.sha256(f"1:v={len(v)}:{v};".encode()).hexdigest() for v in values[::997]]
    assert row_hashes(table).to_pylist()[::997] == expected


def test_reason_detail_quotes_the_value_and_states_the_rule() -> None:
    long_value = "é" * 150 + "x" * 100
    bad = {**GOOD, "id": "", "amount": "5000", "status": long_value, "email": "nope", "day": "2024-13-01",
           "props": "{"}
    rejects = Validator(SPEC).validate(text_chunk([bad]), "things/a.csv").rejects.to_pylist()
    assert {(r["column_name"], r["reason_detail"]) for r in rejects} == {
        ("id", "required value is missing"),
        ("amount", "'5000' is outside [0, 1000]"),
        ("status", f"'{long_value[:200]}' is not one of new, done"),
        ("email", r"'nope' does not match [a-z]+@[a-z]+\.[a-z]{2,}"),
        ("day", "'2024-13-01' is not a valid date32[day]"),
        ("props", "'{' is not valid JSON"),
    }


def test_reason_detail_shows_typed_and_nested_values_as_text() -> None:
    data = pa.table({
        "id": pa.array([1.5], pa.float64()),
        "amount": pa.array([Decimal("1.234")], pa.decimal128(8, 3)),
        "seen_at": pa.array([[1, 2]], pa.list_(pa.int64())),
        "day": pa.array([datetime(2024, 1, 1, 5)], pa.timestamp("us")),
    })
    chunk = RawChunk(data=data, row_numbers=pa.array([1], pa.int64()))
    rejects = Validator(SPEC).validate(chunk, "things/a.parquet").rejects.to_pylist()
    assert {(r["column_name"], r["reason_detail"]) for r in rejects} == {
        ("id", "'1.5' is not a valid int64"),
        ("amount", "'1.234' is not a valid decimal128(6, 2)"),
        ("seen_at", "'[1,2]' is not a valid UTC timestamp"),
        ("day", "'2024-01-01 05:00:00' is not a valid date32[day]"),
    }


def test_every_failed_check_is_reported_when_a_contract_has_more_checks_than_one_mask_holds() -> None:
    schema = pa.schema([col(f"c{i}", pa.int64(), required=True, min_value="0") for i in range(40)])
    spec = TableSpec(name="wide", schema=schema, files="wide/*", formats=("csv",), primary_key=("c0",),
                     write_disposition="append", sequence_column=None)
    # Row 1 fails every check of its column pattern: missing (c0, c3, ...), not a number (c1, ...), negative (c2, ...).
    values = ["", "x", "-1"]
    data = pa.table({f"c{i}": pa.array([values[i % 3], "1"]) for i in range(40)})
    result = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1, 2], pa.int64())), "w.csv")
    expected = [(f"c{i}", (reasons.NOT_NULL, reasons.TYPE_MISMATCH, reasons.OUT_OF_RANGE)[i % 3]) for i in range(40)]
    assert [(r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()] == expected
    assert (result.rows_rejected, result.valid.num_rows) == (1, 1)


def test_source_types_duckdb_cannot_read_are_widened_exactly() -> None:
    schema = pa.schema([col("half", pa.float64()), col("wide", pa.decimal128(12, 2)), col("huge", pa.decimal128(12, 2)),
                        col("uuid", pa.string())])
    spec = TableSpec(name="t", schema=schema, files="t/*", formats=("parquet",), primary_key=(),
                     write_disposition="append")
    data = pa.table({
        "half": pa.array(np.array([1.5, 0.1], dtype=np.float16)),
        "wide": pa.array([Decimal("12.50"), Decimal("1.25")], pa.decimal256(20, 2)),
        "huge": pa.array([Decimal("7"), Decimal("1" + "0" * 45)], pa.decimal256(50, 0)),
        "uuid": pa.array([b"a" * 16, b"b" * 16], pa.uuid()),
        "extra_half": pa.array(np.array([2.5, None], dtype=np.float16)),
        "extra_union": pa.UnionArray.from_dense(pa.array([0, 1], pa.int8()), pa.array([0, 0], pa.int32()),
                                                [pa.array([1]), pa.array(["a"])]),
    })
    result = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1, 2], pa.int64())), "t/a.parquet")
    [row] = result.valid.to_pylist()
    assert (row["half"], row["wide"], row["huge"]) == (1.5, Decimal("12.50"), Decimal("7.00"))
    assert row["uuid"] == "61616161-6161-6161-6161-616161616161"
    assert json.loads(row["_rescued_data"]) == {"extra_half": "2.5", "extra_union": "1"}
    assert [(r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()] == [
        ("huge", reasons.TYPE_MISMATCH)]


def test_a_map_value_of_a_scalar_column_is_a_mismatch_not_broken_sql() -> None:
    # str(map type) holds a quote: "map<string, int64 ('status')>"
    data = pa.table({"id": pa.array([1], pa.int64()),
                     "status": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64()))})
    rejects = Validator(SPEC).validate(RawChunk(data=data, row_numbers=pa.array([1], pa.int64())), "t.parquet").rejects.to_pylist()
    assert [(r["column_name"], r["reason_detail"]) for r in rejects] == [
        ("status", """'[["k",1]]' is not a valid string""")]


def test_a_record_without_any_key_is_a_row() -> None:
    data = pa.table({"x": pa.array([None, None], pa.string())}).drop_columns(["x"])
    chunk = RawChunk(data=data, row_numbers=pa.array([1, 2], pa.int64()), columns_per_record=True)
    result = Validator(SPEC).validate(chunk, "things/a.jsonl")
    assert (result.rows_read, result.rows_rejected) == (2, 2)
    assert {(r["reason_code"], r["column_name"]) for r in result.rejects.to_pylist()} == {(reasons.NOT_NULL, "id")}
    nullable = TableSpec(name="t", schema=pa.schema([col("a", pa.string())]), files="t/*", formats=("jsonl",),
                         primary_key=(), write_disposition="append")
    valid = Validator(nullable).validate(chunk, "t/a.jsonl").valid.to_pylist()
    assert [(r["a"], r["src_row_hash"]) for r in valid] == [(None, hashlib.sha256(b"").hexdigest())] * 2


@pytest.mark.parametrize(
    ("values", "type_", "column"),
    [
        (pa.array([2**53 + 1], pa.int64()), pa.float64(), "ratio"),
        (pa.array([Decimal("12345678901234567.8901")], pa.decimal128(38, 4)), pa.decimal128(20, 2), "amount"),
        (pa.array([Decimal("1.1234567890123456789")], pa.decimal128(38, 19)), pa.float64(), "ratio"),
        (pa.array([1_000_000_123], pa.timestamp("ns", tz="UTC")), UTC_TS, "seen_at"),
        (pa.array([2], pa.int64()), pa.bool_(), "flag"),
    ],
    ids=["integer-beyond-double", "decimal-rounding", "decimal-beyond-double", "nanoseconds", "two-as-boolean"],
)
def test_typed_values_that_would_change_are_mismatches(values: pa.Array, type_: pa.DataType, column: str) -> None:
    spec = TableSpec(name="t", schema=pa.schema([col(column, type_)]), files="t/*", formats=("parquet",),
                     primary_key=(), write_disposition="append")
    result = Validator(spec).validate(RawChunk(data=pa.table({column: values}), row_numbers=pa.array([1])), "t.parquet")
    assert [(r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()] == [
        (column, reasons.TYPE_MISMATCH)]


def test_exact_typed_values_still_convert() -> None:
    schema = pa.schema([col("ratio", pa.float64()), col("amount", pa.decimal128(20, 2)), col("seen_at", UTC_TS),
                        col("flag", pa.bool_())])
    spec = TableSpec(name="t", schema=schema, files="t/*", formats=("parquet",), primary_key=(),
                     write_disposition="append")
    data = pa.table({"ratio": pa.array([2**53], pa.int64()), "amount": pa.array([Decimal("12.5000")],
                                                                               pa.decimal128(38, 4)),
                     "seen_at": pa.array([1_000_001_000], pa.timestamp("ns", tz="UTC")), "flag": pa.array([1])})
    [row] = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1])), "t.parquet").valid.to_pylist()
    assert (row["ratio"], row["amount"], row["flag"]) == (2.0**53, Decimal("12.50"), True)
    assert row["seen_at"] == datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    ["epoch", "infinity", "-infinity", "2024-01-01 00:00:00.123456789", "294247-01-10 04:00:54.775806",
     "99999-01-01"],
    ids=["epoch", "infinity", "minus-infinity", "nanoseconds", "duckdb-overflow", "five-digit-year"],
)
def test_timestamp_text_that_would_change_is_a_mismatch(text: str) -> None:
    result = Validator(SPEC).validate(text_chunk([{**GOOD, "seen_at": text}]), "things/a.csv")
    assert [(r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()] == [
        ("seen_at", reasons.TYPE_MISMATCH)]


def test_timestamp_text_with_zeros_beyond_microseconds_and_far_years_converts() -> None:
    rows = [{**GOOD, "seen_at": "2024-01-01 00:00:00.123456000"}, {**GOOD, "seen_at": "9999-12-31T23:59:59Z"},
            {**GOOD, "seen_at": "0001-01-01"}]
    valid = Validator(SPEC).validate(text_chunk(rows), "things/a.csv").valid["seen_at"].to_pylist()
    assert valid == [datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                     datetime(1, 1, 1, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("seen_at", "day", "expected"),
    [
        # The common spellings, which pass DuckDB's GLOB without a regular expression.
        ("2024-03-01T10:00:00+02:00", "2024-03-01", (datetime(2024, 3, 1, 8, tzinfo=UTC), date(2024, 3, 1))),
        ("2024-03-01 10:00:00.123456", "2024-03-01", (datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
                                                      date(2024, 3, 1))),
        # Spellings only the regular expressions accept: white space around, one-digit months and days, midnight.
        ("  2024-03-01 10:00:00.5 ", " 2024-3-1 ", (datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC),
                                                   date(2024, 3, 1))),
        ("\t2024-03-01T10:00:00Z", "2024-03-01T00:00:00.000", (datetime(2024, 3, 1, 10, tzinfo=UTC),
                                                               date(2024, 3, 1))),
        # Rejected whichever path decides: a lost digit after two points, a day that is not a date.
        ("2024-03-01 10:00:00.1234567", "2024-03-01 00:00:01", None),
        ("x.1 2024-03-01 10:00:00.1234561", "03/01/2024", None),
    ],
    ids=["common", "fraction", "white-space", "tab-and-midnight", "cut-digits", "not-dates"],
)
def test_text_timestamps_and_dates_convert_only_when_exact(seen_at: str, day: str, expected: Any) -> None:
    result = Validator(SPEC).validate(text_chunk([{**GOOD, "seen_at": seen_at, "day": day}]), "things/a.csv")
    if expected is None:
        assert sorted((r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()) == [
            ("day", reasons.TYPE_MISMATCH), ("seen_at", reasons.TYPE_MISMATCH)]
    else:
        [row] = result.valid.to_pylist()
        assert (row["seen_at"], row["day"]) == expected


def test_columns_repeating_a_name_reject_the_file() -> None:
    data = pa.Table.from_arrays([pa.array(["1"]), pa.array(["2"])], names=["id", "id"])
    with pytest.raises(FileRejected) as raised:
        Validator(SPEC).validate(RawChunk(data=data, row_numbers=pa.array([1])), "t.parquet")
    assert raised.value.reason_code == reasons.COLUMN_NAME_CONFLICT
    assert "'id'" in raised.value.reason_detail


@pytest.mark.parametrize(
    ("names", "detail"),
    [
        (["id", "Id", "ID"], "column 'Id' would be added as 'id', the name of table column 'id'"),
        (["id", "   bla", "    bla"], "column '    bla' would be added as 'bla', the name of column '   bla' of the file"),
        (["id", "Flag"], "column 'Flag' would be added as 'flag', the name of table column 'flag'"),
        (["id", "_DLT_ID"], "column '_DLT_ID' would be added as '_dlt_id', the name of table column '_dlt_id'"),
        (["id", "é", "ü"], "column 'ü' would be added as 'x', the name of column 'é' of the file"),
        (["id", ""], "column '' has no name in the destination (it is empty or blank)"),
    ],
    ids=["id-Id-ID", "leading-blanks", "case-of-a-contract-column", "dlt-column", "non-ascii", "empty"],
)
def test_an_added_column_whose_destination_name_is_taken_rejects_the_file(names: list[str], detail: str) -> None:
    data = pa.Table.from_arrays([pa.array(["1"]) for _ in names], names=names)
    with pytest.raises(FileRejected) as raised:
        Validator(SPEC, evolve=True).validate(RawChunk(data=data, row_numbers=pa.array([1])), "t.csv")
    assert (raised.value.reason_code, raised.value.reason_detail.split(";")[0]) == (reasons.COLUMN_NAME_CONFLICT,
                                                                                     detail)
    # Without schema evolution the same columns are kept in _rescued_data.
    unique = pa.Table.from_arrays([pa.array(["1"]) for _ in names], names=[n or "blank" for n in names])
    result = Validator(SPEC).validate(RawChunk(data=unique, row_numbers=pa.array([1])), "t.csv")
    assert result.valid.num_rows == 1


def test_an_added_column_of_a_type_the_destination_cannot_hold_rejects_the_file() -> None:
    data = pa.table({"id": ["1"], "span": pa.array([5], pa.duration("s"))})
    with pytest.raises(FileRejected) as raised:
        Validator(SPEC, evolve=True).validate(RawChunk(data=data, row_numbers=pa.array([1])), "t.parquet")
    assert raised.value.reason_code == reasons.UNSUPPORTED_FILE and "'span' has type duration[s]" in str(raised.value)


def test_wide_files_are_validated_column_group_by_column_group() -> None:
    # 8,000 columns ran DuckDB out of memory when every column entered one query.
    width = 20_000
    data = pa.table({"id": pa.array(["1", "x"]), **{f"extra_{i}": pa.array([f"a{i}", None]) for i in range(width)}})
    started = time.perf_counter()
    result = Validator(SPEC).validate(RawChunk(data=data, row_numbers=pa.array([1, 2])), "w.csv")
    assert time.perf_counter() - started < 30
    [valid] = result.valid.to_pylist()
    rescued = json.loads(valid["_rescued_data"])
    assert len(rescued) == width and rescued["extra_0"] == "a0" and rescued[f"extra_{width - 1}"] == f"a{width - 1}"
    assert [(r["src_row_number"], r["reason_code"]) for r in result.rejects.to_pylist()] == [(2, reasons.TYPE_MISMATCH)]


def test_column_names_with_quotes_and_nul_characters_are_rescued_as_they_are() -> None:
    # DuckDB's SQL parser ends a string at a NUL character: such a key failed the whole file.
    data = pa.table({"id": ["1"], "foo\x00bar": ["x"], "it's": ["y"], '"': ["z"]})
    result = Validator(SPEC).validate(RawChunk(data=data, row_numbers=pa.array([1])), "a.jsonl")
    assert json.loads(result.valid["_rescued_data"][0].as_py()) == {"foo\x00bar": "x", "it's": "y", '"': "z"}


def test_a_wide_contract_is_checked_in_column_groups_with_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TableSpec(name="things", schema=SCHEMA, files="things/*", formats=("csv",), primary_key=("id",),
                     write_disposition="append",
                     derived=(DerivedColumn("label", pa.string(), "status || '/' || CAST(amount AS VARCHAR)"),))
    rows = [GOOD, {**GOOD, "id": "x", "flag": "maybe"}, {**GOOD, "status": "lost", "props": "{"},
            {**GOOD, "amount": "2.5", "status": "done", "extra": "kept"}]
    chunk = text_chunk([{**r, "extra": r.get("extra", "")} for r in rows])
    one_query = Validator(spec).validate(chunk, "things/a.csv")
    monkeypatch.setattr(settings, "CONTRACT_GROUP_COLUMNS", 3)
    grouped = Validator(spec).validate(chunk, "things/a.csv")
    assert grouped.valid.equals(one_query.valid) and grouped.rejects.equals(one_query.rejects)
    assert grouped.valid["label"].to_pylist() == ["new/12.50", "done/2.50"]
    assert [(r["src_row_number"], r["column_name"]) for r in grouped.rejects.to_pylist()] == [
        (2, "id"), (2, "flag"), (3, "status"), (3, "props")]
