"""What readers hand over to validation, and the raw file they read: the file handle, the chunk a reader yields, a
record that could not be parsed, and file-level rejection. Validation knows these types and no reader."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
from fsspec import AbstractFileSystem

from . import reasons
from .helpers import records_as_json


@dataclass(frozen=True)
class RawFile:
    """One raw input: a file, or a table directory for table formats such as Delta."""

    fs: AbstractFileSystem
    path: str
    """Path as the filesystem `fs` spells it."""
    rel_path: str
    """Path relative to the raw root, with forward slashes; the stable name used in audit columns and the ledger."""
    size: int = 0
    mtime: float | None = None
    signature: str | None = None
    """What the file system says about the file that changes whenever its content can have changed: size, mtime,
    ctime and inode on local disks (a program can set mtime back, never ctime), size, ETag and modification time on
    object stores. None where there is no such thing: the file is then always hashed."""
    refused: tuple[str, str] | None = None
    """Set by discovery for a file that is a file-level reject before anything of it is read (reason code, detail):
    a link leading out of the raw root, a FIFO, socket or device, a name that is not UTF-8. It is never opened."""
    confined: bool = True
    """Reads stay inside the raw root: the Delta reader refuses data files outside the table directory. False only
    for tables declared with `TableSpec(allow_outside_raw_root=True)`."""
    local_root: str | None = None
    """The resolved raw root of a file on the local disk (None on object stores): `open` checks what it opened."""
    storage_options: Mapping[str, str] | None = None
    """delta-rs options (credentials, retries) of the raw root's object store, for table formats read by delta-rs."""

    def open(self) -> IO[bytes]:
        """Open the file for binary reading; a file refused by discovery raises its `FileRejected`.

        A local file is checked again once open, since it may have been replaced after discovery: what was opened
        must be a regular file (a FIFO is opened without blocking, then refused) and, for a confined table, lie
        inside the raw root wherever links lead (the opened descriptor's path is resolved, not the name).
        """
        self.check_not_refused()
        if self.local_root is None:
            return self.fs.open(self.path, "rb")  # type: ignore[no-any-return]
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileRejected(reasons.UNSUPPORTED_FILE, f"{self.rel_path} is no longer a regular file; it is not "
                                                             "read")
            if self.confined and not _inside(_opened_path(fd, self.path), self.local_root):
                raise FileRejected(reasons.OUTSIDE_RAW_ROOT, f"{self.rel_path} leads outside the raw root since it "
                                                             "was found; it is not read")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def check_not_refused(self) -> None:
        """Raise the file's `FileRejected` if discovery refused it."""
        if self.refused is not None:
            raise FileRejected(*self.refused)


def _opened_path(fd: int, path: str) -> str:
    """The resolved path of the file open as `fd` (Linux: its `/proc/self/fd` link; elsewhere `path` resolved)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class ParseReject:
    """A record the reader found but could not turn into a row."""

    row_number: int
    """1-based data row (record) number in the file, or in the sheet for XLSX."""
    reason_code: str
    reason_detail: str
    raw_record: str
    """The record as it appears in the file (text formats) or its values as JSON (binary formats)."""


@dataclass
class RawChunk:
    """A bounded slice of one file, in file order.

    `data` holds the parsed records with the file's own column names (text formats give strings, binary formats their
    stored types); `row_numbers` gives each of them its 1-based data row number. `rejects` lists the records of this
    slice that could not be parsed. Every record of the slice is in exactly one of the two.
    """

    data: pa.Table
    row_numbers: pa.Array
    rejects: list[ParseReject] = field(default_factory=list)
    sheet: str | None = None
    raw_records: pa.Array | None = None
    """The original text of each row, when the reader keeps it."""
    render: Callable[[pa.Table], pa.Array] | None = None
    """Turns rows of `data` back into their record text when `raw_records` is not kept (a CSV reader re-serializes
    them in the file's dialect); without either, a record is the JSON object of its values."""
    columns_per_record: bool = False
    """Records carry their own keys: a column absent from the chunk means the value is missing, not that the file lacks
    the column."""
    absent: Mapping[str, pa.Array] = field(default_factory=dict)
    """For records that carry their own keys: per column, which rows' records lack the key (a null value there is
    no value at all, not a null one). Columns every record has are not listed."""

    def records_at(self, rows: pa.Array) -> pa.Array:
        """The original record of each of the rows at positions `rows` of `data` (for reject records)."""
        if self.raw_records is not None:
            return self.raw_records.take(rows)
        if self.data.num_columns == 0:  # Arrow's take of a table without columns keeps no rows
            return pa.repeat(pa.scalar("" if self.render is not None else "{}"), len(rows))
        originals = self.data.take(rows)
        return self.render(originals) if self.render is not None else records_as_json(originals)


def open_for_read(file: RawFile, chunk_size: int) -> IO[bytes]:
    """Check `chunk_size` and open `file` for a reader; a file that cannot be opened is `FILE_UNREADABLE`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    try:
        return file.open()
    except OSError as exc:
        raise FileRejected(reasons.FILE_UNREADABLE, f"cannot open {file.rel_path}: {exc}") from exc


class FileRejected(Exception):
    """The whole file is rejected with a file-level reason code; none of its rows load."""

    def __init__(self, reason_code: str, reason_detail: str) -> None:
        super().__init__(f"{reason_code}: {reason_detail}")
        self.reason_code = reason_code
        self.reason_detail = reason_detail


def plain_types(data: pa.Table | pa.RecordBatch) -> Any:
    """`data` with its string and binary views (at any depth) as the plain types they stand for: what readers hand on
    (`RawChunk.data`), since many Arrow kernels (take, regular expressions) have none for views. Returned as given
    when it holds none. List views are kept: pyarrow 26's cast of a list view to a list writes its offsets one entry
    short (an invalid array)."""
    schema = pa.schema([field.with_type(_plain_type(field.type)) for field in data.schema], metadata=data.schema.metadata)
    return data if schema == data.schema else data.cast(schema)


def _plain_type(type_: pa.DataType) -> pa.DataType:
    if type_ == pa.string_view():
        return pa.string()
    if type_ == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(type_):
        return pa.list_(type_.value_field.with_type(_plain_type(type_.value_type)))
    if pa.types.is_large_list(type_):
        return pa.large_list(type_.value_field.with_type(_plain_type(type_.value_type)))
    if pa.types.is_map(type_):
        return pa.map_(type_.key_field.with_type(_plain_type(type_.key_type)),
                       type_.item_field.with_type(_plain_type(type_.item_type)), type_.keys_sorted)
    if pa.types.is_struct(type_):
        return pa.struct([field.with_type(_plain_type(field.type)) for field in type_])
    return type_
