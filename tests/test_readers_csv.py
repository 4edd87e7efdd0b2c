"""The CSV reader: RFC 4180 parsing, row numbering, parse rejects, file rejects, and the corpus."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pytest

from retail_bronze_source import reasons
from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers.csv import format_csv_records, read_csv, unique_column_names

CASES = Path(__file__).parent / "cases" / "csv"
CORPUS = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "csv"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def raw_file(path: Path) -> RawFile:
    return RawFile(fsspec.filesystem("file"), path=str(path), rel_path=path.name)


def read(path: Path, chunk_size: int = 1000, **options: Any) -> list[RawChunk]:
    return list(read_csv(raw_file(path), chunk_size, **options))


def rows_of(chunks: list[RawChunk]) -> list[dict[str, str]]:
    return [row for chunk in chunks for row in chunk.data.to_pylist()]


def numbers_of(chunks: list[RawChunk]) -> list[int]:
    return [n for chunk in chunks for n in chunk.row_numbers.to_pylist()]


def rejects_of(chunks: list[RawChunk]) -> list[tuple[int, str, str]]:
    return [(r.row_number, r.reason_code, r.raw_record) for chunk in chunks for r in chunk.rejects]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_ragged_records_are_rejected_in_place(tmp_path: Path) -> None:
    chunks = read(CASES / "ragged.csv")
    assert rows_of(chunks) == [
        {"id": "1", "name": "ann", "note": "hello, world"},
        {"id": "3", "name": "cy\nd", "note": 'say "hi"'},
    ]
    assert numbers_of(chunks) == [1, 3]
    assert rejects_of(chunks) == [
        (2, reasons.TOO_FEW_COLUMNS, "2,bob"),
        (4, reasons.TOO_MANY_COLUMNS, "4,dee,x,extra"),
        (5, reasons.MALFORMED_ROW, '5,"bad,x'),
    ]
    assert all(chunk.raw_records is None and not chunk.columns_per_record for chunk in chunks)


def test_every_column_is_a_non_null_string(tmp_path: Path) -> None:
    path = write(tmp_path, "types.csv", b'code,qty,flag,empty,quoted_empty\n007,1.50,true,,""\n')
    (chunk,) = read(path)
    assert chunk.data.schema == pa.schema([(name, pa.string()) for name in chunk.data.column_names])
    assert chunk.data.to_pylist() == [{"code": "007", "qty": "1.50", "flag": "true", "empty": "", "quoted_empty": ""}]
    assert chunk.data.column("empty").null_count == 0


def test_unterminated_quote_at_end_of_file_is_malformed(tmp_path: Path) -> None:
    chunks = read(CASES / "unterminated_last.csv")
    assert rows_of(chunks) == [{"id": "1", "name": "ann"}]
    assert numbers_of(chunks) == [1]
    assert rejects_of(chunks) == [(2, reasons.MALFORMED_ROW, '2,"never closed')]


def test_unterminated_quote_without_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "open.csv", b'id,name\n1,"a""b"\n2,"x""y')
    chunks = read(path)
    assert rows_of(chunks) == [{"id": "1", "name": 'a"b'}]
    assert rejects_of(chunks) == [(2, reasons.MALFORMED_ROW, '2,"x""y')]


def test_unterminated_quote_swallowing_later_lines_is_one_malformed_record(tmp_path: Path) -> None:
    path = write(tmp_path, "swallow.csv", b'id,name,note\n1,a,b\n2,"open,x\n3,c,d\n')
    chunks = read(path)
    assert rows_of(chunks) == [{"id": "1", "name": "a", "note": "b"}]
    assert rejects_of(chunks) == [(2, reasons.MALFORMED_ROW, '2,"open,x\n3,c,d')]


def test_properly_closed_last_fields_are_not_flagged(tmp_path: Path) -> None:
    data = b'id,name\n1,"ends with quote"""\n2,"multi\nline"\n3,plain"quote\n4,"x"\n'
    chunks = read(write(tmp_path, "closed.csv", data))
    assert [row["name"] for row in rows_of(chunks)] == ['ends with quote"', "multi\nline", 'plain"quote', "x"]
    assert rejects_of(chunks) == []


def test_ragged_record_with_odd_quotes_is_malformed(tmp_path: Path) -> None:
    chunks = read(write(tmp_path, "odd.csv", b'a,b\n1,2\n3,"x"y"z,w\n4,5\n'))
    assert rows_of(chunks) == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}]
    assert numbers_of(chunks) == [1, 3]
    assert rejects_of(chunks) == [(2, reasons.MALFORMED_ROW, '3,"x"y"z,w')]


