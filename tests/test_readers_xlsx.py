"""XLSX reader: sheet selection, header policy, text rendering of cell values, rejects and corrupt workbooks."""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from pathlib import Path

import fsspec
import openpyxl
import pyarrow as pa
import pytest

from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers.xlsx import read_xlsx
from retail_bronze_source.reasons import FILE_UNREADABLE, TOO_MANY_COLUMNS, UNSUPPORTED_FILE

CORPUS = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "xlsx" / "frictionless"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus absent")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:openpyxl.*")


def raw_file(path: Path) -> RawFile:
    return RawFile(fs=fsspec.filesystem("file"), path=str(path), rel_path=path.name)


def write_workbook(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def rows_of(chunks: list[RawChunk]) -> list[dict[str, str | None]]:
    return [row for chunk in chunks for row in chunk.data.to_pylist()]


def test_values_become_text(tmp_path: Path) -> None:
    path = write_workbook(tmp_path / "rates.xlsx", {"rates": [
        ["int", "float", "whole", "flag", "stamp", "day", "clock", "text", "empty", "error"],
        [12, 1.5, 3.0, True, dt.datetime(2024, 3, 1, 8, 30, 5, 250_000), dt.date(2024, 3, 1), dt.time(23, 59, 1),
         "EUR ", None, "#N/A"],
        [-7, 2.675, 1e20, False, dt.datetime(2024, 3, 1), None, None, "", 5, "#DIV/0!"],
    ]})
    chunks = list(read_xlsx(raw_file(path), 100))
    assert len(chunks) == 1
    assert chunks[0].sheet == "rates"
    assert chunks[0].data.schema == pa.schema([(name, pa.string()) for name in chunks[0].data.column_names])
    assert rows_of(chunks) == [
        {"int": "12", "float": "1.5", "whole": "3", "flag": "true", "stamp": "2024-03-01T08:30:05.250000",
         "day": "2024-03-01", "clock": "23:59:01", "text": "EUR ", "empty": None, "error": "#N/A"},
        {"int": "-7", "float": "2.675", "whole": "1e+20", "flag": "false",
         "stamp": "2024-03-01T00:00:00", "day": None, "clock": None, "text": None, "empty": "5", "error": "#DIV/0!"},
    ]
    assert chunks[0].row_numbers.to_pylist() == [1, 2]


def test_row_numbers_follow_the_sheet_and_skip_empty_rows(tmp_path: Path) -> None:
    path = tmp_path / "gaps.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "data"
    sheet["A1"], sheet["B1"] = "id", "name"
    sheet["A2"], sheet["B2"] = 1, "a"
    sheet["A3"] = None
    sheet["B6"] = "f"
    sheet["A9"], sheet["B9"] = 9, "i"
    workbook.save(path)
    chunks = list(read_xlsx(raw_file(path), 2))
    assert [c.row_numbers.to_pylist() for c in chunks] == [[1, 5], [8]]
    assert rows_of(chunks) == [{"id": "1", "name": "a"}, {"id": None, "name": "f"}, {"id": "9", "name": "i"}]


def test_header_names_made_unique_and_extra_cells_rejected(tmp_path: Path) -> None:
    path = write_workbook(tmp_path / "header.xlsx", {"s": [
        ["id", "name", None, "name", "name_2", None],
        [1, "a", "x", "b", "c"],
        [2, "b", None, None, None, "spill"],
        [None, None, None, None, None, None],
        [3],
    ]})
    chunks = list(read_xlsx(raw_file(path), 100))
    assert chunks[0].data.column_names == ["id", "name", "column_3", "name_3", "name_2"]
    assert rows_of(chunks) == [
        {"id": "1", "name": "a", "column_3": "x", "name_3": "b", "name_2": "c"},
        {"id": "3", "name": None, "column_3": None, "name_3": None, "name_2": None},
    ]
    assert chunks[0].row_numbers.to_pylist() == [1, 4]
    [reject] = chunks[0].rejects
    assert (reject.row_number, reject.reason_code) == (2, TOO_MANY_COLUMNS)
    assert "column F" in reject.reason_detail
    assert json.loads(reject.raw_record) == ["2", "b", None, None, None, "spill"]


def test_chunks_count_rows_and_rejects(tmp_path: Path) -> None:
    rows: list[list[object]] = [["a"]]
    rows += [[i] if i % 3 else [i, "extra"] for i in range(1, 8)]
    path = write_workbook(tmp_path / "many.xlsx", {"s": rows})
    chunks = list(read_xlsx(raw_file(path), 3))
    assert [(c.row_numbers.to_pylist(), [r.row_number for r in c.rejects]) for c in chunks] == [
        ([1, 2], [3]), ([4, 5], [6]), ([7], [])]


def test_sheet_selection(tmp_path: Path) -> None:
    path = write_workbook(tmp_path / "book.xlsx", {"one": [["v"], [1]], "empty": [], "two": [["v"], [2]]})
    every = list(read_xlsx(raw_file(path), 10))
    assert [(c.sheet, rows_of([c])) for c in every] == [("one", [{"v": "1"}]), ("two", [{"v": "2"}])]
    chosen = list(read_xlsx(raw_file(path), 10, sheets=["two", "one"]))
    assert [c.sheet for c in chosen] == ["two", "one"]
    assert [c.sheet for c in read_xlsx(raw_file(path), 10, sheets="one")] == ["one"]
    assert list(read_xlsx(raw_file(path), 10, sheets="empty")) == []
    with pytest.raises(FileRejected) as info:
        list(read_xlsx(raw_file(path), 10, sheets=["one", "three"]))
    assert info.value.reason_code == UNSUPPORTED_FILE
    assert "'three'" in info.value.reason_detail


def test_merged_cells_keep_the_value_top_left(tmp_path: Path) -> None:
    path = tmp_path / "merged.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in (["id", "region", "note"], [1, "north", "x"], [2, None, None]):
        sheet.append(row)
    sheet.merge_cells("B2:C3")
    workbook.save(path)
    assert rows_of(list(read_xlsx(raw_file(path), 10))) == [
        {"id": "1", "region": "north", "note": None}, {"id": "2", "region": None, "note": None}]


@pytest.mark.parametrize("content", [b"", b"id,name\n1,a\n", b"PK\x03\x04" + b"\x00" * 64],
                         ids=["empty", "csv-bytes", "zip-header-only"])
def test_not_a_workbook_is_unreadable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rates.xlsx"
    path.write_bytes(content)
    with pytest.raises(FileRejected) as info:
        list(read_xlsx(raw_file(path), 10))
    assert info.value.reason_code == FILE_UNREADABLE
    assert "rates.xlsx" in info.value.reason_detail


def test_truncated_workbook_is_unreadable(tmp_path: Path) -> None:
    rows: list[list[object]] = [["a"]]
    rows += [[i] for i in range(500)]
    whole = write_workbook(tmp_path / "whole.xlsx", {"s": rows})
    path = tmp_path / "cut.xlsx"
    path.write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(FileRejected) as info:
        list(read_xlsx(raw_file(path), 10))
    assert info.value.reason_code == FILE_UNREADABLE


@needs_corpus
def test_corpus_table_xlsx() -> None:
    chunks = list(read_xlsx(raw_file(CORPUS / "table.xlsx"), 10))
    first = [c for c in chunks if c.sheet == "Лист1"]  # noqa: RUF001  # noqa: RUF001
    assert rows_of(first) == [{"id": "1", "name": "english"}, {"id": "2", "name": "中国人"}]
    assert [c.row_numbers.to_pylist() for c in first] == [[1, 2]]
    second = [c for c in chunks if c.sheet == "Sheet 2"]
    assert rows_of(second) == []
    assert [(r.row_number, r.reason_code, r.raw_record) for c in second for r in c.rejects] == [
        (1, TOO_MANY_COLUMNS, '["1","english"]'), (2, TOO_MANY_COLUMNS, '["2","中国人"]')]


@needs_corpus
def test_corpus_sheets_reads_only_the_configured_sheets() -> None:
    chunks = list(read_xlsx(raw_file(CORPUS / "sheets.xlsx"), 10, sheets=["Sheet2", "Sheet3"]))
    assert [(c.sheet, rows_of([c])) for c in chunks] == [
        ("Sheet2", [{"id": "2", "name": "paris"}]), ("Sheet3", [{"id ": "3", "name": "rome"}])]


@needs_corpus
def test_corpus_merged_cells_header_only() -> None:
    assert list(read_xlsx(raw_file(CORPUS / "merged-cells.xlsx"), 10)) == []


@needs_corpus
@pytest.mark.parametrize("name", ["merged-cells.xls", "table-with-ints-floats-dates.xls"])
def test_corpus_legacy_xls_is_unsupported_saying_what_to_do(name: str) -> None:
    with pytest.raises(FileRejected) as info:
        list(read_xlsx(raw_file(CORPUS / name), 10))
    assert info.value.reason_code == UNSUPPORTED_FILE
    assert "legacy Excel 97-2003 workbook" in info.value.reason_detail
    assert "save it as Excel Workbook (.xlsx) or CSV UTF-8" in info.value.reason_detail


def non_empty_data_rows(path: Path) -> int:
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        count = 0
        for sheet in workbook.worksheets:
            sheet.reset_dimensions()
            rows = sheet.iter_rows(values_only=True)
            next(rows, None)
            count += sum(1 for row in rows if any(v is not None and v != "" for v in row))
        return count
    finally:
        workbook.close()


@needs_corpus
@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.xlsx")) if CORPUS.is_dir() else [], ids=lambda p: p.name)
def test_corpus_conservation(path: Path) -> None:
    chunks = list(read_xlsx(raw_file(path), 7))
    rows = sum(c.data.num_rows for c in chunks)
    rejects = sum(len(c.rejects) for c in chunks)
    assert rows + rejects == non_empty_data_rows(path)
    for chunk in chunks:
        assert chunk.data.num_rows == len(chunk.row_numbers)
        assert len(chunk.row_numbers) + len(chunk.rejects) <= 7


def strict_ooxml(path: Path, rows: list[list[object]]) -> Path:
    """A workbook saved as Strict Open XML (ISO 29500 strict namespaces), built from an openpyxl workbook."""
    plain = write_workbook(path.with_suffix(".plain.xlsx"), {"Sheet1": rows})
    transitional = ("http://schemas.openxmlformats.org/spreadsheetml/2006/main",
                    "http://schemas.openxmlformats.org/officeDocument/2006/relationships")
    strict = ("http://purl.oclc.org/ooxml/spreadsheetml/main", "http://purl.oclc.org/ooxml/officeDocument/relationships")
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith((".xml", ".rels")):
                text = data.decode()
                for old, new in zip(transitional, strict, strict=True):
                    text = text.replace(old, new)
                data = text.encode()
            target.writestr(item, data)
    return path


def test_a_workbook_the_reader_cannot_see_into_is_rejected_not_empty(tmp_path: Path) -> None:
    path = strict_ooxml(tmp_path / "strict.xlsx", [["id", "name"], [1, "a"]])
    with pytest.raises(FileRejected) as raised:
        list(read_xlsx(raw_file(path), 10))
    assert raised.value.reason_code == UNSUPPORTED_FILE
    assert "Strict Open XML" in raised.value.reason_detail
