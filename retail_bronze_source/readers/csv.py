"""CSV reader: RFC 4180 records as all-string Arrow chunks, ragged and broken records as parse rejects.

Policies:
- The first record is the header. Every column is a string; empty fields stay `""` (never null). A UTF-8 BOM is
  dropped. CRLF, LF and CR line ends read the same. Quoted fields may hold delimiters, doubled quotes and line breaks.
- Header names are made unique and non-empty, left to right: a blank name (empty or only whitespace) becomes
  `column_<position>` (1-based); a name already taken gets the suffix `__2`, `__3`, ... (the first free one).
- Empty lines are not records (they are skipped and not counted). `row_numbers` and reject row numbers count the
  records after the header, rejected ones included, so 1 is the first data record.
- A record whose field count differs from the header's is `MALFORMED_ROW` when its text holds an odd number of quote
  characters (broken quoting), else `TOO_MANY_COLUMNS` / `TOO_FEW_COLUMNS`. A file that ends inside a quoted field
  makes its last record `MALFORMED_ROW`. Text after a closing quote is kept as part of the field (`"a"b` reads `ab`),
  as pyarrow and Python's csv module do.
- Invalid UTF-8 anywhere rejects the file (`FILE_ENCODING`, with byte offset and line); it is detected while the
  bytes are read, so it can surface after earlier chunks were yielded. Other parser failures are `FILE_UNREADABLE`.
  A 0-byte file yields nothing; a header-only file yields one empty chunk with the header's columns.
"""

from __future__ import annotations

import codecs
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .. import limits, reasons
from ..helpers import arange
from ..raw import FileRejected, ParseReject, RawChunk, RawFile
from .streams import LineFilter, open_text

_PARSER_READ_AHEAD = 32
"""Blocks pyarrow's CSV reader reads ahead on its background thread: the block size (`max_record_bytes`) bounds what
one file's reader holds to 32 times that (64 MB by default; with 8 MiB blocks it read a 165 MB file whole)."""


@dataclass(frozen=True)
class Dialect:
    """How a delimited file is written: its `reader_options` (see `readers/options.py`) in one value."""

    delimiter: str = ","
    quote_char: str | None = '"'
    escape_char: str | None = None
    header: bool = True
    column_names: tuple[str, ...] = ()
    header_row: int = 1
    comment: str | None = None
    null_values: tuple[str, ...] = ()
    decimal: str = "."
    decimal_columns: tuple[str, ...] = ()
    encoding: str = "utf-8"
    skip_empty_records: bool = False
    max_columns: int = limits.MAX_COLUMNS
    max_record_bytes: int = limits.MAX_CSV_RECORD_BYTES

    def __post_init__(self) -> None:
        for name in ("delimiter", "quote_char", "escape_char"):
            value = getattr(self, name)
            if value is not None and (len(value) != 1 or value in "\r\n"):
                raise ValueError(f"{name} must be one character other than a line break, got {value!r}")
        if self.quote_char is not None and self.delimiter == self.quote_char:
            raise ValueError(f"delimiter {self.delimiter!r} is also the quote character")
        if not self.header and not self.column_names:
            raise ValueError("a file without header needs column_names")
        if self.header_row < 1 or self.max_columns < 1 or self.max_record_bytes < 1024:
            raise ValueError("header_row and max_columns must be >= 1, max_record_bytes >= 1024")
        if self.decimal not in (".", ","):
            raise ValueError(f"decimal must be '.' or ',', got {self.decimal!r}")
        codecs.lookup(self.encoding)

    @property
    def transforms_values(self) -> bool:
        """Whether values are changed after parsing (null tokens, decimal commas)."""
        return bool(self.null_values) or (self.decimal == "," and bool(self.decimal_columns))


def read_csv(file: RawFile, chunk_size: int, **options: Any) -> Iterator[RawChunk]:
    """Stream `file` as delimited text (by default RFC 4180 CSV with a header record): chunks of at most `chunk_size`
    rows (parsed blocks joined), in file order. `options` are the table's `reader_options` (`Dialect`)."""
    dialect = _dialect(options)
    # A record of values as written with RFC 4180 quotes is re-serialized for a reject only when rejected (cheaper than
    # keeping every record's text); otherwise the reader keeps every record's text (before null tokens or decimal
    # commas apply).
    keep = dialect.quote_char != '"' or dialect.escape_char is not None or dialect.transforms_values
    render = None if keep else functools.partial(format_csv_records, delimiter=dialect.delimiter)
    for chunk in _read_delimited(file, chunk_size, dialect, keep_records=keep):
        chunk.render = render
        yield chunk


