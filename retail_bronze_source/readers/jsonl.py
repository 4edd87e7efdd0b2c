"""JSON Lines reader: one strict RFC 8259 object per physical line, top-level values as text.

Policies:
- `row_numbers` are 1-based physical line numbers. Lines that are empty or hold only JSON whitespace (space, tab, CR)
  are not records: they are skipped but still counted in the line numbering. One trailing CR per line is dropped, and
  a UTF-8 BOM at the very start of the file is ignored (a file holding only a BOM has no records). A file whose first
  line ends in a lone CR has CR line ends.
- Limits (file-level `LIMIT_EXCEEDED`): a line longer than `max_record_bytes`, more than `max_columns` distinct keys
  in one chunk. A declared `encoding` other than UTF-8 is transcoded; a byte invalid in it is `FILE_ENCODING`.
- A line that is not strict RFC 8259 JSON is an `INVALID_JSON` reject: this includes NaN/Infinity, trailing commas,
  lone surrogate escapes (`"\\ud800"`) and invalid UTF-8 (its `raw_record` is decoded with backslash escapes). Valid
  JSON whose top level is not an object is `NOT_AN_OBJECT`.
- Implementation-defined inputs: numbers of any size or precision are accepted and kept as written; lone or inverted
  surrogate escapes are rejected; duplicate keys keep their first value; nesting deeper than 1024 levels in a line
  that contains `nan`/`inf` or a comma before a closing bracket is rejected (the strict check has that depth limit).
- `data` has one string column per top-level key seen in the chunk, in first-seen order. Values: strings unescaped,
  numbers as written, `true`/`false`, nested objects and arrays as compact JSON text; JSON null and absent keys are
  null. `raw_records` holds each row's line as read (without its line terminator).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .. import limits, reasons, settings
from ..helpers import arange
from ..raw import FileRejected, ParseReject, RawChunk, RawFile
from .streams import open_text

_BOM = codecs.BOM_UTF8
_KIND_NAMES = {
    "VARCHAR": "a string",
    "BIGINT": "a number",
    "UBIGINT": "a number",
    "DOUBLE": "a number",
    "BOOLEAN": "a boolean",
    "NULL": "null",
    "ARRAY": "an array",
}

_LENIENT_SUSPECT = r"(?i)nan|inf|,[ \t\r\n]*[\]}]"
"""Lines DuckDB's parser may accept although RFC 8259 does not (NaN/Infinity, trailing commas): checked strictly."""
_NUMBER_REWRITE_SUSPECT = r"[0-9][eE]|[0-9]\.[0-9]*[0-9]0(?:[^0-9]|$)|-0(?:[^.0-9]|$)|\.0{5}|[0-9.]{17}"
"""Lines holding a number DuckDB may print differently from how it is written (exponent, trailing fraction zeros,
-0, tiny values, more than 15 significant digits): their top-level numbers are re-read as written."""


