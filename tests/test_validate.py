"""The validator: typed parsing, every contract reason code, one reject record per failed check, the row hash."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from retail_bronze_source import reasons
from retail_bronze_source.readers.base import FileRejected, ParseReject, RawChunk
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.row_hash import row_hashes
from retail_bronze_source.validate import PARALLEL_BATCH_ROWS, Validator
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
SPEC = TableSpec(name="things", schema=SCHEMA, files="things/*", formats=("csv",), primary_key=("id",),
                 write_disposition="append", sequence_column=None)


def text_chunk(rows: list[dict[str, str]], **kwargs: object) -> RawChunk:
    names = list(rows[0]) if rows else list(SCHEMA.names)
    data = pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})
    return RawChunk(data=data, row_numbers=pa.array(range(1, len(rows) + 1), pa.int64()), **kwargs)  # type: ignore[arg-type]


GOOD = {"id": "7", "amount": "12.50", "status": "new", "email": "a@b.de", "seen_at": "2024-03-01T10:00:00+02:00",
        "day": "2024-03-01", "flag": "true", "props": '{"k": [1, 2]}'}


def test_valid_text_row_is_parsed_into_contract_types() -> None:
    result = Validator(SPEC).validate(text_chunk([GOOD]), "things/a.csv", fmt="csv")
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
    result = Validator(SPEC).validate(text_chunk([GOOD, {**GOOD, column: value}]), "things/a.csv", fmt="csv")
    assert result.valid.num_rows == 1
    assert result.rows_rejected == 1
    rejects = result.rejects.to_pylist()
    assert [(r["reason_code"], r["column_name"], r["src_row_number"]) for r in rejects] == [(reason, column, 2)]
    assert value in rejects[0]["reason_detail"] or reason == reasons.NOT_NULL


def test_row_failing_several_checks_counts_once() -> None:
    bad = {**GOOD, "status": "lost", "email": "nope", "id": "x"}
    result = Validator(SPEC).validate(text_chunk([bad]), "things/a.csv", fmt="csv")
    assert result.rows_read == 1 and result.rows_rejected == 1 and result.valid.num_rows == 0
    assert sorted(r["reason_code"] for r in result.rejects.to_pylist()) == sorted(
        [reasons.TYPE_MISMATCH, reasons.ACCEPTED_VALUES, reasons.PATTERN_MISMATCH])
    assert {r["raw_record"] for r in result.rejects.to_pylist()} == {
        'x,,lost,nope,2024-03-01T10:00:00+02:00,2024-03-01,true,"{""k"": [1, 2]}"'.replace(",,", ",12.50,")}


def test_parse_rejects_are_carried_and_counted() -> None:
    chunk = text_chunk([GOOD], rejects=[ParseReject(2, reasons.TOO_MANY_COLUMNS, "4 fields, expected 3", "a,b,c,d")])
    result = Validator(SPEC).validate(chunk, "things/a.csv", fmt="csv")
    assert (result.rows_read, result.rows_rejected, result.valid.num_rows) == (2, 1, 1)
    assert result.rejects.to_pylist()[0]["raw_record"] == "a,b,c,d"


def test_missing_required_column_rejects_the_file_but_missing_optional_reads_null() -> None:
    without_id = {k: v for k, v in GOOD.items() if k != "id"}
    with pytest.raises(FileRejected) as raised:
        Validator(SPEC).validate(text_chunk([without_id]), "things/a.csv", fmt="csv")
    assert raised.value.reason_code == reasons.MISSING_REQUIRED_COLUMN
    assert "id" in raised.value.reason_detail
    without_status = {k: v for k, v in GOOD.items() if k != "status"}
    result = Validator(SPEC).validate(text_chunk([without_status]), "things/a.csv", fmt="csv")
    assert result.valid.to_pylist()[0]["status"] is None


def test_records_with_own_keys_turn_a_missing_required_key_into_not_null() -> None:
    without_id = {k: v for k, v in GOOD.items() if k != "id"}
    result = Validator(SPEC).validate(text_chunk([without_id], columns_per_record=True), "things/a.jsonl", fmt="jsonl")
    assert [(r["reason_code"], r["column_name"]) for r in result.rejects.to_pylist()] == [(reasons.NOT_NULL, "id")]


def test_columns_outside_the_contract_are_rescued_not_lost() -> None:
    result = Validator(SPEC).validate(text_chunk([{**GOOD, "extra": "kept"}]), "things/a.csv", fmt="csv")
    assert json.loads(result.valid.to_pylist()[0]["_rescued_data"]) == {"extra": "kept"}


def test_rows_stay_aligned_in_chunks_that_duckdb_scans_in_parallel() -> None:
    n = 5 * PARALLEL_BATCH_ROWS + 123
    rows = [{**GOOD, "id": str(i), "status": "bad" if i % 7 == 0 else "new", "props": f'{{"k": {i}}}', "extra": str(i)}
            for i in range(1, n + 1)]
    chunk = text_chunk(rows)
    chunk = RawChunk(data=pa.Table.from_batches(chunk.data.to_batches(max_chunksize=10_000)),
                     row_numbers=chunk.row_numbers)
    result = Validator(SPEC).validate(chunk, "things/a.csv", fmt="csv")
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
    result = Validator(SPEC).validate(text_chunk([GOOD]), "things/a.csv", fmt="csv")
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
    result = Validator(SPEC).validate(chunk, "things/a.parquet", fmt="parquet")
    assert [r["id"] for r in result.valid.to_pylist()] == [1, 3]
    assert result.valid.to_pylist()[0]["seen_at"] == datetime(2024, 1, 1, 12, tzinfo=UTC)
    rejected = result.rejects.to_pylist()
    assert [(r["reason_code"], r["column_name"], r["src_row_number"]) for r in rejected] == [
        (reasons.TYPE_MISMATCH, "amount", 2)]
    assert json.loads(rejected[0]["raw_record"])["amount"] == 1.255


def test_naive_timestamps_are_read_in_the_table_time_zone() -> None:
    spec = TableSpec(name="things", schema=SCHEMA, files="things/*", formats=("csv",), primary_key=("id",),
                     write_disposition="append", sequence_column=None, source_time_zone="Europe/Berlin")
    result = Validator(spec).validate(text_chunk([{**GOOD, "seen_at": "2024-03-01 10:00:00"}]), "things/a.csv", fmt="csv")
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
    rejects = Validator(SPEC).validate(text_chunk([bad]), "things/a.csv", fmt="csv").rejects.to_pylist()
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
    rejects = Validator(SPEC).validate(chunk, "things/a.parquet", fmt="parquet").rejects.to_pylist()
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
    result = Validator(spec).validate(RawChunk(data=data, row_numbers=pa.array([1, 2], pa.int64())), "w.csv",
                                      fmt="csv")
    expected = [(f"c{i}", (reasons.NOT_NULL, reasons.TYPE_MISMATCH, reasons.OUT_OF_RANGE)[i % 3]) for i in range(40)]
    assert [(r["column_name"], r["reason_code"]) for r in result.rejects.to_pylist()] == expected
    assert (result.rows_rejected, result.valid.num_rows) == (1, 1)