def read_tsv(file: RawFile, chunk_size: int, **options: Any) -> Iterator[RawChunk]:
    """Stream `file` as tab-separated text: `read_csv` with the tab as delimiter, whatever the table declares for its
    other delimited files, and each record's text kept for its rejects."""
    yield from _read_delimited(file, chunk_size, _dialect({**options, "delimiter": "\t"}), keep_records=True)


def read_txt(file: RawFile, chunk_size: int, **options: Any) -> Iterator[RawChunk]:
    """Stream `file` as delimited text with the table's declared `delimiter` (a table taking .txt files must declare
    one), each record's text kept for its rejects."""
    if "delimiter" not in options:
        raise ValueError("a .txt file is read with the table's declared delimiter; declare reader_options['delimiter']")
    yield from _read_delimited(file, chunk_size, _dialect(options), keep_records=True)


def _dialect(options: dict[str, Any]) -> Dialect:
    values = dict(options)
    for name in ("column_names", "null_values", "decimal_columns"):
        if name in values:
            values[name] = tuple(values[name])
    return Dialect(**values)


def _open_stack(file: RawFile, dialect: Dialect) -> IO[bytes]:
    """The file's text as UTF-8 (decompressed, transcoded), without lines before the header and comment lines."""
    handle = open_text(file, dialect.encoding)
    skip = dialect.header_row - 1 if dialect.header else 0
    if skip or dialect.comment:
        handle = cast(IO[bytes], LineFilter(handle, skip_lines=skip, comment=dialect.comment,
                                            quote=dialect.quote_char, escape=dialect.escape_char))
    return handle


def _read_delimited(file: RawFile, chunk_size: int, dialect: Dialect, *, keep_records: bool) -> Iterator[RawChunk]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    block_size = dialect.max_record_bytes
    with _open_stack(file, dialect) as handle:
        stream = _CheckedStream(handle, file, block_size, reopen=lambda: _open_stack(file, dialect))
        head = stream.read(block_size)
        if not head:
            return
        stream.push_back(head)
        try:
            header = _header_names(head, dialect) if dialect.header else list(dialect.column_names)
            if len(header) > dialect.max_columns:
                raise FileRejected(
                    reasons.LIMIT_EXCEEDED,
                    f"max_columns: the {'header' if dialect.header else 'file'} has {len(header)} columns, over the "
                    f"limit of {dialect.max_columns} (reader_options['max_columns'] raises it)"
                )
            invalid = _InvalidRows()
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size,
                                               column_names=None if dialect.header else header),
                parse_options=_parse_options(dialect, invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=False,  # every byte the parser sees has been checked by `_CheckedStream`
                ),
            )
        except pa.ArrowException as error:
            raise FileRejected(*_unreadable(error, block_size)) from error
        names = unique_column_names(header)
        chunks = _chunks(reader, invalid, names, stream, dialect, file.rel_path, block_size)
        for chunk in _joined(chunks, limits.chunk_rows(chunk_size, len(names))):
            yield _applied(chunk, dialect, keep_records)


def unique_column_names(names: list[str]) -> list[str]:
    """Header names made unique and non-empty: blank -> `column_<position>`, repeated -> `<name>__2`, `__3`, ..."""
    taken: set[str] = set()
    result = []
    for position, name in enumerate(names, start=1):
        base = name if name.strip() else f"column_{position}"
        candidate, suffix = base, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{base}__{suffix}"
        taken.add(candidate)
        result.append(candidate)
    return result


def format_csv_records(table: pa.Table, delimiter: str = ",", quote_char: str | None = '"') -> pa.Array:
    """Each row of an all-string `table` as one RFC 4180 record (no line terminator); nulls become empty fields.

    A field is quoted only when it holds the delimiter, a quote, CR or LF; inner quotes are doubled. Without a quote
    character (`None`) fields are joined as they are.
    """
    if table.num_columns == 0:
        return pc.fill_null(pa.nulls(table.num_rows, pa.string()), "")
    fields = []
    for column in table.columns:
        text = pc.fill_null(column.cast(pa.string()), "")
        if quote_char is None:
            fields.append(text)
            continue
        special = pc.match_substring_regex(text, "[" + _regex_class(quote_char) + "\r\n]")
        needs_quotes = pc.or_(pc.match_substring(text, delimiter), special)
        quoted = pc.binary_join_element_wise(quote_char, pc.replace_substring(text, quote_char, quote_char * 2),
                                             quote_char, "")
        fields.append(pc.if_else(needs_quotes, quoted, text))
    records = pc.binary_join_element_wise(*fields, delimiter)
    return records.combine_chunks() if isinstance(records, pa.ChunkedArray) else records


