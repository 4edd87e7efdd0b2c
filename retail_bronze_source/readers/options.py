"""Every reader option a `TableSpec` may declare in `reader_options`, checked when the table is declared.

An option applies to the formats listed with it; a table declares an option when at least one of its formats takes it,
and each file's reader gets only the options of the file's format. Unknown names and bad values raise `ValueError`
naming the table, so a typo fails at declaration instead of rejecting every file.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from .. import limits

DELIMITED = frozenset({"csv", "tsv", "txt"})
"""Delimited text formats, read by the CSV reader: `.csv`, `.tsv` (always tab-separated) and `.txt`."""
JSON_TEXT = frozenset({"jsonl", "json"})
TEXT = DELIMITED | JSON_TEXT
ALL_FORMATS = TEXT | {"xlsx", "parquet", "delta"}
INTERNAL = MappingProxyType({"delta": frozenset({"starting_version"})})
"""Options the package itself passes to a reader (never declared by a table)."""


@dataclass(frozen=True)
class ReaderOption:
    """One `reader_options` key: the formats that take it, its default and what it means."""

    name: str
    formats: frozenset[str]
    default: str
    """The default as the README shows it."""
    meaning: str
    check: Callable[[Any], str | None]
    """Returns what is wrong with a value, or None when it is accepted."""


def _single_char(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        return "must be one character other than a line break"
    return None


def _optional_char(value: Any) -> str | None:
    return None if value is None else _single_char(value)


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "must be an integer >= 1"


def _record_bytes(value: Any) -> str | None:
    if _positive_int(value) is not None or value < 1024:
        return "must be an integer >= 1024 (bytes)"
    return None


def _strings(value: Any, *, allow_empty_text: bool = True) -> str | None:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return "must be a list of strings"
    if not all(isinstance(v, str) and (allow_empty_text or v.strip()) for v in value):
        return "must be a list of strings" + ("" if allow_empty_text else ", none of them blank")
    return None


def _column_names(value: Any) -> str | None:
    problem = _strings(value, allow_empty_text=False)
    if problem is None and len(set(value)) != len(value):
        return "must not repeat a name"
    if problem is None and not value:
        return "must name at least one column"
    return problem


def _comment(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\r" in value or "\n" in value:
        return "must be a non-empty prefix without line breaks, or None"
    return None


def _decimal(value: Any) -> str | None:
    return None if value in (".", ",") else "must be '.' or ','"


def _encoding(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a codec name such as 'latin-1' or 'utf-16'"
    try:
        info = codecs.lookup(value)
    except LookupError:
        return f"{value!r} is not a codec Python knows"
    if not getattr(info, "_is_text_encoding", True):
        return f"{value!r} is not a text encoding"
    return None


def _sheets(value: Any) -> str | None:
    if value == "*" or isinstance(value, str):
        return None
    return _strings(value)


OPTIONS: tuple[ReaderOption, ...] = (
    ReaderOption("delimiter", frozenset({"csv", "txt"}), '","; required for txt',
                 "the field separator; `.tsv` files are always tab-separated", _single_char),
    ReaderOption("quote_char", DELIMITED, '"\\""', "the quote character; None: fields are never quoted",
                 _optional_char),
    ReaderOption("escape_char", DELIMITED, "None",
                 "a character that makes the next one literal inside a quoted field (e.g. `\\\\`); doubled quotes "
                 "still work", _optional_char),
    ReaderOption("header", DELIMITED, "True",
                 "False: the file has no header record; its columns are `column_names`", _boolean),
    ReaderOption("column_names", DELIMITED, "the contract's columns in order",
                 "the columns of a file without header (`header=False`), left to right", _column_names),
    ReaderOption("header_row", DELIMITED, "1",
                 "the physical line holding the header; the lines before it are skipped unread", _positive_int),
    ReaderOption("comment", DELIMITED, "None",
                 "lines starting with this prefix (outside quoted fields) are not records and are not counted",
                 _comment),
    ReaderOption("null_values", DELIMITED, "[]",
                 "field texts read as missing (e.g. `[\"N/A\", \"NULL\", \"-200\"]`); quoted fields included", _strings),
    ReaderOption("decimal", DELIMITED, '"."',
                 "the decimal separator of the `decimal_columns`; with \",\" a value holding a \".\" there is a "
                 "`TYPE_MISMATCH` reject (no thousands separators)", _decimal),
    ReaderOption("decimal_columns", DELIMITED, "the contract's decimal and float columns",
                 "the columns `decimal` applies to", lambda v: _strings(v, allow_empty_text=False)),
    ReaderOption("encoding", TEXT, '"utf-8"',
                 "the text encoding (any Python codec: `latin-1`, `cp1252`, `utf-16` with its BOM); transcoded while "
                 "streaming, a byte invalid in it is `FILE_ENCODING`", _encoding),
    ReaderOption("skip_empty_records", DELIMITED, "False",
                 "True: records whose fields are all empty (`;;;;` rows of re-saved spreadsheets) are skipped, not "
                 "loaded or rejected; they keep their record number", _boolean),
    ReaderOption("sheets", frozenset({"xlsx"}), '"*" (every worksheet)', "the sheets to read, by name", _sheets),
    ReaderOption("max_columns", ALL_FORMATS, str(limits.MAX_COLUMNS),
                 "the most columns a file may have; a wider one is `LIMIT_EXCEEDED`", _positive_int),
    ReaderOption("max_record_bytes", TEXT,
                 f"{limits.MAX_CSV_RECORD_BYTES} (delimited), {limits.MAX_JSON_RECORD_BYTES} (JSON)",
                 "the longest record (CSV record, JSON line or array element); a file holding a longer one is "
                 "`LIMIT_EXCEEDED`. For delimited text it is the parser's block, of which it reads 32 ahead: a "
                 "record up to it is always read, one up to twice as long may be",
                 _record_bytes),
    ReaderOption("max_unpacked_bytes", frozenset({"xlsx"}), str(limits.MAX_UNPACKED_BYTES),
                 "the most bytes a workbook's zip members may inflate to (declared sizes and bytes counted while "
                 "inflating); more is `LIMIT_EXCEEDED`", _positive_int),
)
"""The options, in the order the README documents them."""

BY_NAME: Mapping[str, ReaderOption] = MappingProxyType({option.name: option for option in OPTIONS})


def options_for(fmt: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of `options` that the reader of `fmt` takes (a table of several formats declares them all)."""
    internal = INTERNAL.get(fmt, frozenset())
    return {k: v for k, v in options.items() if k in internal or (k in BY_NAME and fmt in BY_NAME[k].formats)}


