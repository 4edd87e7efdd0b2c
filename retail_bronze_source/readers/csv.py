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
import io
from collections.abc import Iterator
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .. import reasons
from .base import FileRejected, ParseReject, RawChunk, RawFile

_MIN_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 2 << 20
"""pyarrow's CSV reader reads up to 32 blocks ahead on a background thread, so the block size bounds what one file's
reader holds (64 MB at 2 MiB; with 8 MiB blocks it read a 165 MB file whole). It is also the longest record."""
_BYTES_PER_ROW = 64


def read_csv(file: RawFile, chunk_size: int, *, delimiter: str = ",") -> Iterator[RawChunk]:
    """Stream `file` as CSV with a header record: chunks of at most `chunk_size` rows (parsed blocks joined), in file
    order."""
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"delimiter must be one character other than a quote or line break, got {delimiter!r}")
    block_size = max(min(chunk_size * _BYTES_PER_ROW, _MAX_BLOCK_BYTES), _MIN_BLOCK_BYTES)
    with file.open() as handle:
        stream = _CheckedStream(handle, file, block_size)
        head = stream.read(block_size)
        if not head:
            return
        stream.push_back(head)
        try:
            header = _header_names(head, delimiter)
            invalid = _InvalidRows()
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
                parse_options=_parse_options(delimiter, invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=False,  # every byte the parser sees has been checked by `_CheckedStream`
                ),
            )
        except pa.ArrowException as error:
            raise FileRejected(
                reasons.FILE_UNREADABLE, _unreadable(error, block_size), rel_path=file.rel_path
            ) from error
        names = unique_column_names(header)
        yield from _joined(_chunks(reader, invalid, names, stream, delimiter, file.rel_path, block_size), chunk_size)


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


def format_csv_records(table: pa.Table, delimiter: str = ",") -> pa.Array:
    """Each row of an all-string `table` as one RFC 4180 record (no line terminator); nulls become empty fields.

    A field is quoted only when it holds the delimiter, a quote, CR or LF; inner quotes are doubled.
    """
    if table.num_columns == 0:
        return pc.fill_null(pa.nulls(table.num_rows, pa.string()), "")
    fields = []
    for column in table.columns:
        text = pc.fill_null(column.cast(pa.string()), "")
        needs_quotes = pc.or_(pc.match_substring(text, delimiter), pc.match_substring_regex(text, '["\r\n]'))
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
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


def _parse_options(delimiter: str, handler: Any) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"',
        double_quote=True,
        escape_char=False,
        newlines_in_values=True,
        ignore_empty_lines=True,
        invalid_row_handler=handler,
    )


_HEADER_PROBE_BYTES = 1 << 16


def _header_names(head: bytes, delimiter: str) -> list[str]:
    """Header field names as pyarrow parses them from the first block.

    Only the first 64 KiB are parsed (pyarrow infers a type for every column of what it parses); a header record
    longer than that is parsed from the whole block.
    """
    try:
        return _probe_names(head, min(len(head), _HEADER_PROBE_BYTES), delimiter)
    except pa.ArrowException:
        if len(head) <= _HEADER_PROBE_BYTES:
            raise
        return _probe_names(head, len(head), delimiter)


def _probe_names(head: bytes, size: int, delimiter: str) -> list[str]:
    probe = pacsv.open_csv(
        io.BytesIO(head),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=size + 1),
        parse_options=_parse_options(delimiter, lambda _row: "skip"),
    )
    return list(probe.schema.names)


def _unreadable(error: pa.ArrowException, block_size: int) -> str:
    if "straddl" in str(error):
        return f"a record spans more than {block_size} bytes, usually a quote that is never closed ({error})"
    return f"CSV parse error: {error}"


def _reject(record_number: int, expected: int, actual: int, text: str) -> ParseReject:
    if text.count('"') % 2:
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
    delimiter: str,
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
            raise FileRejected(reasons.FILE_UNREADABLE, _unreadable(error, block_size), rel_path=rel_path) from error
        # Per-record Python only for rejected records, which pyarrow reports one by one.
        for number, expected, actual, text in invalid.take():
            if number - 1 <= last_row:
                raise RuntimeError(f"{rel_path}: pyarrow reported record {number - 1} after record {last_row}")
            pending.append(_reject(number - 1, expected, actual, text))
        pending.sort(key=lambda reject: reject.row_number)
        chunk: RawChunk | None = None
        if batch is None:
            if pending:
                chunk = RawChunk(data=_empty(names), row_numbers=pa.array([], pa.int64()), rejects=pending)
        else:
            rows = pa.Table.from_batches([batch]).rename_columns(names)
            candidates = pc.add(_arange(rows.num_rows + len(pending)), last_row + 1)
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
    yield _check_unterminated_quote(held, last_record, stream, delimiter)


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


def _arange(n: int) -> pa.Array:
    """0, 1, ..., n - 1 as int64."""
    return pc.subtract(pc.cumulative_sum(pc.fill_null(pa.nulls(n, pa.int64()), 1)), 1)


def _empty(names: list[str]) -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in names})


def _check_unterminated_quote(chunk: RawChunk, last_record: int, stream: _CheckedStream, delimiter: str) -> RawChunk:
    """The last chunk, with its final row turned into a MALFORMED_ROW reject if the file ends inside a quoted field.

    pyarrow reads an unterminated quoted field as running to the end of the file; that is the case exactly when the
    file ends with a quote followed by the last value with its quotes doubled.
    """
    n = chunk.data.num_rows
    if n == 0 or chunk.data.num_columns == 0 or chunk.row_numbers[n - 1].as_py() != last_record:
        return chunk
    last_value = chunk.data.column(chunk.data.num_columns - 1)[n - 1].as_py()
    source = ('"' + last_value.replace('"', '""')).encode()
    if not stream.tail().endswith(source):
        return chunk
    record = chunk.data.slice(n - 1)
    leading = format_csv_records(record.select(range(record.num_columns - 1)), delimiter)[0].as_py()
    text = (leading + delimiter if record.num_columns > 1 else "") + source.decode()
    text = text.removesuffix("\n").removesuffix("\r")
    reject = ParseReject(last_record, reasons.MALFORMED_ROW, "quoted field not closed before the end of the file", text)
    return RawChunk(
        data=chunk.data.slice(0, n - 1),
        row_numbers=chunk.row_numbers.slice(0, n - 1),
        rejects=[*chunk.rejects, reject],
    )


class _CheckedStream(io.RawIOBase):
    """The file's bytes, validated as UTF-8 while read, ending in a line break, with the recent bytes kept.

    pyarrow's reader asks for blocks with `read_buffer`, which reads into buffers of Arrow's memory pool: the pool
    reuses its memory, while each fresh `bytes` object of a block's size is mapped anew and faulted in page by page
    (about 65k page faults in a run of 2M rows of CSV).
    """

    def __init__(self, raw: IO[bytes], file: RawFile, block_size: int) -> None:
        super().__init__()
        self._raw = raw
        self._file = file
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
                f"invalid UTF-8 at byte offset {offset} (line {self._line_at(offset)}): {error.reason}",
                rel_path=self._file.rel_path,
            ) from error
        raise AssertionError("pyarrow and Python disagree on UTF-8 validity")

    def _line_at(self, offset: int) -> int:
        """The 1-based line of byte `offset`, counted in the file read again up to it (only for the error)."""
        lines, left = 1, offset
        with self._file.open() as again:
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