class _InvalidRows:
    """Invalid-row handler for pyarrow: keeps each ragged record and tells the parser to skip it."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def __call__(self, row: Any) -> str:
        self.pending.append((row.number, row.expected_columns, row.actual_columns, row.text))
        return "skip"

    def take(self) -> list[Any]:
        taken, self.pending = self.pending, []
        return taken


def _regex_class(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


def _parse_options(dialect: Dialect, handler: Any) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(
        delimiter=dialect.delimiter,
        quote_char=dialect.quote_char if dialect.quote_char is not None else False,
        double_quote=True,
        escape_char=dialect.escape_char if dialect.escape_char is not None else False,
        newlines_in_values=True,
        ignore_empty_lines=True,
        invalid_row_handler=handler,
    )


_HEADER_PROBE_BYTES = 1 << 16


def _header_names(head: bytes, dialect: Dialect) -> list[str]:
    """Header field names as pyarrow parses them from the first block.

    Only the first 64 KiB are parsed (pyarrow infers a type for every column of what it parses); a header record
    longer than that is parsed from the whole block.
    """
    try:
        return _probe_names(head, min(len(head), _HEADER_PROBE_BYTES), dialect)
    except pa.ArrowException:
        if len(head) <= _HEADER_PROBE_BYTES:
            raise
        return _probe_names(head, len(head), dialect)


def _probe_names(head: bytes, size: int, dialect: Dialect) -> list[str]:
    probe = pacsv.open_csv(
        io.BytesIO(head),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=size + 1),
        parse_options=_parse_options(dialect, lambda _row: "skip"),
    )
    return list(probe.schema.names)


def _unreadable(error: pa.ArrowException, block_size: int) -> tuple[str, str]:
    """The reason code and detail of a parser failure."""
    if "straddl" in str(error):
        return (reasons.LIMIT_EXCEEDED,
                f"max_record_bytes: a record is longer than {block_size} bytes, usually a quote that is never closed "
                f"(reader_options['max_record_bytes'] raises the limit) ({error})")
    return reasons.FILE_UNREADABLE, f"CSV parse error: {error}"


def _reject(record_number: int, expected: int, actual: int, text: str, quote_char: str | None) -> ParseReject:
    if quote_char is not None and text.count(quote_char) % 2:
        return ParseReject(
            record_number,
            reasons.MALFORMED_ROW,
            f"unbalanced quotes: {actual} fields where the header has {expected}",
            text,
        )
    code = reasons.TOO_MANY_COLUMNS if actual > expected else reasons.TOO_FEW_COLUMNS
    return ParseReject(record_number, code, f"{actual} fields where the header has {expected}", text)


def _chunks(
    reader: pacsv.CSVStreamingReader,
    invalid: _InvalidRows,
    names: list[str],
    stream: _CheckedStream,
    dialect: Dialect,
    rel_path: str,
    block_size: int,
) -> Iterator[RawChunk]:
    """Chunks with record numbers: pyarrow parses ahead, so rejects are matched to batches by their numbers.

    A batch's rows are the next records after the last numbered row that are not known rejects; every reject before
    the batch's last row has been reported by then, because pyarrow parses a block before it returns its batch.
    """
    last_row = 0
    pending: list[ParseReject] = []
    held: RawChunk | None = None
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            batch = None
        except pa.ArrowException as error:
            raise FileRejected(*_unreadable(error, block_size)) from error
        # Per-record Python only for rejected records, which pyarrow reports one by one. pyarrow numbers records
        # from 1 with the header included.
        for number, expected, actual, text in invalid.take():
            record = number - 1 if dialect.header else number
            if record <= last_row:
                raise RuntimeError(f"{rel_path}: pyarrow reported record {record} after record {last_row}")
            pending.append(_reject(record, expected, actual, text, dialect.quote_char))
        pending.sort(key=lambda reject: reject.row_number)
        chunk: RawChunk | None = None
        if batch is None:
            if pending:
                chunk = RawChunk(data=_empty(names), row_numbers=pa.array([], pa.int64()), rejects=pending)
        else:
            rows = pa.Table.from_batches([batch]).rename_columns(names)
            candidates = pc.add(arange(rows.num_rows + len(pending)), last_row + 1)
            if pending:
                known = pa.array([reject.row_number for reject in pending], pa.int64())
                candidates = pc.filter(candidates, pc.invert(pc.is_in(candidates, value_set=known)))
            if rows.num_rows:
                row_numbers = candidates.slice(0, rows.num_rows)
                last_row = row_numbers[-1].as_py()
                split = sum(1 for reject in pending if reject.row_number < last_row)
                chunk = RawChunk(data=rows, row_numbers=row_numbers, rejects=pending[:split])
                pending = pending[split:]
        if chunk is not None:
            if held is not None:
                yield held
            held = chunk
        if batch is None:
            break
    if held is None:
        yield RawChunk(data=_empty(names), row_numbers=pa.array([], pa.int64()))
        return
    last_record = max([last_row] + [reject.row_number for reject in held.rejects])
    yield _check_unterminated_quote(held, last_record, stream, dialect)


def _joined(chunks: Iterator[RawChunk], rows: int) -> Iterator[RawChunk]:
    """Consecutive chunks (one per parsed block) joined into chunks of at most `rows` rows; a block holding more
    stays one chunk."""
    pending: list[RawChunk] = []
    count = 0
    for chunk in chunks:
        if pending and count + chunk.data.num_rows > rows:
            yield _join(pending)
            pending, count = [], 0
        pending.append(chunk)
        count += chunk.data.num_rows
    if pending:
        yield _join(pending)


def _join(chunks: list[RawChunk]) -> RawChunk:
    """One chunk of `chunks`, its columns contiguous again (as one parsed block gives them): every later step, down to
    the staged Arrow batches, works per contiguous piece."""
    if len(chunks) == 1:
        return chunks[0]
    return RawChunk(
        data=pa.concat_tables([c.data for c in chunks]).combine_chunks(),
        row_numbers=pa.concat_arrays([c.row_numbers for c in chunks]),
        rejects=[reject for c in chunks for reject in c.rejects],
    )



def _empty(names: list[str]) -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in names})


def _check_unterminated_quote(chunk: RawChunk, last_record: int, stream: _CheckedStream, dialect: Dialect) -> RawChunk:
    """The last chunk, with its final row turned into a MALFORMED_ROW reject if the file ends inside a quoted field.

    pyarrow reads an unterminated quoted field as running to the end of the file; that is the case exactly when the
    file ends with a quote followed by the last value with its quotes doubled (or escaped, with an escape character).
    """
    n = chunk.data.num_rows
    quote, escape = dialect.quote_char, dialect.escape_char
    if quote is None or n == 0 or chunk.data.num_columns == 0 or chunk.row_numbers[n - 1].as_py() != last_record:
        return chunk
    last_value = chunk.data.column(chunk.data.num_columns - 1)[n - 1].as_py()
    written = [quote + last_value.replace(quote, quote * 2)]
    if escape is not None:
        written.append(quote + last_value.replace(escape, escape * 2).replace(quote, escape + quote))
    tail = stream.tail()
    source = next((text.encode() for text in written if tail.endswith(text.encode())), None)
    if source is None:
        return chunk
    record = chunk.data.slice(n - 1)
    delimiter = dialect.delimiter
    leading = format_csv_records(record.select(range(record.num_columns - 1)), delimiter, quote)[0].as_py()
    text = (leading + delimiter if record.num_columns > 1 else "") + source.decode()
    text = text.removesuffix("\n").removesuffix("\r")
    reject = ParseReject(last_record, reasons.MALFORMED_ROW, "quoted field not closed before the end of the file", text)
    return RawChunk(
        data=chunk.data.slice(0, n - 1),
        row_numbers=chunk.row_numbers.slice(0, n - 1),
        rejects=[*chunk.rejects, reject],
    )


def _applied(chunk: RawChunk, dialect: Dialect, keep_records: bool) -> RawChunk:
    """`chunk` with the dialect's record-level options applied, in this order: each record's text kept (before any
    value changes), entirely empty records skipped, null tokens read as missing, decimal commas read as points."""
    if not (keep_records or dialect.skip_empty_records or dialect.transforms_values):
        return chunk
    data, numbers, rejects = chunk.data, chunk.row_numbers, chunk.rejects
    records = format_csv_records(data, dialect.delimiter, dialect.quote_char) if keep_records else None
    if dialect.skip_empty_records:
        data, numbers, records, rejects = _without_empty_records(data, numbers, records, rejects, dialect)
    if dialect.null_values:
        tokens = pa.array(dialect.null_values, pa.string())
        data = pa.table([pc.if_else(pc.is_in(column, value_set=tokens), pa.scalar(None, pa.string()), column)
                         for column in data.columns], names=data.column_names)
    if dialect.decimal == "," and dialect.decimal_columns:
        data, numbers, records, rejects = _decimal_commas(data, numbers, records, rejects, dialect)
    return RawChunk(data=data, row_numbers=numbers, rejects=rejects, raw_records=records)


def _without_empty_records(data: pa.Table, numbers: pa.Array, records: pa.Array | None, rejects: list[ParseReject],
                           dialect: Dialect) -> tuple[pa.Table, pa.Array, pa.Array | None, list[ParseReject]]:
    """Drop the records whose fields are all empty: rows of empty strings, and ragged records whose text holds only
    delimiters and quotes."""
    if data.num_columns and data.num_rows:
        empty = pc.equal(data.column(0), "")
        for column in data.columns[1:]:
            empty = pc.and_(empty, pc.equal(column, ""))
        keep = pc.invert(empty)
        if pc.any(empty).as_py():
            data, numbers = data.filter(keep), numbers.filter(keep)
            records = records.filter(keep) if records is not None else None
    blank = set(dialect.delimiter + (dialect.quote_char or ""))
    return data, numbers, records, [r for r in rejects if r.reason_code == reasons.MALFORMED_ROW
                                    or not set(r.raw_record) <= blank]


def _decimal_commas(data: pa.Table, numbers: pa.Array, records: pa.Array | None, rejects: list[ParseReject],
                    dialect: Dialect) -> tuple[pa.Table, pa.Array, pa.Array | None, list[ParseReject]]:
    """Read the decimal columns' commas as decimal points. A value there holding a point is a `TYPE_MISMATCH` reject
    (thousands separators are not read): taken as written it would load as another number."""
    columns = [name for name in dialect.decimal_columns if name in data.column_names]
    if not columns or not data.num_rows:
        return data, numbers, records, rejects
    bad = None
    for name in columns:
        has_point = pc.fill_null(pc.match_substring(data[name], "."), False)
        bad = has_point if bad is None else pc.or_(bad, has_point)
    assert bad is not None
    if pc.any(bad).as_py():
        # Per-row Python only for the rejected rows.
        rows = pc.indices_nonzero(bad).to_pylist()
        texts = records.take(rows).to_pylist() if records is not None else [""] * len(rows)
        for row, text in zip(rows, texts, strict=True):
            values = {name: data[name][row].as_py() for name in columns}
            shown = ", ".join(f"{name} {value!r}" for name, value in values.items() if value and "." in value)
            rejects = [*rejects, ParseReject(numbers[row].as_py(), reasons.TYPE_MISMATCH,
                                             f"{shown}: a '.' where the table declares the decimal separator ','",
                                             text or "")]
        keep = pc.invert(bad)
        data, numbers = data.filter(keep), numbers.filter(keep)
        records = records.filter(keep) if records is not None else None
        rejects = sorted(rejects, key=lambda reject: reject.row_number)
    converted = {name: pc.replace_substring(data[name], ",", ".") for name in columns}
    data = pa.table([converted.get(name, data[name]) for name in data.column_names], names=data.column_names)
    return data, numbers, records, rejects


class _CheckedStream(io.RawIOBase):
    """The file's bytes, validated as UTF-8 while read, ending in a line break, with the recent bytes kept.

    pyarrow's reader asks for blocks with `read_buffer`, which reads into buffers of Arrow's memory pool: the pool
    reuses its memory, while each fresh `bytes` object of a block's size is mapped anew and faulted in page by page
    (about 65k page faults in a run of 2M rows of CSV).
    """

    def __init__(self, raw: IO[bytes], file: RawFile, block_size: int, reopen: Callable[[], IO[bytes]]) -> None:
        super().__init__()
        self._raw = raw
        self._file = file
        self._reopen = reopen
        self._carry = b""
        """Bytes of a character that the last read split; they are checked with the next read."""
        self._offset = 0
        self._pushed = b""
        self._recent: list[bytes | memoryview] = []
        self._keep = 2 * block_size + 1
        self._last_byte = b""
        self._at_eof = False

    def readable(self) -> bool:
        return True

    def push_back(self, data: bytes) -> None:
        self._pushed = data + self._pushed

    def tail(self) -> bytes:
        return b"".join(self._recent)

    def read(self, size: int | None = -1) -> bytes:
        want = size if size is not None and size >= 0 else 1 << 62
        parts = []
        if self._pushed:
            parts.append(self._pushed[:want])
            self._pushed = self._pushed[want:]
            want -= len(parts[0])
        while want > 0 and not self._at_eof:
            data = self._raw.read(min(want, 1 << 30))
            if not data:
                self._finish()
                if self._last_byte not in (b"", b"\n", b"\r"):
                    data = b"\n"
                    self._remember(data)
                    parts.append(data)
                break
            self._check(data)
            self._remember(data)
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def read_buffer(self, size: int) -> pa.Buffer:
        """Up to `size` bytes, like `read`, in a buffer of Arrow's memory pool."""
        if self._pushed or self._at_eof or size <= 0:
            return pa.py_buffer(self.read(size))
        buffer = pa.allocate_buffer(size, resizable=True)
        view = memoryview(buffer).cast("B")  # Arrow exports signed bytes
        filled = 0
        while filled < size:
            got = cast(io.BufferedIOBase, self._raw).readinto(view[filled:])
            if not got:
                break
            filled += got
        view.release()
        if not filled:
            return pa.py_buffer(self.read(size))  # the end: `read` adds the final line break where one is missing
        buffer.resize(filled)
        data = memoryview(buffer).cast("B")
        self._check(data)
        self._remember(data)
        return buffer

    def _remember(self, data: bytes | memoryview) -> None:
        self._recent.append(data)
        self._last_byte = bytes(data[-1:])
        while len(self._recent) > 1 and sum(map(len, self._recent[1:])) >= self._keep:
            self._recent.pop(0)

    def _check(self, data: bytes | memoryview) -> None:
        complete = _complete_utf8_prefix(data)
        checked = self._carry + data[:complete] if self._carry else memoryview(data)[:complete]
        if not _is_utf8(checked):
            self._locate_encoding_error(data)
        self._carry = bytes(data[complete:])
        self._offset += len(data)

    def _finish(self) -> None:
        self._at_eof = True
        if self._carry:
            self._locate_encoding_error(b"", final=True)

    def _locate_encoding_error(self, data: bytes | memoryview, final: bool = False) -> None:
        """Raise FILE_ENCODING with the byte offset and line of the first invalid byte in the carry and `data`."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        pending = len(self._carry)
        try:
            decoder.decode(self._carry + data, final=final)
        except UnicodeDecodeError as error:
            offset = self._offset - pending + error.start
            raise FileRejected(
                reasons.FILE_ENCODING,
                f"invalid UTF-8 at byte offset {offset} (line {self._line_at(offset)}): {error.reason}"
            ) from error
        raise AssertionError("pyarrow and Python disagree on UTF-8 validity")

    def _line_at(self, offset: int) -> int:
        """The 1-based line of byte `offset`, counted in the text read again up to it (only for the error)."""
        lines, left = 1, offset
        with self._reopen() as again:
            while left > 0 and (data := again.read(min(left, 1 << 20))):
                lines += data.count(b"\n")
                left -= len(data)
        return lines


def _complete_utf8_prefix(data: bytes | memoryview) -> int:
    """Length of `data` without a trailing multi-byte character that the next read completes."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def _is_utf8(data: bytes | memoryview) -> bool:
    """Whether `data` is valid UTF-8, checked by Arrow (without holding the GIL) instead of decoded in Python."""
    buffer = pa.py_buffer(data)
    offsets = pa.py_buffer(pa.array([0, len(data)], pa.int32()).buffers()[1])
    try:
        pa.Array.from_buffers(pa.binary(), 1, [None, offsets, buffer]).cast(pa.string())
    except pa.ArrowInvalid:
        return False
    return True