def test_text_after_a_closing_quote_is_kept(tmp_path: Path) -> None:
    chunks = read(CASES / "quote_garbage.csv")
    assert rows_of(chunks)[1] == {"id": "2", "name": "bobx", "note": "y"}
    assert rows_of(chunks)[2] == {"id": "3", "name": "cy", "note": ""}
    assert rejects_of(chunks) == []


def test_header_names_are_made_unique_and_non_empty() -> None:
    chunks = read(CASES / "header_names.csv")
    assert chunks[0].data.column_names == ["sku", "column_2", "qty", "sku__2", "column_5", "sku__2__2"]
    assert rows_of(chunks) == [dict(zip(chunks[0].data.column_names, ["A", "1", "2", "3", "4", "5"], strict=True))]
    assert unique_column_names([" ", "a", "a", "a", "column_1"]) == ["column_1", "a", "a__2", "a__3", "column_1__2"]


def test_a_header_longer_than_the_header_probe_is_read_whole(tmp_path: Path) -> None:
    long_name = "x" * 100_000
    path = write(tmp_path, "long_header.csv", f'id,"{long_name}\nwith a line break"\n1,a\n2,b\n'.encode())
    chunks = read(path, chunk_size=10_000)
    assert chunks[0].data.column_names == ["id", f"{long_name}\nwith a line break"]
    assert [row["id"] for row in rows_of(chunks)] == ["1", "2"]


def test_bom_semicolon_and_crlf(tmp_path: Path) -> None:
    chunks = read(CASES / "bom_semicolon_crlf.csv", delimiter=";")
    assert chunks[0].data.column_names == ["id", "name"]
    assert rows_of(chunks) == [{"id": "1", "name": "a;b"}, {"id": "2", "name": "x\r\ny"}]


def test_crlf_and_lf_give_identical_rows(tmp_path: Path) -> None:
    lf = (CASES / "ragged.csv").read_bytes()
    crlf = write(tmp_path, "ragged_crlf.csv", lf.replace(b"\n", b"\r\n"))
    lf_chunks, crlf_chunks = read(CASES / "ragged.csv"), read(crlf)
    normalize = [{k: v.replace("\r\n", "\n") for k, v in row.items()} for row in rows_of(crlf_chunks)]
    assert normalize == rows_of(lf_chunks)
    assert numbers_of(crlf_chunks) == numbers_of(lf_chunks)
    assert [r[:2] for r in rejects_of(crlf_chunks)] == [r[:2] for r in rejects_of(lf_chunks)]


def test_invalid_utf8_rejects_the_file_with_its_position() -> None:
    with pytest.raises(FileRejected) as caught:
        read(CASES / "bad_utf8_line3.csv")
    assert caught.value.reason_code == reasons.FILE_ENCODING
    assert "byte offset 24 (line 4)" in caught.value.reason_detail


def test_invalid_utf8_split_across_reads_is_found(tmp_path: Path) -> None:
    good = b"id,name\n" + b"1,caf\xc3\xa9\n" * 200_000
    path = write(tmp_path, "late_bad.csv", good + b"2,\xc3\n")
    chunks: list[RawChunk] = []
    with pytest.raises(FileRejected) as caught:
        chunks.extend(read_csv(raw_file(path), 1000))
    assert caught.value.reason_code == reasons.FILE_ENCODING
    assert f"byte offset {len(good) + 2} (line 200002)" in caught.value.reason_detail
    assert sum(chunk.data.num_rows for chunk in chunks) < 200_000


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_multibyte_characters_split_between_reads_are_valid(tmp_path: Path, shift: int) -> None:
    value = "é€𝄞" * 5  # 2-, 3- and 4-byte characters: every read boundary falls inside some of them
    rows = [f"{i},{value}" for i in range(60_000)]
    path = write(tmp_path, "multibyte.csv", ("x" * shift + "id,name\n" + "\n".join(rows) + "\n").encode())
    chunks = read(path, chunk_size=1_000)
    assert len(chunks) > 1
    assert [row[f"{'x' * shift}id"] for row in rows_of(chunks)] == [str(i) for i in range(60_000)]
    assert {row["name"] for row in rows_of(chunks)} == {value}


def test_truncated_utf8_at_end_of_file(tmp_path: Path) -> None:
    with pytest.raises(FileRejected) as caught:
        read(write(tmp_path, "truncated.csv", b"id\n1\n\xe2\x82"))
    assert caught.value.reason_code == reasons.FILE_ENCODING
    assert "byte offset 5 (line 3)" in caught.value.reason_detail


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    assert read(write(tmp_path, "empty.csv", b"")) == []
    for name, data in [("header.csv", b"a,b\n"), ("header_no_newline.csv", b"a,b"), ("header_crlf.csv", b"a,b\r\n")]:
        chunks = read(write(tmp_path, name, data))
        assert [chunk.data.column_names for chunk in chunks] == [["a", "b"]]
        assert rows_of(chunks) == [] and rejects_of(chunks) == []


