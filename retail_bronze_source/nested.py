"""Nested and binary contract values: list, struct, map and binary columns, converted exactly or not at all.

A contract column of type `pa.list_`/`pa.large_list`, `pa.struct`, `pa.map_` or `pa.binary`/`pa.large_binary`
(declared with `schemas.schemas.col`) accepts:

- Typed values (Parquet, Delta) of a compatible type, converted by Arrow's safe cast, which refuses any value that
  would change (an integer out of range, a decimal that would round, a timestamp with nanoseconds). Compatible means
  the same shape (any list layout for a list, a map for a map, a struct for a struct, any binary layout for binary) and
  leaves of the same kind: integers for integers, integers or decimals for decimals, numbers for floats, booleans,
  text, binary, dates for dates, timestamps or dates for timestamps. A struct may lack fields of the contract (they
  read null) but may not hold fields the contract lacks: they would be lost.
- Text (CSV, JSON Lines, XLSX, and text columns of binary formats): for nested types one strict RFC 8259 JSON document
  (no NaN or Infinity, no duplicate keys): arrays for lists, objects for structs (only the contract's keys), objects
  or arrays of `[key, value]` pairs for maps; leaves as JSON integers for integers, JSON numbers for floats and for
  decimals (exactly at the contract's scale: `12.345` is not a 2-place decimal), `true`/`false`, strings for text,
  base64 strings for binary, `YYYY-MM-DD` strings for dates and ISO 8601 strings for timestamps (with an offset or
  `Z`, else read in the table's time zone; at most microseconds). JSON `null` is a missing value, at any level. For
  a binary column the text is base64 (RFC 4648, padded).

Anything else is a `TYPE_MISMATCH` of the row: a value is never truncated, rounded or dropped.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

_TIMESTAMP = re.compile(r"\s*(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.(\d+))?)?)?)\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*")
_DATE = re.compile(r"\s*(\d{4}-\d{2}-\d{2})\s*")
_INTEGER = re.compile(r"-?[0-9]+")


def is_structured(type_: pa.DataType) -> bool:
    """Whether a contract type is nested or binary (converted here rather than in the validator's SQL)."""
    return (pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_struct(type_)
            or pa.types.is_map(type_) or pa.types.is_binary(type_) or pa.types.is_large_binary(type_))


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def _is_binary(type_: pa.DataType) -> bool:
    return (pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
            or pa.types.is_binary_view(type_))


def convert(values: pa.ChunkedArray, type_: pa.DataType, time_zone: str) -> tuple[pa.Array, pa.Array]:
    """Convert source values into the structured contract type `type_`.

    Returns the converted values (null where the source value is missing or does not convert) and, per row, whether
    a value was present but does not convert (a `TYPE_MISMATCH`). Text values are missing when empty.
    """
    source = values.type
    if isinstance(source, pa.BaseExtensionType):
        values = pa.chunked_array([c.storage for c in values.chunks], source.storage_type)
        source = source.storage_type
    if _is_text(source):
        return _from_text(values.cast(pa.string()).combine_chunks(), type_, time_zone)
    present = pc.is_valid(values).combine_chunks()
    if not compatible(source, type_, naive_is_utc=time_zone == "UTC"):
        return pa.nulls(len(values), type_), present
    return _cast_rows(values.combine_chunks(), type_)


def compatible(source: pa.DataType, target: pa.DataType, *, naive_is_utc: bool) -> bool:
    """Whether typed values of `source` may convert into the contract type `target` (see the module docstring);
    naive timestamps convert into zone-aware ones only when the table's time zone is UTC."""
    if isinstance(source, pa.BaseExtensionType):
        source = source.storage_type
    if pa.types.is_list(target) or pa.types.is_large_list(target):
        return ((pa.types.is_list(source) or pa.types.is_large_list(source) or pa.types.is_fixed_size_list(source))
                and compatible(source.value_type, target.value_type, naive_is_utc=naive_is_utc))
    if pa.types.is_map(target):
        return (pa.types.is_map(source) and compatible(source.key_type, target.key_type, naive_is_utc=naive_is_utc)
                and compatible(source.item_type, target.item_type, naive_is_utc=naive_is_utc))
    if pa.types.is_struct(target):
        if not pa.types.is_struct(source):
            return False
        fields = {target.field(i).name: target.field(i).type for i in range(target.num_fields)}
        names = [source.field(i).name for i in range(source.num_fields)]
        return len(set(names)) == len(names) and all(
            name in fields and compatible(source.field(name).type, fields[name], naive_is_utc=naive_is_utc)
            for name in names)
    if pa.types.is_binary(target) or pa.types.is_large_binary(target):
        return _is_binary(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_decimal(target):
        return pa.types.is_integer(source) or pa.types.is_decimal(source)
    if pa.types.is_floating(target):
        return pa.types.is_integer(source) or pa.types.is_floating(source)
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(source)
    if _is_text(target):
        return _is_text(source)
    if pa.types.is_date(target):
        return pa.types.is_date(source)
    if pa.types.is_timestamp(target):
        if pa.types.is_date(source):
            return True
        return pa.types.is_timestamp(source) and (source.tz is not None or target.tz is None or naive_is_utc)
    return False


def _cast_rows(values: pa.Array, type_: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Arrow's safe cast of `values`; when it refuses, the refused rows are found by halving (the cast is all or
    nothing), so a chunk with a few bad values costs a few casts per bad value."""
    try:
        return values.cast(type_, safe=True), pa.repeat(pa.scalar(False), len(values))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if len(values) == 1:
            return pa.nulls(1, type_), pa.array([values.is_valid().to_pylist()[0]])
    half = len(values) // 2
    # Concatenation copies a slice's own child values: a list cast converts all child values of its array.
    left = _cast_rows(pa.concat_arrays([values.slice(0, half)]), type_)
    right = _cast_rows(pa.concat_arrays([values.slice(half)]), type_)
    return pa.concat_arrays([left[0], right[0]]), pa.concat_arrays([left[1], right[1]])


class _Mismatch(Exception):
    """A JSON value that does not convert exactly."""


def _from_text(texts: pa.Array, type_: pa.DataType, time_zone: str) -> tuple[pa.Array, pa.Array]:
    """Convert text values (JSON for nested types, base64 for binary), one value at a time in Python: neither Arrow
    nor DuckDB parses JSON into a given type without rounding, coercing strings or dropping keys."""
    zone = ZoneInfo(time_zone)
    leaf = _converter(type_, zone)
    nested = not (pa.types.is_binary(type_) or pa.types.is_large_binary(type_))
    converted: list[Any] = []
    failed: list[bool] = []
    for text in texts.to_pylist():
        if text is None or text == "":
            converted.append(None)
            failed.append(False)
            continue
        try:
            converted.append(leaf(_loads(text)) if nested else _base64(text))
            failed.append(False)
        except (_Mismatch, ValueError, TypeError, OverflowError, RecursionError, InvalidOperation, binascii.Error):
            converted.append(None)
            failed.append(True)
    return pa.array(converted, type_), pa.array(failed, pa.bool_())


def _loads(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


def _refuse_constant(name: str) -> Any:
    raise _Mismatch(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Mismatch("duplicate key")
    return found


def _base64(text: Any) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise _Mismatch("not base64")
    return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)


def _converter(type_: pa.DataType, zone: tzinfo) -> Callable[[Any], Any]:
    """A function turning one parsed JSON value into the Python value Arrow builds `type_` from; it raises
    `_Mismatch` (or a `ValueError`) for a value that does not convert exactly. JSON null is None at every level."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        item = _converter(type_.value_type, zone)
        return _nullable(lambda v: [item(x) for x in _expect(v, list)])
    if pa.types.is_struct(type_):
        fields = {type_.field(i).name: _converter(type_.field(i).type, zone) for i in range(type_.num_fields)}

        def struct(v: Any) -> dict[str, Any]:
            members = _expect(v, dict)
            if not members.keys() <= fields.keys():
                raise _Mismatch("keys outside the struct")
            return {name: convert_(members.get(name)) for name, convert_ in fields.items()}
        return _nullable(struct)
    if pa.types.is_map(type_):
        key, item = _map_key(type_.key_type), _converter(type_.item_type, zone)

        def map_(v: Any) -> list[tuple[Any, Any]]:
            pairs = list(v.items()) if isinstance(v, dict) else [_pair(p) for p in _expect(v, list)]
            keys = [key(k) for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise _Mismatch("duplicate map key")
            return [(k, item(x)) for k, (_, x) in zip(keys, pairs, strict=True)]
        return _nullable(map_)
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return _nullable(_base64)
    if pa.types.is_integer(type_):
        low, high = _integer_range(type_)
        return _nullable(lambda v: _within(_expect_int(v), low, high))
    if pa.types.is_floating(type_):
        return _nullable(lambda v: _finite(float(_expect_number(v))))
    if pa.types.is_decimal(type_):
        return _nullable(lambda v: _decimal(_expect_number(v), type_.precision, type_.scale))
    if pa.types.is_boolean(type_):
        return _nullable(lambda v: _expect(v, bool))
    if _is_text(type_):
        return _nullable(lambda v: _expect(v, str))
    if pa.types.is_date(type_):
        return _nullable(_date)
    if pa.types.is_timestamp(type_):
        return _nullable(lambda v: _timestamp(v, zone, aware=type_.tz is not None))
    raise TypeError(f"contract type {type_} is not supported inside a nested type")


def _nullable(convert_: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else convert_(v)


def _expect(value: Any, kind: type) -> Any:
    # bool is an int in Python: an integer is never accepted where a boolean is expected, nor the reverse
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _Mismatch(f"not a {kind.__name__}")
    return value


def _expect_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch("not an integer")
    return value


def _expect_number(value: Any) -> int | Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _Mismatch("not a number")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise _Mismatch("beyond the float range")
    return value


def _integer_range(type_: pa.DataType) -> tuple[int, int]:
    bits = type_.bit_width
    if pa.types.is_unsigned_integer(type_):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _within(value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise _Mismatch("out of range")
    return value


def _decimal(value: int | Decimal, precision: int, scale: int) -> Decimal:
    number = Decimal(value)
    exact = number.quantize(Decimal(1).scaleb(-scale))
    if exact != number or len(exact.as_tuple().digits) > precision:
        raise _Mismatch("does not fit the decimal")
    return exact


def _date(value: Any) -> date:
    found = _DATE.fullmatch(_expect(value, str))
    if found is None:
        raise _Mismatch("not a date")
    return date.fromisoformat(found.group(1))


def _timestamp(value: Any, zone: tzinfo, *, aware: bool) -> datetime:
    found = _TIMESTAMP.fullmatch(_expect(value, str))
    fraction = (found.group(2) or "") if found else ""
    if found is None or fraction[6:].strip("0"):
        raise _Mismatch("not a timestamp of at most microsecond precision")
    stamp, offset = found.group(1), found.group(3)
    if len(fraction) > 6:
        stamp = stamp[: len(stamp) - len(fraction) + 6]
    parsed = datetime.fromisoformat(stamp + (offset or "").replace("Z", "+00:00"))
    if not aware:
        if offset:
            raise _Mismatch("an offset for a timestamp without time zone")
        return parsed
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


def _map_key(type_: pa.DataType) -> Callable[[Any], Any]:
    """Map keys come as JSON object keys (always strings) or as the first item of a pair: integer keys may be
    written as decimal text."""
    if _is_text(type_):
        return lambda k: _expect(k, str)
    if pa.types.is_integer(type_):
        low, high = _integer_range(type_)

        def integer(k: Any) -> int:
            if isinstance(k, str) and _INTEGER.fullmatch(k):
                k = int(k)
            return _within(_expect_int(k), low, high)
        return integer
    raise TypeError(f"map key type {type_} is not supported: use text or integer keys")


def _pair(value: Any) -> tuple[Any, Any]:
    pair = _expect(value, list)
    if len(pair) != 2:
        raise _Mismatch("a map entry is a [key, value] pair")
    return pair[0], pair[1]
