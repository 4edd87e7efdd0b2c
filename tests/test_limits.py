"""The readers' stated limits (`limits.py`): wide files, long records and XLSX zip bombs are `LIMIT_EXCEEDED` file
rejects, raised early and overridable per table."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_bronze_source import limits, reasons
from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers import read


def read_all(path: Path, fmt: str, chunk_size: int = 1000, **options: Any) -> list[RawChunk]:
    return list(read(fmt, RawFile(fsspec.filesystem("file"), path=str(path), rel_path=path.name), chunk_size,
                     options))


def rejected(path: Path, fmt: str, **options: Any) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        read_all(path, fmt, **options)
    return caught.value


def wide_csv(path: Path, columns: int, rows: int = 2) -> Path:
    header = ",".join(f"c{i}" for i in range(columns))
    path.write_text("\n".join([header, *(",".join(["1"] * columns) for _ in range(rows))]) + "\n")
    return path


def test_a_csv_wider_than_the_limit_is_rejected_at_its_header(tmp_path: Path) -> None:
    path = wide_csv(tmp_path / "wide.csv", limits.MAX_COLUMNS + 1)
    error = rejected(path, "csv")
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail == (f"max_columns: the header has {limits.MAX_COLUMNS + 1} columns, over the limit of "
                                   f"{limits.MAX_COLUMNS} (reader_options['max_columns'] raises it)")


def test_a_csv_at_the_limit_is_read_and_the_limit_is_overridable(tmp_path: Path) -> None:
    (chunk,) = read_all(wide_csv(tmp_path / "at.csv", limits.MAX_COLUMNS), "csv")
    assert chunk.data.num_columns == limits.MAX_COLUMNS
    assert rejected(tmp_path / "at.csv", "csv", max_columns=100).reason_code == reasons.LIMIT_EXCEEDED
    (chunk,) = read_all(wide_csv(tmp_path / "wide.csv", 5000), "csv", max_columns=5000)
    assert chunk.data.num_columns == 5000


def test_a_20k_column_csv_is_rejected_without_reading_its_rows(tmp_path: Path) -> None:
    path = wide_csv(tmp_path / "w.csv", 20_000, rows=200)
    assert rejected(path, "csv").reason_code == reasons.LIMIT_EXCEEDED


def test_a_wide_parquet_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(50)}), path)
    error = rejected(path, "parquet", max_columns=49)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_columns: wide.parquet has 50 columns")
    assert read_all(path, "parquet", max_columns=50)[0].data.num_columns == 50


def test_a_wide_xlsx_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.append([f"c{i}" for i in range(30)])
    workbook.active.append(list(range(30)))
    workbook.save(path)
    assert rejected(path, "xlsx", max_columns=29).reason_code == reasons.LIMIT_EXCEEDED
    assert read_all(path, "xlsx")[0].data.num_columns == 30


def test_a_csv_record_over_the_length_limit_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_bytes(b"a,b\n1,x\n2," + b"y" * (300 << 10) + b"\n3,z\n")
    error = rejected(path, "csv", max_record_bytes=64 << 10)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith(f"max_record_bytes: a record is longer than {64 << 10} bytes")
    assert [r["a"] for c in read_all(path, "csv") for r in c.data.to_pylist()] == ["1", "2", "3"]


def sheet_xml(rows: int, cells_per_row: int = 1, dimension: bool = True) -> bytes:
    row = b"<row>" + b"<c><v>1</v></c>" * cells_per_row + b"</row>"
    head = (b'<?xml version="1.0" encoding="UTF-8"?><worksheet '
            b'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            + (b'<dimension ref="A1"/>' if dimension else b"") + b"<sheetData>")
    return head + row * rows + b"</sheetData></worksheet>"


def bomb(path: Path, sheet: bytes, lie_about_size: bool = False) -> Path:
    """A minimal workbook with `sheet` as its only sheet, deflated; optionally declaring a tiny uncompressed size."""
    template = io.BytesIO()
    workbook = openpyxl.Workbook()
    workbook.active.append(["a"])
    workbook.save(template)
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = sheet if info.filename == "xl/worksheets/sheet1.xml" else source.read(info)
            target.writestr(info.filename, data)
    if lie_about_size:
        _declare_size(path, "xl/worksheets/sheet1.xml", 1000)
    return path


def _declare_size(path: Path, member: str, size: int) -> None:
    """Overwrite the uncompressed size of `member` in the local header and the central directory."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                struct.pack_into("<I", data, at + offset, size)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("dimension", [True, False], ids=["with-dimension", "without-dimension"])
