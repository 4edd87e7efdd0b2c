"""XLSX reader: the configured sheets, header from row 1, every value as text."""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import IO, Any
from zipfile import BadZipFile

import orjson
import pyarrow as pa

from ..reasons import FILE_UNREADABLE, TOO_MANY_COLUMNS, UNSUPPORTED_FILE
from .base import FileRejected, ParseReject, RawChunk, RawFile, open_for_read

_DECODE_ERRORS = (BadZipFile, zlib.error, OSError, EOFError, ValueError, LookupError, TypeError, AttributeError,
                  NotImplementedError, SyntaxError)
"""What openpyxl raises on corrupt or foreign bytes (zip, deflate, XML and OOXML structure errors)."""


def read_xlsx(file: RawFile, chunk_size: int, *, sheets: str | Sequence[str] = "*") -> Iterator[RawChunk]:
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
    - A named sheet that does not exist or is a chart sheet rejects the file (`UNSUPPORTED_FILE`), and so does a
      workbook in which openpyxl finds no worksheet at all (Strict Open XML workbooks); bytes that are not
      a readable XLSX workbook (legacy .xls included) reject it as `FILE_UNREADABLE`, possibly after earlier chunks.

    The per-cell conversion loop runs in Python because openpyxl hands cells over one by one.
    """
    with open_for_read(file, chunk_size) as handle:
        workbook = _load_workbook(handle, file)
        try:
            for worksheet in _select_sheets(workbook, sheets, file):
                yield from _read_sheet(worksheet, chunk_size, file)
        finally:
            workbook.close()


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


def _read_sheet(worksheet: Any, chunk_size: int, file: RawFile) -> Iterator[RawChunk]:
    rows = _sheet_rows(worksheet, file)
    header_cells = next(rows, None)
    if header_cells is None:
        return
    names = _column_names(header_cells)
    width = len(names)
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
        if len(numbers) + len(rejects) >= chunk_size:
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
