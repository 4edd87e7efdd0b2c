"""Generic helpers every layer shares: SQL quoting, row numbers, contiguous arrays and the JSON text of records."""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

_DATE_TIME_SPACE = r"^(-?\d{4,}-\d{2}-\d{2}) "



def quote_ident(name: str) -> str:
    """Quote an identifier (double quotes, inner ones doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal (single quotes, inner ones doubled; a NUL character, which DuckDB's parser takes for the
    end of the text, as `chr(0)`)."""
    if "\x00" in value:
        return "(" + " || chr(0) || ".join(quote_literal(part) for part in value.split("\x00")) + ")"
    return "'" + value.replace("'", "''") + "'"



def load_id_order(expr: str) -> str:
    """SQL of a dlt load id (`expr`, text such as `1796613165.3567083`) as a number, to order load ids by time.

    DECIMAL(18, 7) holds every load id exactly (ten digits of seconds until the year 2286, eleven until 5138, and the
    seven decimals `time.time()` has at that size), and DuckDB casts text to it about 300 times faster than to a
    wider decimal, whose 128-bit conversion costs microseconds a row: this cast runs over whole tables."""
    return f"CAST({expr} AS DECIMAL(18, 7))"


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`values` as one contiguous array."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def arange(count: int) -> pa.Array:
    """0, 1, ..., count - 1 as int64."""
    return row_number_array(0, count)


def row_number_array(first: int, count: int) -> pa.Array:
    """Return the int64 array `first, first + 1, ..., first + count - 1`."""
    if count == 0:
        return pa.array([], pa.int64())
    ones = pa.repeat(pa.scalar(1, pa.int64()), count)
    return pc.add(pc.cumulative_sum(ones), pa.scalar(first - 1, pa.int64()))


def records_as_json(table: pa.Table) -> pa.Array:
    """Return, for each row of `table`, its original values as one JSON object text (`pa.string()`).

    Keys follow the column order (duplicate column names are all kept). Timestamps, dates and times are ISO 8601
    text at the stored precision (`YYYY-MM-DDTHH:MM:SS[.fraction][offset]`; inside nested values Arrow's
    `YYYY-MM-DD HH:MM:SS` form when Python cannot hold the value), durations the integer count of their unit,
    decimals strings keeping their scale, binary values base64 strings, NaN and infinities the strings "NaN",
    "Infinity" and "-Infinity", structs JSON objects, lists JSON arrays, maps arrays of `[key, value]` pairs,
    month-day-nanosecond intervals `[months, days, nanoseconds]`, union values their member's value.
    Out-of-range timestamps keep Arrow's text for them.

    Runs per row in Python: it is meant for rows already rejected, never for the whole file.
    """
    keys = [orjson.dumps(name) for name in table.column_names]
    columns = [_column_values(table.column(i)) for i in range(table.num_columns)]
    texts = []
    for row in range(table.num_rows):
        members = (key + b":" + _dumps(column[row]) for key, column in zip(keys, columns, strict=True))
        texts.append((b"{" + b",".join(members) + b"}").decode())
    return pa.array(texts, pa.string())


def _column_values(column: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_temporal(column.type) and not pa.types.is_interval(column.type):
        text = pc.replace_substring_regex(column.cast(pa.string()), _DATE_TIME_SPACE, r"\1T")
        return text.to_pylist()  # type: ignore[no-any-return]
    try:
        return column.to_pylist()  # type: ignore[no-any-return]
    except (ValueError, OverflowError, pa.ArrowException):
        pass  # nested nanosecond or out-of-range temporal values: render those leaves as Arrow text below
    try:
        return column.cast(_temporal_as_text(column.type)).to_pylist()  # type: ignore[no-any-return]
    except (ValueError, OverflowError, pa.ArrowException):
        return [column.slice(i, 1).to_string(skip_new_lines=True) for i in range(len(column))]


def _temporal_as_text(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_temporal(type_):
        return pa.string()
    if pa.types.is_map(type_):
        return pa.map_(_temporal_as_text(type_.key_type), _temporal_as_text(type_.item_type))
    if pa.types.is_fixed_size_list(type_):
        return pa.list_(_temporal_as_text(type_.value_type), type_.list_size)
    if pa.types.is_large_list(type_):
        return pa.large_list(_temporal_as_text(type_.value_type))
    if pa.types.is_list(type_):
        return pa.list_(_temporal_as_text(type_.value_type))
    if pa.types.is_struct(type_):
        return pa.struct([field.with_type(_temporal_as_text(field.type)) for field in type_])
    return type_


def _dumps(value: Any) -> bytes:
    return orjson.dumps(_plain(value), default=_default)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):  # nanosecond timestamps inside nested values come as pandas Timestamps
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot render {type(value).__name__} as JSON")