def test_last_record_without_newline(tmp_path: Path) -> None:
    chunks = read(write(tmp_path, "no_newline.csv", b'a,b\n1,2\n3,"4"'))
    assert rows_of(chunks) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    assert rejects_of(chunks) == []


def test_record_numbers_across_blocks_match_a_reference_parser(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = []
    for i in range(1, 150_001):
        kind = rng.random()
        if kind < 0.05:
            lines.append(f'{i},"multi\nline, {i}",x,extra')
        elif kind < 0.10:
            lines.append(f'{i},"say ""{i}"""')
        elif kind < 0.13:
            lines.append("")
        elif kind < 0.16:
            lines.append(f"{i}")
        elif kind < 0.20:
            lines.append(f'{i},"a\r\nb {"x" * rng.randint(0, 300)}"')
        else:
            lines.append(f"{i},value {i}")
    text = "id,value\n" + "\n".join(lines) + "\n"
    path = write(tmp_path, "big.csv", text.encode())
    assert path.stat().st_size > 3 * (1 << 20)

    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    expected_rows = [(n, r) for n, r in enumerate(records, start=1) if len(r) == 2]
    expected_rejects = [(n, ",".join(r)) for n, r in enumerate(records, start=1) if len(r) != 2]

    chunks = read(path, chunk_size=1, max_record_bytes=1 << 20)
    assert len(chunks) >= 3
    assert numbers_of(chunks) == [n for n, _ in expected_rows]
    assert [[row["id"], row["value"]] for row in rows_of(chunks)] == [r for _, r in expected_rows]
    got_rejects = [(n, code) for n, code, _ in rejects_of(chunks)]
    assert got_rejects == [
        (n, reasons.TOO_MANY_COLUMNS if "extra" in raw else reasons.TOO_FEW_COLUMNS) for n, raw in expected_rejects
    ]
    for chunk in chunks:
        numbers = chunk.row_numbers.to_pylist() + [r.row_number for r in chunk.rejects]
        assert sorted(numbers) == list(range(min(numbers), min(numbers) + len(numbers)))


def test_format_csv_records_round_trips_through_the_reader(tmp_path: Path) -> None:
    table = pa.table(
        {
            "a": ["plain", "with,comma", 'with "quote"', "line\nbreak", "cr\rhere", "", None],
            "b": ["x", "y", "z", "w", "v", "", "u"],
        }
    )
    records = format_csv_records(table)
    assert records.to_pylist() == [
        "plain,x",
        '"with,comma",y',
        '"with ""quote""",z',
        '"line\nbreak",w',
        '"cr\rhere",v',
        ",",
        ",u",
    ]
    assert format_csv_records(table.select(["b"]), ";").to_pylist() == ["x", "y", "z", "w", "v", "", "u"]
    assert format_csv_records(pa.table({"a": ["x;y"]}), ";").to_pylist() == ['"x;y"']
    path = write(tmp_path, "round.csv", ("a,b\n" + "\n".join(records.to_pylist()) + "\n").encode())
    assert rows_of(read(path)) == [
        {"a": a or "", "b": b} for a, b in zip(table["a"].to_pylist(), table["b"].to_pylist(), strict=True)
    ]


@needs_corpus
@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (CORPUS / "csv-spectrum" / "csvs").glob("*.csv")) if CORPUS.is_dir() else []
)
def test_csv_spectrum_matches_its_json_twin(name: str) -> None:
    chunks = read(CORPUS / "csv-spectrum" / "csvs" / f"{name}.csv")
    expected = json.loads((CORPUS / "csv-spectrum" / "json" / f"{name}.json").read_text(encoding="utf-8"))
    assert rows_of(chunks) == expected
    assert numbers_of(chunks) == list(range(1, len(expected) + 1))
    assert rejects_of(chunks) == []
    if name.endswith("_crlf"):
        lf = read(CORPUS / "csv-spectrum" / "csvs" / f"{name.removesuffix('_crlf')}.csv")
        assert [{k: v.replace("\r\n", "\n") for k, v in row.items()} for row in rows_of(chunks)] == rows_of(lf)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "rows", "rejects"),
    [
        ("invalid", 0, [(1, reasons.TOO_FEW_COLUMNS), (2, reasons.TOO_FEW_COLUMNS), (3, reasons.TOO_MANY_COLUMNS)]),
        ("defective-rows", 0, [(1, reasons.TOO_FEW_COLUMNS), (2, reasons.TOO_MANY_COLUMNS)]),
        ("structure-errors", 3, [(4, reasons.TOO_MANY_COLUMNS)]),
    ],
)
def test_frictionless_ragged_rows(name: str, rows: int, rejects: list[tuple[int, str]]) -> None:
    chunks = read(CORPUS / "frictionless" / f"{name}.csv")
    assert sum(chunk.data.num_rows for chunk in chunks) == rows
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == rejects


