"""Byte streams under the text readers: decompression, transcoding to UTF-8 and line filters, each in bounded blocks.

A text reader opens its file with `open_text`, which stacks what the file needs: the file itself, a decompressor when
its name ends in a compression suffix, and a transcoder when the table declares an encoding other than UTF-8. None of
them holds more than a block of the file.
"""

from __future__ import annotations

import codecs
import io
import re
from pathlib import PurePosixPath
from typing import IO, Any, cast

import pyarrow as pa

from .. import reasons, settings
from ..raw import FileRejected, RawFile

COMPRESSED_EXTENSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
"""Endings of compressed text files (`orders.csv.gz`) and the codec pyarrow decompresses each with; the file is read
decompressed as it streams."""


def compression_of(name: str) -> str | None:
    """The codec of a file named `name`, from its last suffix (None for an uncompressed file)."""
    return COMPRESSED_EXTENSIONS.get(PurePosixPath(name).suffix.lower())


def is_utf8(encoding: str) -> bool:
    """Whether `encoding` names plain UTF-8 (read as it is, validated by the reader)."""
    return codecs.lookup(encoding).name == "utf-8"


def open_text(file: RawFile, encoding: str = "utf-8") -> IO[bytes]:
    """`file`'s bytes as UTF-8: decompressed when its name ends in `.gz`, `.zst` or `.bz2`, transcoded from
    `encoding` otherwise. A file that cannot be opened is `FILE_UNREADABLE`; a corrupt compressed stream is
    `FILE_UNREADABLE` and a byte that is invalid in `encoding` `FILE_ENCODING`, both raised while reading."""
    try:
        handle: IO[bytes] = file.open()
    except OSError as exc:
        raise FileRejected(reasons.FILE_UNREADABLE, f"cannot open {file.rel_path}: {exc}") from exc
    codec = compression_of(file.rel_path)
    if codec is not None:
        handle = cast(IO[bytes], _Decompressed(handle, codec, file.rel_path))
    if not is_utf8(encoding):
        handle = cast(IO[bytes], _Transcoded(handle, encoding, file.rel_path))
    return handle