def test_an_xlsx_bomb_is_rejected_by_its_declared_size(tmp_path: Path, dimension: bool) -> None:
    path = bomb(tmp_path / "bomb.xlsx", sheet_xml(200_000, dimension=dimension))
    assert path.stat().st_size < 100_000
    error = rejected(path, "xlsx", max_unpacked_bytes=1 << 20)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_unpacked_bytes: bomb.xlsx unpacks to ")
    assert "(declared by its zip members)" in error.reason_detail


def test_an_xlsx_member_lying_about_its_size_never_inflates_past_it(tmp_path: Path) -> None:
    path = bomb(tmp_path / "liar.xlsx", sheet_xml(200_000), lie_about_size=True)
    error = rejected(path, "xlsx", max_unpacked_bytes=1 << 20)
    # Python's zipfile stops at the declared size and then fails the member's CRC check.
    assert error.reason_code == reasons.FILE_UNREADABLE
    assert "Bad CRC-32 for file 'xl/worksheets/sheet1.xml'" in error.reason_detail


def test_a_workbook_within_the_limit_loads_with_its_bytes_counted(tmp_path: Path) -> None:
    path = bomb(tmp_path / "big.xlsx", sheet_xml(50_000))
    declared = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    chunks = read_all(path, "xlsx", max_unpacked_bytes=declared)
    assert sum(c.data.num_rows for c in chunks) == 49_999


def test_a_sheet_row_wider_than_excel_is_rejected_before_it_is_built(tmp_path: Path) -> None:
    path = bomb(tmp_path / "row.xlsx", sheet_xml(1, cells_per_row=200_000))
    error = rejected(path, "xlsx")
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert "a sheet row holds more than 16384 cells" in error.reason_detail


def test_the_inflate_counter_rejects_once_the_budget_is_spent(tmp_path: Path) -> None:
    from retail_bronze_source.readers.xlsx import _CountingArchive

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.xml", b"<a>" + b"0" * 100_000 + b"</a>")
    counting = _CountingArchive(zipfile.ZipFile(data), 50_000, "x.xlsx")
    with counting.open("x.xml") as member, pytest.raises(FileRejected) as caught:
        while member.read(16_384):
            pass
    assert caught.value.reason_code == reasons.LIMIT_EXCEEDED
    assert caught.value.reason_detail.startswith("max_unpacked_bytes: x.xlsx inflates to more than 50000 bytes")


def test_a_wide_file_comes_in_chunks_of_bounded_cells(tmp_path: Path) -> None:
    path = wide_csv(tmp_path / "w.csv", 1024, rows=5000)
    chunks = read_all(path, "csv", chunk_size=131_072)
    assert all(c.data.num_rows * c.data.num_columns <= limits.MAX_CHUNK_CELLS for c in chunks)
    assert [n for c in chunks for n in c.row_numbers.to_pylist()] == list(range(1, 5001))
    parquet = tmp_path / "w.parquet"
    pq.write_table(pa.table({f"c{i}": list(range(5000)) for i in range(1024)}), parquet)
    assert max(c.data.num_rows for c in read_all(parquet, "parquet", chunk_size=131_072)) == limits.chunk_rows(
        131_072, 1024) == 2048
