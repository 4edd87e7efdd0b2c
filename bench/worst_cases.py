"""Inputs for the benchmark's worst cases: files at and over the readers' limits (`retail_bronze_source/limits.py`).

Each case is one file in a registry table's folder, so the package loads it with the table's default limits: a CSV as
wide as `MAX_COLUMNS` and far wider, a JSON Lines line as long as `MAX_JSON_RECORD_BYTES` and one of 200 MB, XLSX
bombs (a sheet inflating to 2 GiB from a few MB, with its declared size or lying about it) and a workbook under
`MAX_UNPACKED_BYTES` that is read whole.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SAMPLE = REPO / "data_raw"

from retail_bronze_source import limits  # noqa: E402


def wide_csv(columns: int, rows: int) -> Callable[[Path], None]:
    """The sample's first orders rows, widened to `columns` with extra columns (kept in `_rescued_data`)."""
    def write(folder: Path) -> None:
        lines = next(iter(sorted((SAMPLE / "orders").glob("*.csv")))).read_text().splitlines()
        header, body = lines[0], [line for line in lines[1:] if line.count(",") == lines[0].count(",")]
        extra = columns - (header.count(",") + 1)
        with (folder / "orders" / "wide.csv").open("w") as out:
            out.write(header + "".join(f",x{i}" for i in range(extra)) + "\n")
            tail = ",v" * extra + "\n"
            for i in range(rows):
                out.write(body[i % len(body)] + tail)
    return write


def long_jsonl_line(length: int, normal_lines: int = 1000) -> Callable[[Path], None]:
    """Sample events, the first of them padded with a `blob` key to a line of `length` bytes."""
    def write(folder: Path) -> None:
        lines = next(iter(sorted((SAMPLE / "events").glob("*.jsonl")))).read_bytes().splitlines()
        first = json.loads(lines[0])
        first["blob"] = ""
        padding = length - len(json.dumps(first, separators=(",", ":")).encode())
        with (folder / "events" / "long.jsonl").open("wb") as out:
            out.write(json.dumps(first, separators=(",", ":")).encode()[:-3])
            chunk = b"x" * (1 << 20)
            left = padding
            while left > 0:
                out.write(chunk[:left])
                left -= len(chunk)
            out.write(b'"}\n')
            for i in range(normal_lines):
                out.write(lines[1 + i % (len(lines) - 1)] + b"\n")
    return write


def xlsx_sheet(unpacked: int, *, dimension: bool = True, lie: bool = False,
               distinct: bool = False) -> Callable[[Path], None]:
    """An exchange-rates workbook whose first sheet's XML inflates to about `unpacked` bytes of rate rows (a block of
    rows repeated, or with `distinct` one rate per day); with `lie`, the sheet's zip entry declares 1,000 bytes."""
    def write(folder: Path) -> None:
        path = folder / "exchange_rates" / "bomb.xlsx"
        template = next(iter(sorted((SAMPLE / "exchange_rates").glob("*.xlsx"))))
        head = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                + (b'<dimension ref="A1:D2"/>' if dimension else b"") + b"<sheetData><row>"
                b'<c t="inlineStr"><is><t>rate_date</t></is></c><c t="inlineStr"><is><t>base_currency</t></is></c>'
                b'<c t="inlineStr"><is><t>quote_currency</t></is></c><c t="inlineStr"><is><t>rate</t></is></c></row>')
        with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
            first = min(i.filename for i in source.infolist() if i.filename.startswith("xl/worksheets/sheet"))
            for info in source.infolist():
                if info.filename != first:
                    target.writestr(info.filename, source.read(info))
                    continue
                with target.open(info.filename, "w", force_zip64=True) as out:
                    out.write(head)
                    for block in _rate_blocks(unpacked, distinct):
                        out.write(block)
                    out.write(b"</sheetData></worksheet>")
        if lie:
            _declare_size(path, first, 1000)
    return write


def _rate_blocks(unpacked: int, distinct: bool) -> Iterator[bytes]:
    """About `unpacked` bytes of rate rows in blocks of 1 MiB."""
    def row(day: int) -> bytes:
        date = (dt.date(1900, 1, 1) + dt.timedelta(days=day)).isoformat().encode()
        return (b'<row><c t="inlineStr"><is><t>' + date + b'</t></is></c><c t="inlineStr"><is><t>EUR</t></is></c>'
                b'<c t="inlineStr"><is><t>USD</t></is></c><c><v>1.0842</v></c></row>')
    per_block = (1 << 20) // len(row(0))
    repeated = b"".join(row(day) for day in range(per_block))
    for index in range(max(unpacked >> 20, 1)):
        yield b"".join(row(index * per_block + day) for day in range(per_block)) if distinct else repeated


def _declare_size(path: Path, member: str, size: int) -> None:
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, name_offset, size_offset in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_offset:at + name_offset + len(name)] == name:
                struct.pack_into("<I", data, at + size_offset, size)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def cases() -> dict[str, tuple[str, str, Callable[[Path], None]]]:
    """Case name -> (registry table, what the file is, its writer)."""
    columns, line, unpacked = limits.MAX_COLUMNS, limits.MAX_JSON_RECORD_BYTES, limits.MAX_UNPACKED_BYTES
    return {
        "csv_at_column_limit": ("orders", f"CSV, {columns:,} columns x 2,000 rows", wide_csv(columns, 2_000)),
        "csv_20k_columns": ("orders", "CSV, 20,000 columns x 1,000 rows", wide_csv(20_000, 1_000)),
        "csv_50k_columns": ("orders", "CSV, 50,000 columns x 100 rows", wide_csv(50_000, 100)),
        "jsonl_line_at_limit": ("events", f"JSONL, a {line:,}-byte line and 1,000 others", long_jsonl_line(line)),
        "jsonl_200mb_line": ("events", "JSONL, a 200 MB line and 1,000 others", long_jsonl_line(200 << 20)),
        "xlsx_bomb": ("exchange_rates", "XLSX, a sheet inflating to 2 GiB, declared", xlsx_sheet(2 << 30)),
        "xlsx_bomb_lying": ("exchange_rates", "XLSX, 2 GiB, no <dimension>, declaring 1 kB",
                            xlsx_sheet(2 << 30, dimension=False, lie=True)),
        "xlsx_under_limit": ("exchange_rates", f"XLSX, a 64 MiB sheet of rates (limit {unpacked >> 20} MiB), read whole",
                             xlsx_sheet(64 << 20, dimension=False, distinct=True)),
    }