class _Source(io.RawIOBase):
    """A read-only stream over a block producer; `_next_block` returns b"" at the end."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def _next_block(self) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._done:
            self._pending = self._next_block()
            self._done = not self._pending
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class _Decompressed(_Source):
    """The decompressed bytes of a gzip, zstd or bz2 stream (several concatenated members read as one)."""

    def __init__(self, inner: IO[bytes], codec: str, rel_path: str) -> None:
        super().__init__(inner)
        self._codec = codec
        self._rel_path = rel_path
        self._stream = pa.CompressedInputStream(pa.PythonFile(inner, mode="r"), codec)

    def _next_block(self) -> bytes:
        try:
            return cast(bytes, self._stream.read(settings.TRANSCODE_BLOCK_BYTES))
        except (pa.ArrowException, OSError) as exc:
            raise FileRejected(reasons.FILE_UNREADABLE,
                               f"{self._rel_path} is not valid {self._codec} data: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


class _Transcoded(_Source):
    """The text of `inner`, decoded from `encoding` strictly and encoded as UTF-8, a block at a time."""

    def __init__(self, inner: IO[bytes], encoding: str, rel_path: str) -> None:
        super().__init__(inner)
        self._encoding = encoding
        self._rel_path = rel_path
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        self._offset = 0
        self._ended = False

    def _next_block(self) -> bytes:
        while not self._ended:
            data = self._inner.read(settings.TRANSCODE_BLOCK_BYTES)
            self._ended = not data
            try:
                text = self._decoder.decode(data, final=self._ended)
            except UnicodeDecodeError as error:
                offset = self._offset - len(self._decoder.getstate()[0]) + error.start
                raise FileRejected(reasons.FILE_ENCODING,
                                   f"invalid {self._encoding} at byte offset {max(offset, 0)}: {error.reason}") from error
            self._offset += len(data)
            if text:
                return text.encode("utf-8", errors="surrogatepass")
        return b""


class LineFilter(_Source):
    """Delimited text without its first `skip_lines` physical lines and without comment lines.

    A comment line starts with `comment` at the start of a physical line (LF, CRLF or CR) outside a quoted field; it
    is removed with its line break. Whether a line start is inside a quoted field is known from the parity of the
    quote characters before it (an `escape_char` before a quote does not count). Candidate lines are found by a
    regular expression and quotes counted by `bytes.count`, so the cost per byte stays in C.
    """

    def __init__(self, inner: IO[bytes], *, skip_lines: int, comment: str | None, quote: str | None,
                 escape: str | None) -> None:
        super().__init__(inner)
        self._skip = skip_lines
        self._comment = comment.encode() if comment else None
        self._starts = re.compile(rb"(?<![^\r\n])" + re.escape(self._comment)) if self._comment else None
        self._quote = quote.encode() if quote else None
        self._escaped = (escape + quote).encode() if escape and quote and escape != quote else None
        self._carry = b""
        self._dropping = False
        self._in_quotes = False
        self._line_start = True
        self._after_cr = False
        self._ended = False

    def _next_block(self) -> bytes:
        while not self._ended:
            data = self._inner.read(settings.TRANSCODE_BLOCK_BYTES)
            self._ended = not data
            data, self._carry = self._carry + data, b""
            if self._after_cr and data.startswith(b"\n"):
                data = data[1:]
            self._after_cr = False
            if self._escaped and not self._ended and data.endswith(self._escaped[:1]):
                data, self._carry = data[:-1], data[-1:]  # an escape cut from the quote it escapes
            out = self._filter(data)
            if out:
                return out
        return b""

    def _line_end(self, data: bytes, start: int) -> int:
        """Index just after the line break (LF, CRLF or CR) ending the line that holds `start`; -1 when the line does
        not end in `data`. A CR at the end of `data` ends its line; an LF opening the next block then is skipped."""
        ends = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i >= 0]
        if not ends:
            return -1
        end = min(ends)
        if data[end:end + 2] == b"\r\n":
            return end + 2
        self._after_cr = end == len(data) - 1 and data[end:] == b"\r"
        return end + 1

    def _filter(self, data: bytes) -> bytes:
        position = 0
        while self._skip and position < len(data):
            end = self._line_end(data, position)
            if end < 0:
                return b""
            self._skip -= 1
            position = end
        if self._skip:
            return b""
        if self._starts is None or self._comment is None:
            return data[position:]
        if self._dropping:
            end = self._line_end(data, position)
            if end < 0:
                return b""
            self._dropping, position = False, end
        if not self._ended:
            # A comment prefix cut by the end of the block is looked at again with the next block.
            last_break = max(data.rfind(b"\n"), data.rfind(b"\r"))
            tail = data[last_break + 1:]
            if len(tail) < len(self._comment) and self._comment.startswith(tail) and last_break + 1 >= position:
                data, self._carry = data[:last_break + 1], tail + self._carry
        parts: list[bytes] = []
        emit = counted = position
        for found in self._starts.finditer(data, position):
            start = found.start()
            if start < counted or (start == 0 and not self._line_start):
                continue
            self._count_quotes(data, counted, start)
            counted = start
            if self._in_quotes:
                continue
            parts.append(data[emit:start])
            end = self._line_end(data, start)
            if end < 0:
                self._dropping = True
                emit = counted = len(data)
                break
            emit = counted = end
        self._count_quotes(data, counted, len(data))
        parts.append(data[emit:])
        if data:
            self._line_start = data[-1:] in (b"\n", b"\r")
        return b"".join(parts)

    def _count_quotes(self, data: bytes, start: int, end: int) -> None:
        if self._quote is None or start >= end:
            return
        quotes = data.count(self._quote, start, end) - (data.count(self._escaped, start, end) if self._escaped else 0)
        if quotes % 2:
            self._in_quotes = not self._in_quotes
