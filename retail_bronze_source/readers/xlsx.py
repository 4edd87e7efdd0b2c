"""XLSX reader: the configured sheets, header from row 1, every value as text."""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import IO, Any
from zipfile import BadZipFile, ZipFile

import orjson
import pyarrow as pa

from .. import limits
from ..raw import FileRejected, ParseReject, RawChunk, RawFile, open_for_read
from ..reasons import FILE_UNREADABLE, LIMIT_EXCEEDED, TOO_MANY_COLUMNS, UNSUPPORTED_FILE

_DECODE_ERRORS = (BadZipFile, zlib.error, OSError, EOFError, ValueError, LookupError, TypeError, AttributeError,
                  NotImplementedError, SyntaxError)
"""What openpyxl raises on corrupt or foreign bytes (zip, deflate, XML and OOXML structure errors)."""
_OLE2_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
"""The first bytes of an OLE2 compound file: a legacy Excel 97-2003 workbook (BIFF8)."""
EXCEL_MAX_COLUMNS = 16_384
"""Columns of an Excel row (A to XFD): a sheet row holding more cells is not one Excel writes; openpyxl would build it
whole in memory before handing it over."""
_CELL_OR_ROW_END = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?c[\s/>]|</(?:[A-Za-z_][\w.-]*:)?row>")


def read_xlsx(file: RawFile, chunk_size: int, *, sheets: str | Sequence[str] = "*",
              max_columns: int = limits.MAX_COLUMNS,
              max_unpacked_bytes: int = limits.MAX_UNPACKED_BYTES) -> Iterator[RawChunk]:
    """Stream the sheets named by `sheets` ("*": every worksheet in workbook order) in chunks of at most `chunk_size`
    records, each chunk from one sheet (`RawChunk.sheet`).

    Policies:
    - Row 1 of a sheet is its header; data row n is sheet row n + 1 and keeps that number even across empty rows.
      A blank header cell gets the name `column_<position>`; a repeated name gets `_2`, `_3`, ... (the first
      occurrence keeps the name; suffixes skip names already in the header). Header text is otherwise kept as is.
    - Columns end at the last non-blank header cell; a row with a non-empty cell beyond it is a `TOO_MANY_COLUMNS`
      reject whose `raw_record` is the row's values as a JSON list.
    - A row whose cells are all empty (no value or "") is not a record and is skipped; an empty sheet gives no rows.
    - Values become text: int "12", float its shortest round-trip repr with integral floats below 1e16 as integers
      ("1.5", "3"), bool "true"/"false", datetime "YYYY-MM-DDTHH:MM:SS[.ffffff]" (naive, millisecond precision as
      Excel stores it), date "YYYY-MM-DD" (a midnight date-time whose number format shows no time of day),
      time "HH:MM:SS[.ffffff]", durations "[-]H:MM:SS[.ffffff]" in total hours, error cells their text ("#N/A").
      Formulas give the value cached in the file (none when the writer stored no result).
    - Merged cells: only the top-left cell holds the value, the other cells of the range are empty.
    - The sheet is read to its real end, ignoring a declared dimension that may be stale; rows that openpyxl drops
      because the file repeats or reorders row indices are not seen.
    - A named sheet that does not exist or is a chart sheet rejects the file (`UNSUPPORTED_FILE`), and so do a
      workbook in which openpyxl finds no worksheet at all (Strict Open XML workbooks) and a legacy Excel 97-2003
      workbook (BIFF in an OLE2 file, whatever its name), with what to do about it. Other bytes
      that are not a readable XLSX workbook reject it as `FILE_UNREADABLE`, possibly after earlier chunks.
    - Limits (`LIMIT_EXCEEDED`): the zip members' declared sizes may add up to `max_unpacked_bytes`, and the bytes
      inflated for the sheets are counted as they are read (a member cannot inflate past its declared size: Python's
      zipfile stops there and fails its CRC check); a header wider than `max_columns`; a sheet row holding more than
      16,384 cells (Excel's own width), found in the XML before openpyxl builds the row.

    The per-cell conversion loop runs in Python because openpyxl hands cells over one by one.
    """
    with open_for_read(file, chunk_size) as handle:
        if handle.read(len(_OLE2_MAGIC)) == _OLE2_MAGIC:
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} is a legacy Excel 97-2003 workbook (BIFF in an "
                                                 f"OLE2 file), which is not read: open it in Excel or LibreOffice, "
                                                 f"save it as Excel Workbook (.xlsx) or CSV UTF-8, deliver that file")
        handle.seek(0)
        _check_declared_size(handle, file, max_unpacked_bytes)
        handle.seek(0)
        workbook = _load_workbook(handle, file)
        workbook._archive = _CountingArchive(workbook._archive, max_unpacked_bytes, file.rel_path)
        try:
            for worksheet in _select_sheets(workbook, sheets, file):
                yield from _read_sheet(worksheet, chunk_size, file, max_columns)
        finally:
            workbook.close()


