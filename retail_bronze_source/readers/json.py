"""JSON reader: a top-level array of objects, streamed element by element; other `.json` content as JSON Lines.

Policies:
- A file whose first value character (after a BOM and whitespace) is `[` is one JSON array: each element is a record,
  numbered from 1 in array order, and parsed like a JSON Lines line (strict RFC 8259, top-level values as text,
  `INVALID_JSON` and `NOT_AN_OBJECT` rejects, `raw_records` the element's text as written). Any other file is read
  as JSON Lines (`read_jsonl`), row numbers being physical lines.
- The array's own structure must hold: a missing comma between elements, an empty element (`[1,,2]`), an array that
  is never closed or anything but whitespace after it rejects the file as `FILE_UNREADABLE` with the byte offset.
- The array is never held whole: elements are cut from blocks of the text by regular expressions (a flat object in
  one match; nested ones by bracket depth outside strings), so at most one element and one block are in memory. An
  element longer than `max_record_bytes` rejects the file as `LIMIT_EXCEEDED`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import IO, cast

import duckdb
import pyarrow as pa

from .. import limits, reasons, settings
from ..raw import FileRejected, RawChunk, RawFile
from .jsonl import RecordLimits, parse_records, read_lines
from .streams import open_text

_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
_FLAT_OBJECT = re.compile(rb'\{(?:[^{}\[\]"]++|"(?:[^"\\]++|\\.)*+")*+\}')
"""An object without nested objects or arrays, whole: most elements are cut by this one match."""
_FLAT_THEN_COMMA = re.compile(rb'[ \t\r\n]*+(\{(?:[^{}\[\]"]++|"(?:[^"\\]++|\\.)*+")*+\})[ \t\r\n]*+,')
"""A flat object and the comma after it: the common case, cut by one match per element."""
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|"|[\[\]{}]')
"""A whole string (skipped), a string the block cuts (a lone quote: read more), or a bracket."""
_SCALAR = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[^,\]\s]++')
"""Possessive quantifiers (`*+`, `++`) never backtrack: a match fails or succeeds in one pass over the bytes."""


def read_json(file: RawFile, chunk_size: int, *, encoding: str = "utf-8", max_columns: int = limits.MAX_COLUMNS,
              max_record_bytes: int = limits.MAX_JSON_RECORD_BYTES) -> Iterator[RawChunk]:
    """Stream a `.json` file: the elements of its top-level array in chunks of at most `chunk_size`, or its JSON
    Lines. The file is decompressed and transcoded to UTF-8 as it streams."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with open_text(file, encoding) as handle:
        head = handle.read(settings.JSON_BLOCK_BYTES)
        start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
        while (first := _WHITESPACE.match(head, start)) is not None and first.end() == len(head):
            more = handle.read(settings.JSON_BLOCK_BYTES)
            if not more:
                return
            head += more
        assert first is not None
        if head[first.end():first.end() + 1] != b"[":
            yield from read_lines(cast(IO[bytes], _Prefixed(head, handle)), chunk_size, file.rel_path, max_columns=max_columns,
                                  max_record_bytes=max_record_bytes)
            return
        splitter = _ArraySplitter(handle, head, first.end() + 1, RecordLimits(max_columns, max_record_bytes, file.rel_path))
        con = duckdb.connect()
        try:
            batch_bytes = max(chunk_size * settings.JSON_BYTES_PER_ROW, settings.JSON_BLOCK_BYTES)
            texts: list[bytes] = []
            size = 0
            number = 1
            for element in splitter.elements():
                texts.append(element)
                size += len(element)
                if len(texts) >= chunk_size or size >= batch_bytes:
                    chunk = _parse(con, texts, number, splitter.limits)
                    number += len(texts)
                    texts, size = [], 0
                    if chunk is not None:
                        yield chunk
            if texts:
                chunk = _parse(con, texts, number, splitter.limits)
                if chunk is not None:
                    yield chunk
        finally:
            con.close()


def _parse(con: duckdb.DuckDBPyConnection, texts: list[bytes], first: int, limits_: RecordLimits) -> RawChunk | None:
    numbers = pa.array(range(first, first + len(texts)), pa.int64())
    return parse_records(con, pa.array(texts, pa.large_binary()), numbers, limits_)