def read_jsonl(file: RawFile, chunk_size: int, *, encoding: str = "utf-8", max_columns: int = limits.MAX_COLUMNS,
               max_record_bytes: int = limits.MAX_JSON_RECORD_BYTES) -> Iterator[RawChunk]:
    """Stream `file` as JSON Lines: one chunk per block of lines, with the lines that are not objects as rejects.

    The file is decompressed and transcoded to UTF-8 as it streams (`open_text`). A line longer than
    `max_record_bytes`, or a chunk whose objects hold more than `max_columns` keys, rejects the file as
    `LIMIT_EXCEEDED`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with open_text(file, encoding) as handle:
        yield from read_lines(handle, chunk_size, file.rel_path, max_columns=max_columns,
                              max_record_bytes=max_record_bytes)


def read_lines(handle: IO[bytes], chunk_size: int, rel_path: str, *, max_columns: int,
               max_record_bytes: int) -> Iterator[RawChunk]:
    """The JSON Lines records of the UTF-8 text `handle`, read a block at a time (see `read_jsonl`).

    Line ends are LF (a CR before it is dropped) or, in a file whose first line ends in a lone CR, CR: old Mac
    exports. Such a file's CRLF reads as two line ends, the second ending an empty line.
    """
    block_size = max(chunk_size * settings.JSON_BYTES_PER_ROW, settings.JSON_BLOCK_BYTES)
    limits_ = RecordLimits(max_columns, max_record_bytes, rel_path)
    con = duckdb.connect()
    try:
        carry = b""
        next_line = 1
        first = True
        cr_only = False
        while True:
            block = handle.read(block_size)
            if first and block:
                first = False
                if block.startswith(_BOM):
                    block = block[len(_BOM) :]
                cr_only = _ends_lines_with_cr(block)
            if cr_only:
                block = block.replace(b"\r", b"\n")
            if not block:
                if carry:
                    chunk = _parse_lines(con, carry, next_line, final=True, limits_=limits_)
                    if chunk is not None:
                        yield chunk
                return
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if len(carry) > max_record_bytes:
                limits_.too_long(next_line + data.count(b"\n", 0, cut), len(carry))
            if cut:
                complete = data[:cut]
                chunk = _parse_lines(con, complete, next_line, final=False, limits_=limits_)
                next_line += complete.count(b"\n")
                if chunk is not None:
                    yield chunk
    finally:
        con.close()


def _ends_lines_with_cr(block: bytes) -> bool:
    """Whether the first line break of `block` is a lone CR (not followed by LF)."""
    cr = block.find(b"\r")
    if cr < 0 or cr == len(block) - 1:
        return False
    lf = block.find(b"\n")
    return (lf < 0 or cr < lf) and block[cr + 1 : cr + 2] != b"\n"


@dataclass(frozen=True)
class RecordLimits:
    """The limits a JSON text reader enforces, raising `LIMIT_EXCEEDED` for the file `rel_path`."""

    max_columns: int
    max_record_bytes: int
    rel_path: str

    def too_long(self, record: int, length: int, what: str = "line") -> NoReturn:
        raise FileRejected(
            reasons.LIMIT_EXCEEDED,
            f"max_record_bytes: {what} {record} is {'at least ' if what == 'line' else ''}{length} bytes long, over the "
            f"limit of {self.max_record_bytes} (reader_options['max_record_bytes'] raises it)"
        )

    def check_columns(self, count: int) -> None:
        if count > self.max_columns:
            raise FileRejected(
                reasons.LIMIT_EXCEEDED,
                f"max_columns: the objects of one chunk hold {count} distinct keys, over the limit of "
                f"{self.max_columns} (reader_options['max_columns'] raises it)"
            )


def _parse_lines(con: duckdb.DuckDBPyConnection, data: bytes, first_line: int, *, final: bool,
                 limits_: RecordLimits) -> RawChunk | None:
    """Parse the lines of `data` (complete lines ending in LF, or the file's last line if `final`)."""
    body = data if final else data[:-1]
    whole = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 1, [None, pa.array([0, len(body)], pa.int64()).buffers()[1], pa.py_buffer(body)]
    )
    lines = pc.list_flatten(pc.split_pattern(whole, b"\n"))
    lines = pc.if_else(pc.ends_with(lines, b"\r"), pc.binary_slice(lines, 0, -1), lines)
    line_numbers = pc.add(arange(len(lines)), first_line)
    lengths = pc.binary_length(lines)
    longest = pc.max(lengths).as_py() or 0
    if longest > limits_.max_record_bytes:
        at = pc.index(lengths, longest).as_py()
        limits_.too_long(line_numbers[at].as_py(), longest)
    return parse_records(con, lines, line_numbers, limits_)


def parse_records(con: duckdb.DuckDBPyConnection, lines: pa.Array, line_numbers: pa.Array,
                  limits_: RecordLimits) -> RawChunk | None:
    """Parse `lines` (binary JSON texts, one record each) numbered `line_numbers`; blank ones are not records."""
    is_record = pc.invert(pc.match_substring_regex(lines, r"^[ \t\r\n]*$"))

    rejects: list[ParseReject] = []
    try:
        text = lines.cast(pa.large_string())
        candidates = pc.indices_nonzero(is_record)
    except pa.ArrowInvalid:
        # Per-line Python only in a block already known to hold invalid UTF-8, to find which lines do.
        utf8_ok = pa.array([_is_utf8(value) for value in lines.to_pylist()], pa.bool_())
        for i in pc.indices_nonzero(pc.and_(is_record, pc.invert(utf8_ok))).to_pylist():
            raw = lines[i].as_py().decode("utf-8", errors="backslashreplace")
            rejects.append(ParseReject(line_numbers[i].as_py(), reasons.INVALID_JSON, "invalid UTF-8", raw))
        text = pc.if_else(utf8_ok, lines, b"").cast(pa.large_string())
        candidates = pc.indices_nonzero(pc.and_(is_record, utf8_ok))

    text_lines = text.take(candidates)
    candidate_numbers = line_numbers.take(candidates)
    con.register("jsonl_lines", pa.table({"line": text_lines}))
    try:
        kind = _fetch(
            con, "SELECT CASE WHEN json_valid(line) THEN json_type(line) END AS kind FROM jsonl_lines"
        ).column("kind")
    finally:
        con.unregister("jsonl_lines")
    kind = kind.combine_chunks() if isinstance(kind, pa.ChunkedArray) else kind
    ok = pc.is_valid(kind)
    not_strict: dict[int, str] = {}
    for j in pc.indices_nonzero(pc.and_(ok, pc.match_substring_regex(text_lines, _LENIENT_SUSPECT))).to_pylist():
        # Strict re-check only of lines the vectorized prefilter flags as possibly accepted by DuckDB's leniency.
        try:
            orjson.loads(text_lines[j].as_py())
        except orjson.JSONDecodeError as error:
            not_strict[j] = f": {error}"
    if not_strict:
        ok = pc.and_(ok, pc.invert(pc.is_in(arange(len(ok)), value_set=pa.array(list(not_strict), pa.int64()))))
    is_object = pc.and_(ok, pc.fill_null(pc.equal(kind, "OBJECT"), False))
    for j in pc.indices_nonzero(pc.invert(ok)).to_pylist():
        detail = "not valid RFC 8259 JSON" + not_strict.get(j, "")
        rejects.append(ParseReject(candidate_numbers[j].as_py(), reasons.INVALID_JSON, detail, text_lines[j].as_py()))
    for j in pc.indices_nonzero(pc.and_(ok, pc.invert(is_object))).to_pylist():
        value_kind = _KIND_NAMES.get(kind[j].as_py(), str(kind[j].as_py()).lower())
        rejects.append(
            ParseReject(
                candidate_numbers[j].as_py(),
                reasons.NOT_AN_OBJECT,
                f"top-level JSON value is {value_kind}, not an object",
                text_lines[j].as_py(),
            )
        )

    object_rows = pc.indices_nonzero(is_object)
    if not rejects and len(object_rows) == 0:
        return None
    objects = text_lines.take(object_rows)
    rewrite = pc.match_substring_regex(objects, _NUMBER_REWRITE_SUSPECT)
    data, absent = _extract(con, objects, rewrite, limits_)
    return RawChunk(
        data=data,
        absent=absent,
        row_numbers=candidate_numbers.take(object_rows),
        rejects=sorted(rejects, key=lambda reject: reject.row_number),
        raw_records=objects.cast(pa.string()),
        columns_per_record=True,
    )