def _check_declared_size(handle: IO[bytes], file: RawFile, max_unpacked_bytes: int) -> None:
    """Reject the workbook when its zip members declare more than `max_unpacked_bytes` in all."""
    try:
        with ZipFile(handle) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (*_DECODE_ERRORS,) as exc:
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path} is not a readable XLSX workbook: "
                                            f"{type(exc).__name__}: {exc}") from exc
    if declared > max_unpacked_bytes:
        raise FileRejected(LIMIT_EXCEEDED, f"max_unpacked_bytes: {file.rel_path} unpacks to {declared} bytes "
                                           f"(declared by its zip members), over the limit of {max_unpacked_bytes} "
                                           f"(reader_options['max_unpacked_bytes'] raises it)")


class _CountingArchive:
    """The workbook's zip archive, its members opened as `_CountedMember` streams sharing one byte budget."""

    def __init__(self, archive: ZipFile, budget: int, rel_path: str) -> None:
        self._archive = archive
        self.left = budget
        self.budget = budget
        self.rel_path = rel_path

    def open(self, name: str, *args: Any, **kwargs: Any) -> _CountedMember:
        return _CountedMember(self._archive.open(name, *args, **kwargs), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._archive, name)


class _CountedMember:
    """A zip member read by openpyxl: inflated bytes counted against the archive's budget, and the cells of the sheet
    row being read counted, so neither a bomb nor one endless row is built in memory."""

    def __init__(self, member: IO[bytes], archive: _CountingArchive) -> None:
        self._member = member
        self._archive = archive
        self._cells = 0
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._member.read(size)
        archive = self._archive
        archive.left -= len(data)
        if archive.left < 0:
            raise FileRejected(LIMIT_EXCEEDED, f"max_unpacked_bytes: {archive.rel_path} inflates to more than "
                                               f"{archive.budget} bytes (reader_options['max_unpacked_bytes'] raises "
                                               f"the limit)")
        text = self._tail + data
        for found in _CELL_OR_ROW_END.finditer(text):
            if found.group().startswith(b"</"):
                self._cells = 0
            else:
                self._cells += 1
        if self._cells > EXCEL_MAX_COLUMNS:
            raise FileRejected(LIMIT_EXCEEDED, f"{archive.rel_path}: a sheet row holds more than {EXCEL_MAX_COLUMNS} "
                                               f"cells, the width of an Excel sheet")
        cut = text.rfind(b"<")
        # A tag the read cut before it could be recognized is looked at again with the next read.
        partial = cut >= 0 and len(text) - cut < 64 and _CELL_OR_ROW_END.match(text, cut) is None
        self._tail = text[cut:] if partial else b""
        return data

    def close(self) -> None:
        self._member.close()

    def __enter__(self) -> _CountedMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._member, name)


def _load_workbook(handle: IO[bytes], file: RawFile) -> Any:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        return load_workbook(handle, read_only=True, data_only=True, keep_links=False)
    except (*_DECODE_ERRORS, InvalidFileException) as exc:
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path} is not a readable XLSX workbook: "
                                            f"{type(exc).__name__}: {exc}") from exc


def _select_sheets(workbook: Any, sheets: str | Sequence[str], file: RawFile) -> list[Any]:
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

    if sheets == "*":
        if not workbook.worksheets:
            # openpyxl lists no sheet of a Strict Open XML workbook: a file it cannot see into is no empty file.
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} has no worksheet this reader can read (a workbook "
                                                 "saved as Strict Open XML, or chart sheets only); save it as an "
                                                 "Excel Workbook (.xlsx)")
        return list(workbook.worksheets)
    names = [sheets] if isinstance(sheets, str) else list(dict.fromkeys(sheets))
    selected = []
    for name in names:
        if name not in workbook.sheetnames:
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} has no sheet {name!r}; its sheets are "
                                                 f"{workbook.sheetnames}")
        sheet = workbook[name]
        if not isinstance(sheet, ReadOnlyWorksheet):
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path}: sheet {name!r} is a chart sheet, not a worksheet")
        selected.append(sheet)
    return selected