class _ArraySplitter:
    """Cuts the elements of a JSON array out of a stream whose first block `head` opens the array at `position`."""

    def __init__(self, handle: IO[bytes], head: bytes, position: int, limits_: RecordLimits) -> None:
        self._handle = handle
        self._buffer = head
        self._position = position
        self._offset = 0
        """Byte offset of the buffer's first byte in the text."""
        self._ended = False
        self.limits = limits_

    def _more(self) -> bool:
        """Read the next block into the buffer, dropping what was consumed; False at the end of the text."""
        if self._ended:
            return False
        data = self._handle.read(settings.JSON_BLOCK_BYTES)
        if not data:
            self._ended = True
            return False
        self._offset += self._position
        self._buffer = self._buffer[self._position:] + data
        self._position = 0
        return True

    def _skip_whitespace(self) -> bool:
        """Move past whitespace; False when the text ends first."""
        while True:
            found = _WHITESPACE.match(self._buffer, self._position)
            assert found is not None
            self._position = found.end()
            if self._position < len(self._buffer):
                return True
            if not self._more():
                return False

    def _broken(self, expected: str) -> FileRejected:
        at = self._offset + self._position
        found = self._buffer[self._position:self._position + 20]
        what = f"found {found.decode('utf-8', 'backslashreplace')!r}" if found else "the file ends"
        return FileRejected(reasons.FILE_UNREADABLE,
                            f"not a JSON array: expected {expected} at byte offset {at}, {what}")

    def elements(self) -> Iterator[bytes]:
        if not self._skip_whitespace():
            raise self._broken("a value or ']'")
        if self._buffer[self._position:self._position + 1] == b"]":
            self._position += 1
        else:
            number = 1
            while True:
                while (flat := _FLAT_THEN_COMMA.match(self._buffer, self._position)) is not None:
                    if flat.end(1) - flat.start(1) > self.limits.max_record_bytes:
                        self.limits.too_long(number, flat.end(1) - flat.start(1), "array element")
                    yield flat.group(1)
                    number += 1
                    self._position = flat.end()
                if not self._skip_whitespace():
                    raise self._broken("a value")
                element = self._element(number)
                if len(element) > self.limits.max_record_bytes:
                    self.limits.too_long(number, len(element), "array element")
                yield element
                number += 1
                if not self._skip_whitespace():
                    raise self._broken("',' or ']'")
                separator = self._buffer[self._position:self._position + 1]
                if separator == b"]":
                    self._position += 1
                    break
                if separator != b",":
                    raise self._broken("',' or ']'")
                self._position += 1
        if self._skip_whitespace():
            raise self._broken("nothing after the array")

    def _element(self, number: int) -> bytes:
        start = self._position
        opener = self._buffer[start:start + 1]
        if opener in (b",", b"]"):
            raise self._broken("a value")
        if opener == b"{" and (flat := _FLAT_OBJECT.match(self._buffer, start)) is not None:
            self._position = flat.end()
            return self._buffer[start:flat.end()]
        if opener not in (b"{", b"["):
            return self._scalar(number)
        depth, scan = 0, start
        while True:
            for token in _TOKEN.finditer(self._buffer, scan):
                text = token.group()
                if text == b'"':
                    break  # a string the block cuts: read more, then look at it again
                scan = token.end()
                if text in (b"{", b"["):
                    depth += 1
                elif text in (b"}", b"]"):
                    depth -= 1
                    if depth == 0:
                        self._position = scan
                        return self._buffer[start:scan]
            else:
                scan = len(self._buffer)
            start, scan = self._grow(start, scan, number)

    def _scalar(self, number: int) -> bytes:
        start = self._position
        while True:
            found = _SCALAR.match(self._buffer, start)
            if found is not None and (found.end() < len(self._buffer) or self._ended):
                self._position = found.end()
                return found.group()
            if found is None and self._ended:
                raise self._broken("a value")
            start, _ = self._grow(start, start, number)

    def _grow(self, start: int, scan: int, number: int) -> tuple[int, int]:
        """Read more for the element at `start` (scanned up to `scan`); positions are returned in the new buffer."""
        if len(self._buffer) - start > self.limits.max_record_bytes:
            self.limits.too_long(number, len(self._buffer) - start, "array element")
        self._position = start
        if not self._more():
            raise self._broken("the end of the element that starts here")
        return 0, scan - start


class _Prefixed:
    """`handle` with the bytes `head`, already read from it, in front again."""

    def __init__(self, head: bytes, handle: IO[bytes]) -> None:
        self._head = head
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = (self._head, b"") if size < 0 else (self._head[:size], self._head[size:])
            return data
        return self._handle.read(size)