def resolve_reader_options(table: str, formats: Collection[str], options: Mapping[str, Any],
                           schema: pa.Schema) -> Mapping[str, Any]:
    """Check `options` for a table of `formats` and `schema`; return them with the defaults that depend on the
    contract filled in (`column_names` without a header, `decimal_columns` with a decimal comma).

    Raises `ValueError` naming the table and the option for an unknown option, one none of the formats takes, a bad
    value or a bad combination.
    """
    def fail(message: str) -> ValueError:
        return ValueError(f"table {table!r}: reader option {message}")

    for name, value in options.items():
        option = BY_NAME.get(name)
        if option is None:
            known = sorted(o.name for o in OPTIONS if o.formats & set(formats))
            raise fail(f"{name!r} is unknown; the table's formats ({', '.join(formats)}) take "
                       f"{', '.join(known) or 'none'}")
        if not option.formats & set(formats):
            raise fail(f"{name!r} applies to {', '.join(sorted(option.formats))}, none of the table's formats "
                       f"({', '.join(formats)})")
        problem = option.check(value)
        if problem is not None:
            raise fail(f"{name!r} {problem}, got {value!r}")
    if "txt" in formats and "delimiter" not in options:
        raise fail("'delimiter' is required for txt files: a .txt file says nothing about its separator")
    header = options.get("header", True)
    if "column_names" in options and header:
        raise fail("'column_names' is for files without a header; declare header=False")
    if "header_row" in options and not header:
        raise fail("'header_row' needs a header; a file without one (header=False) has none to find")
    quote, escape = options.get("quote_char", '"'), options.get("escape_char")
    delimiter = options.get("delimiter", ",")
    if quote is not None and quote == delimiter:
        raise fail(f"'quote_char' {quote!r} is also the delimiter")
    if escape is not None and escape in (delimiter, quote):
        raise fail(f"'escape_char' {escape!r} is also the delimiter or the quote character")
    if "decimal_columns" in options and options.get("decimal", ".") != ",":
        raise fail("'decimal_columns' needs decimal=','")
    resolved = dict(options)
    if not header and "column_names" not in options and set(formats) & DELIMITED:
        resolved["column_names"] = tuple(schema.names)
    if options.get("decimal", ".") == "," and "decimal_columns" not in options:
        resolved["decimal_columns"] = tuple(f.name for f in schema if pa.types.is_decimal(f.type)
                                            or pa.types.is_floating(f.type))
    return resolved if resolved != dict(options) else options