def _read_sheet(worksheet: Any, chunk_size: int, file: RawFile, max_columns: int) -> Iterator[RawChunk]:
    rows = _sheet_rows(worksheet, file)
    header_cells = next(rows, None)
    if header_cells is None:
        return
    names = _column_names(header_cells)
    width = len(names)
    if width > max_columns:
        raise FileRejected(LIMIT_EXCEEDED, f"max_columns: sheet {worksheet.title!r} of {file.rel_path} has {width} "
                                           f"header columns, over the limit of {max_columns} "
                                           f"(reader_options['max_columns'] raises it)")
    rows_per_chunk = limits.chunk_rows(chunk_size, width)
    columns: list[list[str | None]] = [[] for _ in names]
    numbers: list[int] = []
    rejects: list[ParseReject] = []
    for data_row, cells in enumerate(rows, start=1):
        filled = [i for i, value in enumerate(cells) if not _is_empty(value)]
        if not filled:
            continue
        if filled[-1] >= width:
            rejects.append(_too_many_columns(data_row, cells[: filled[-1] + 1], width))
        else:
            for i, column in enumerate(columns):
                column.append(_text(cells[i]) if i < len(cells) else None)
            numbers.append(data_row)
        if len(numbers) + len(rejects) >= rows_per_chunk:
            yield _chunk(names, columns, numbers, rejects, worksheet.title)
            columns, numbers, rejects = [[] for _ in names], [], []
    if numbers or rejects:
        yield _chunk(names, columns, numbers, rejects, worksheet.title)


def _sheet_rows(worksheet: Any, file: RawFile) -> Iterator[tuple[Any, ...]]:
    worksheet.reset_dimensions()
    rows = worksheet.iter_rows()
    while True:
        try:
            cells = next(rows)
        except StopIteration:
            return
        except _DECODE_ERRORS as exc:
            raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: sheet {worksheet.title!r} cannot be decoded: "
                                                f"{type(exc).__name__}: {exc}") from exc
        yield tuple(_cell_value(cell) for cell in cells)


def _cell_value(cell: Any) -> Any:
    value = cell.value
    if isinstance(value, dt.datetime) and value.time() == dt.time(0) and not _shows_time(cell.number_format):
        return value.date()
    return value


def _shows_time(number_format: str) -> bool:
    unquoted = re.sub(r'"[^"]*"|\[[^\]]*\]|\\.', "", number_format).lower()
    return "h" in unquoted or "s" in unquoted or "am/pm" in unquoted


def _column_names(header_cells: tuple[Any, ...]) -> list[str]:
    texts = [_text(value) for value in header_cells]
    labels = [text if text is not None and text.strip() else None for text in texts]
    width = max((i + 1 for i, label in enumerate(labels) if label is not None), default=0)
    taken = {label for label in labels[:width] if label is not None}
    names: list[str] = []
    for position, label in enumerate(labels[:width], start=1):
        base = label if label is not None else f"column_{position}"
        name, suffix = base, 2
        while name in names or (name != label and name in taken):
            name, suffix = f"{base}_{suffix}", suffix + 1
        names.append(name)
    return names


def _too_many_columns(data_row: int, cells: Sequence[Any], width: int) -> ParseReject:
    from openpyxl.utils import get_column_letter

    beyond = next(i for i in range(width, len(cells)) if not _is_empty(cells[i]))
    detail = (f"cell in column {get_column_letter(beyond + 1)} has a value but no header "
              f"(the header names {width} column{'' if width == 1 else 's'})")
    raw = orjson.dumps([_text(value) for value in cells]).decode()
    return ParseReject(row_number=data_row, reason_code=TOO_MANY_COLUMNS, reason_detail=detail, raw_record=raw)


def _chunk(names: list[str], columns: list[list[str | None]], numbers: list[int], rejects: list[ParseReject],
           sheet: str) -> RawChunk:
    data = pa.table([pa.array(column, pa.string()) for column in columns], names=names)
    return RawChunk(data=data, row_numbers=pa.array(numbers, pa.int64()), rejects=rejects, sheet=sheet)


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    return str(value)


def _duration_text(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.days * 86_400 + value.seconds, 3_600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{hours}:{minutes:02d}:{seconds:02d}{fraction}"