@needs_corpus
def test_frictionless_structure_errors_values() -> None:
    chunks = read(CORPUS / "frictionless" / "structure-errors.csv")
    assert rows_of(chunks) == [
        {"id": "1101", "name": "John", "age": "30"},
        {"id": "1102", "name": "Julie", "age": "26"},
        {"id": "", "name": "", "age": ""},
    ]
    assert rejects_of(chunks) == [(4, reasons.TOO_MANY_COLUMNS, "1,2,3,4,5,6")]
    invalid = read(CORPUS / "frictionless" / "invalid.csv")
    assert invalid[0].data.column_names == ["id", "name", "column_3", "name__2"]


@needs_corpus
@pytest.mark.parametrize(("name", "offset", "line"), [("latin1", 20, 3), ("table-infer-iso-8859-7", 17, 2)])
def test_frictionless_non_utf8_files_are_encoding_rejects(name: str, offset: int, line: int) -> None:
    with pytest.raises(FileRejected) as caught:
        read(CORPUS / "frictionless" / f"{name}.csv")
    assert caught.value.reason_code == reasons.FILE_ENCODING
    assert f"byte offset {offset} (line {line})" in caught.value.reason_detail


@needs_corpus
def test_frictionless_bom_empty_and_header_only() -> None:
    bom = read(CORPUS / "frictionless" / "bom.csv")
    assert bom[0].data.column_names == ["id", "name"]
    assert rows_of(bom) == [{"id": "1", "name": "english"}, {"id": "2", "name": "中国人"}]
    assert read(CORPUS / "frictionless" / "empty.csv") == []
    header_only = read(CORPUS / "frictionless" / "without-rows.csv")
    assert rows_of(header_only) == [] and rejects_of(header_only) == []


def corpus_csvs() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*.csv"))


@needs_corpus
@pytest.mark.parametrize("path", corpus_csvs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_conservation(path: Path) -> None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        with pytest.raises(FileRejected) as caught:
            read(path)
        assert caught.value.reason_code == reasons.FILE_ENCODING
        return
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    chunks = read(path)
    numbers = numbers_of(chunks) + [n for n, _, _ in rejects_of(chunks)]
    assert sorted(numbers) == list(range(1, len(records) + 1))


def test_a_quote_left_open_for_more_than_a_block_is_a_record_over_the_length_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "open_quote.csv", b'a,b\n1,"open\n' + b"2,x\n" * 1_200_000)
    with pytest.raises(FileRejected) as caught:
        read(path, chunk_size=1)
    assert caught.value.reason_code == reasons.LIMIT_EXCEEDED
    assert caught.value.reason_detail.startswith(f"max_record_bytes: a record is longer than {2 << 20} bytes")
    assert "quote that is never closed" in caught.value.reason_detail


class _CountingFile(io.RawIOBase):
    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = self._file.readinto(buffer)
        self.bytes_read += size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def test_the_reader_reads_a_bounded_number_of_blocks_ahead_and_joins_blocks_into_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = 64 << 10
    path = write(tmp_path, "long.csv", b"id,value\n" + b"".join(b"%d,%s\n" % (i, b"v" * 40) for i in range(200_000)))
    opened: list[_CountingFile] = []

    def counting_open(self: RawFile) -> _CountingFile:
        opened.append(_CountingFile(Path(self.path)))
        return opened[-1]

    monkeypatch.setattr(RawFile, "open", counting_open)
    chunks = read_csv(raw_file(path), 5_000, max_record_bytes=block)
    first = next(chunks)
    # pyarrow reads ahead on a background thread, at most 32 blocks: a fraction of the 9 MB file.
    assert opened[0].bytes_read <= 40 * block
    assert path.stat().st_size > 3 * 40 * block
    chunks_ = [first, *chunks]
    # Blocks of about 1,400 rows each are joined into chunks of at most 5,000 rows.
    assert all(3_500 < c.data.num_rows <= 5_000 for c in chunks_[:-1])
    assert numbers_of(chunks_) == list(range(1, 200_001))
    assert len({r["value"] for r in rows_of(chunks_)}) == 1


def test_a_large_file_without_a_final_line_break_keeps_its_last_row(tmp_path: Path) -> None:
    rows = [f"{i},naïve €{i}" for i in range(120_000)]  # about 2.4 MB: read in several blocks after the first
    path = write(tmp_path, "no_final_newline.csv", ("id,name\n" + "\n".join(rows)).encode())
    chunks = read(path, chunk_size=1_000)
    assert len(chunks) > 1
    got = rows_of(chunks)
    assert len(got) == 120_000 and got[-1] == {"id": "119999", "name": "naïve €119999"}
    assert rejects_of(chunks) == []