def _extract(con: duckdb.DuckDBPyConnection, objects: pa.Array, rewrite: pa.Array,
             limits_: RecordLimits) -> tuple[pa.Table, dict[str, pa.Array]]:
    """Top-level values of the JSON objects `objects` as one string column per key, and for each key some objects
    lack, which ones (`RawChunk.absent`)."""
    n = len(objects)
    if n == 0:
        return pa.table({}), {}
    con.register("jsonl_objects", pa.table({"line": objects}))
    try:
        key_lists = _fetch(con, "SELECT json_keys(line) AS k FROM jsonl_objects").column("k")
        unique_keys = pc.unique(pc.list_flatten(key_lists))
        limits_.check_columns(len(unique_keys))
        keys: list[str] = unique_keys.to_pylist()
        if not keys:
            return pa.table({"_": pa.nulls(n, pa.string())}).select([]), {}
        structure = json.dumps(dict.fromkeys(keys, "VARCHAR"))
        values = _fetch(con, "SELECT json_transform(line, ?) AS v FROM jsonl_objects", [structure]).column("v")
    finally:
        con.unregister("jsonl_objects")
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    columns = [values.field(j) for j in range(len(keys))]
    rows = pc.indices_nonzero(rewrite).to_pylist()
    if rows:
        columns = _numbers_as_written(objects, rows, keys, columns)
    return pa.Table.from_arrays(columns, names=keys), _absent_keys(key_lists, keys, columns, n)


def _absent_keys(key_lists: pa.ChunkedArray | pa.Array, keys: list[str], columns: list[pa.Array],
                 n: int) -> dict[str, pa.Array]:
    """For each key with null values: which of the `n` objects lack it (`json_keys` of each object in `key_lists`)."""
    nullable = [key for key, column in zip(keys, columns, strict=True) if column.null_count]
    if not nullable:
        return {}
    lists = key_lists.combine_chunks() if isinstance(key_lists, pa.ChunkedArray) else key_lists
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    rows = arange(n)
    absent = {}
    for key in nullable:
        having = parents.filter(pc.equal(flat, key))
        if len(having) < n:
            absent[key] = pc.invert(pc.is_in(rows, value_set=having))
    return absent


class _RawNumber(str):
    """A JSON number kept as its source text."""


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def _numbers_as_written(objects: pa.Array, rows: list[int], keys: list[str], columns: list[pa.Array]) -> list[pa.Array]:
    """Replace the top-level numbers of `rows` by their source text."""
    position = {key: j for j, key in enumerate(keys)}
    updates: dict[int, tuple[list[int], list[str]]] = {}
    for r, line in zip(rows, objects.take(pa.array(rows, pa.int64())).to_pylist(), strict=True):
        # Per-line Python only for lines whose numbers DuckDB may print differently from the source.
        try:
            parsed = json.loads(line, parse_float=_RawNumber, parse_int=_RawNumber, object_pairs_hook=_first_wins)
        except (ValueError, RecursionError):
            continue  # the line is valid JSON (checked above) but too deep for `json`: it keeps DuckDB's number text
        for key, value in parsed.items():
            if isinstance(value, _RawNumber):
                target = updates.setdefault(position[key], ([], []))
                target[0].append(r)
                target[1].append(str(value))
    for j, (row_ids, texts) in updates.items():
        mask = pc.is_in(arange(len(objects)), value_set=pa.array(row_ids, pa.int64()))
        columns[j] = pc.replace_with_mask(columns[j], mask, pa.array(texts, pa.string()))
    return columns


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True



def _fetch(con: duckdb.DuckDBPyConnection, query: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
    result = con.execute(query, params).arrow()
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
