"""`src_row_hash` of any record: any width, any column type, no columns at all."""

from __future__ import annotations

import base64
import hashlib
import time

import numpy as np
import pyarrow as pa
import pytest

from retail_bronze_source import settings
from retail_bronze_source import row_hash
from retail_bronze_source.row_hash import row_hashes


def canonical_hash(fields: dict[str, str | None]) -> str:
    """SHA-256 of the documented canonical form of one record given as column -> text (None: missing)."""
    form = "".join(f"{len(k.encode())}:{k}={len(v.encode())}:{v};" for k, v in sorted(fields.items()) if v is not None)
    return hashlib.sha256(form.encode()).hexdigest()


def _wide_table(columns: int, rows: int) -> pa.Table:
    names = [f"{'éx'[i % 2]}{i};'{i % 7}" for i in range(columns)]
    return pa.table({name: pa.array([None if (r + i) % 5 == 0 else f"v{r}-{i}" * (i % 3) for r in range(rows)])
                     for i, name in enumerate(names)})


@pytest.mark.parametrize("flat_columns", [10_000, 1], ids=["one-expression", "column-groups"])
def test_wide_records_hash_to_the_documented_canonical_form(monkeypatch: pytest.MonkeyPatch, flat_columns: int) -> None:
    monkeypatch.setattr(settings, "HASH_FLAT_COLUMNS", flat_columns)
    monkeypatch.setattr(settings, "HASH_BATCH_BYTES", 20_000)  # many row slices
    table = _wide_table(600, 40)
    expected = [canonical_hash(row) for row in table.to_pylist()]
    assert row_hashes(table).to_pylist() == expected


def test_hashing_cost_grows_linearly_with_the_columns() -> None:
    # 20,000 columns took 110 s when the whole record was one DataFusion expression.
    table = pa.table({f"column_{i}": pa.array([f"v{r}" for r in range(20)]) for i in range(20_000)})
    started = time.perf_counter()
    hashes = row_hashes(table)
    assert time.perf_counter() - started < 15
    assert hashes[3].as_py() == canonical_hash(table.slice(3, 1).to_pylist()[0])


def test_a_record_without_columns_hashes_the_empty_string() -> None:
    empty = pa.table({"a": pa.array([None, None], pa.string())}).drop_columns(["a"])
    assert empty.num_rows == 2
    assert row_hashes(empty).to_pylist() == [hashlib.sha256(b"").hexdigest()] * 2
    all_null = pa.table({"a": pa.array([None], pa.string())})
    assert row_hashes(all_null).to_pylist() == [hashlib.sha256(b"").hexdigest()]


def test_binary_values_of_every_layout_hash_as_base64_json_strings() -> None:
    raw = [b"\xff\xfe", None]
    for type_ in (pa.binary(), pa.large_binary(), pa.binary(2), pa.binary_view()):
        table = pa.table({"b": pa.array(raw, type_)})
        text = '"' + base64.b64encode(raw[0]).decode() + '"'
        assert row_hashes(table).to_pylist() == [canonical_hash({"b": text}), canonical_hash({})], type_


@pytest.mark.parametrize(
    ("values", "text"),
    [
        (pa.array(np.array([1.5], dtype=np.float16)), "1.5"),
        (pa.array([12345], pa.decimal256(50, 2)), "12345.00"),
        (pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()), "[1,2,3]"),
        (pa.UnionArray.from_dense(pa.array([1], pa.int8()), pa.array([0], pa.int32()),
                                  [pa.array([1]), pa.array(["a"])]), '"a"'),
        (pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), '[["k",1]]'),
        (pa.array([b"a" * 16], pa.uuid()), '"' + base64.b64encode(b"a" * 16).decode() + '"'),
        (pa.array([[1]], pa.list_(pa.timestamp("ns"))), '["1970-01-01T00:00:00.000000001"]'),
    ],
    ids=["float16", "decimal256", "interval", "union", "map", "uuid-extension", "nested-nanoseconds"],
)
def test_types_without_a_duckdb_or_arrow_text_form_still_hash(values: pa.Array, text: str) -> None:
    assert row_hashes(pa.table({"v": values})).to_pylist() == [canonical_hash({"v": text})]
