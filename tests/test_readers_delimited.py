"""Delimited text beyond plain CSV: TSV and TXT, quote and escape characters, header row, comments, no header, null
tokens, decimal commas, declared encodings, Excel's empty records and compressed files."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pytest

from retail_bronze_source import reasons
from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers import read

CASES = Path(__file__).parent / "cases"
CORPUS = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "csv" / "frictionless"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def raw_file(path: Path, rel_path: str | None = None) -> RawFile:
    return RawFile(fsspec.filesystem("file"), path=str(path), rel_path=rel_path or path.name)


def read_all(path: Path, fmt: str = "csv", chunk_size: int = 1000, **options: Any) -> list[RawChunk]:
    return list(read(fmt, raw_file(path), chunk_size, options))


def rows_of(chunks: list[RawChunk]) -> list[dict[str, Any]]:
    return [row for chunk in chunks for row in chunk.data.to_pylist()]


def numbers_of(chunks: list[RawChunk]) -> list[int]:
    return [n for chunk in chunks for n in chunk.row_numbers.to_pylist()]


def records_of(chunks: list[RawChunk]) -> list[str]:
    return [r for chunk in chunks for r in (chunk.raw_records.to_pylist() if chunk.raw_records is not None else [])]


def rejects_of(chunks: list[RawChunk]) -> list[tuple[int, str, str]]:
    return [(r.row_number, r.reason_code, r.raw_record) for chunk in chunks for r in chunk.rejects]


def rejected(path: Path, fmt: str = "csv", **options: Any) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        read_all(path, fmt, **options)
    return caught.value


def test_tsv_is_tab_separated_whatever_the_table_declares_and_keeps_record_texts() -> None:
    chunks = read_all(CASES / "tsv" / "stores.tsv", "tsv", delimiter=";")
    assert rows_of(chunks) == [
        {"store_id": "1", "name": "Corner Shop", "city": "Berlin"},
        {"store_id": "2", "name": "Tab\tInside", "city": "Paris, FR"},
        {"store_id": "4", "name": "last", "city": "Rome"},
    ]
    assert numbers_of(chunks) == [1, 2, 4]
    assert rejects_of(chunks) == [(3, reasons.TOO_FEW_COLUMNS, "3\tshort")]
    assert records_of(chunks) == ["1\tCorner Shop\tBerlin", '2\t"Tab\tInside"\tParis, FR', "4\tlast\tRome"]


def test_txt_is_read_with_the_declared_delimiter() -> None:
    chunks = read_all(CASES / "txt" / "pipe_delimited.txt", "txt", delimiter="|")
    assert rows_of(chunks) == [{"id": "1", "name": "ann", "amount": "10.50"},
                               {"id": "2", "name": "bob, jr", "amount": "7"}]
    assert rejects_of(chunks) == [(3, reasons.TOO_FEW_COLUMNS, "3|cy")]
    assert records_of(chunks) == ["1|ann|10.50", "2|bob, jr|7"]


def test_txt_without_a_declared_delimiter_is_refused() -> None:
    with pytest.raises(ValueError, match="declared delimiter"):
        read_all(CASES / "txt" / "pipe_delimited.txt", "txt")


def test_another_quote_character() -> None:
    chunks = read_all(CASES / "csv" / "single_quote.csv", quote_char="'")
    assert rows_of(chunks) == [{"id": "1", "note": "hello, world"}, {"id": "2", "note": "it's"},
                               {"id": "3", "note": '"plain"'}]
    assert records_of(chunks) == ["1,'hello, world'", "2,'it''s'", '3,"plain"']


def test_an_escape_character() -> None:
    chunks = read_all(CASES / "csv" / "backslash_escape.csv", escape_char="\\")
    assert rows_of(chunks) == [{"id": "1", "note": 'say "hi"'}, {"id": "2", "note": "back\\slash"},
                               {"id": "3", "note": "a, b"}]
    assert numbers_of(chunks) == [1, 2, 3]


def test_an_unterminated_quote_at_the_end_is_malformed_with_an_escape_character(tmp_path: Path) -> None:
    path = tmp_path / "open.csv"
    path.write_bytes(b'id,note\n1,"ok"\n2,"say \\"never closed\n')
    chunks = read_all(path, escape_char="\\")
    assert rows_of(chunks) == [{"id": "1", "note": "ok"}]
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == [(2, reasons.MALFORMED_ROW)]


def test_without_quoting_quotes_are_data(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(b'id,size\n1,5" x 7"\n2,"x\n')
    chunks = read_all(path, quote_char=None)
    assert rows_of(chunks) == [{"id": "1", "size": '5" x 7"'}, {"id": "2", "size": '"x'}]
    assert rejects_of(chunks) == []


def test_header_on_a_later_row_skips_the_lines_before_it_unread() -> None:
    chunks = read_all(CASES / "csv" / "header_on_row_3.csv", header_row=3)
    assert rows_of(chunks) == [{"id": "1", "name": "ann"}, {"id": "2", "name": "bob"}]
    assert numbers_of(chunks) == [1, 2]


def test_comment_lines_are_not_records_but_a_comment_prefix_inside_quotes_is_data() -> None:
    chunks = read_all(CASES / "csv" / "comment_lines.csv", comment="#")
    assert rows_of(chunks) == [{"id": "1", "note": "first"},
                               {"id": "2", "note": "multi\n# not a comment: inside quotes"},
                               {"id": "3", "note": "third"}]
    assert numbers_of(chunks) == [1, 2, 3]


def test_comment_lines_across_many_blocks(tmp_path: Path) -> None:
    lines = [b"id,v"] + [b"# c %d" % i if i % 3 == 0 else b"%d,x" % i for i in range(60_000)]
    path = tmp_path / "many.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    chunks = read_all(path, comment="#", max_record_bytes=4096)
    kept = [i for i in range(60_000) if i % 3]
    assert [int(r["id"]) for r in rows_of(chunks)] == kept
    assert numbers_of(chunks) == list(range(1, len(kept) + 1))


def test_no_header_reads_every_record_as_data_with_the_given_names() -> None:
    chunks = read_all(CASES / "csv" / "no_header.csv", header=False, column_names=["id", "name", "qty"])
    assert rows_of(chunks) == [{"id": "1", "name": "ann", "qty": "10"}, {"id": "3", "name": "cy", "qty": "30"}]
    assert numbers_of(chunks) == [1, 3]
    assert rejects_of(chunks) == [(2, reasons.TOO_FEW_COLUMNS, "2,bob")]


def test_null_tokens_become_missing_and_the_record_keeps_its_text() -> None:
    chunks = read_all(CASES / "csv" / "null_tokens.csv", null_values=["N/A", "NULL", "-200"])
    assert rows_of(chunks) == [
        {"id": "1", "name": None, "temp": "20.5"},
        {"id": "2", "name": None, "temp": None},
        {"id": "3", "name": None, "temp": "-200.5"},
        {"id": "4", "name": "", "temp": "21"},
    ]
    assert records_of(chunks) == ["1,N/A,20.5", "2,NULL,-200", "3,N/A,-200.5", "4,,21"]


def test_decimal_commas_in_the_decimal_columns_only() -> None:
    chunks = read_all(CASES / "csv" / "decimal_comma.csv", delimiter=";", decimal=",", decimal_columns=["price"])
    assert rows_of(chunks) == [{"id": "1", "price": "10.50", "note": "a,b"}, {"id": "3", "price": "-0.25", "note": ""},
                               {"id": "4", "price": "7", "note": "y"}]
    assert numbers_of(chunks) == [1, 3, 4]
    ((number, code, raw),) = rejects_of(chunks)
    assert (number, code, raw) == (2, reasons.TYPE_MISMATCH, "2;1.500;x")
    assert "price '1.500'" in chunks[0].rejects[0].reason_detail
    assert records_of(chunks) == ["1;10,50;a,b", "3;-0,25;", "4;7;y"]


def test_latin1_is_transcoded() -> None:
    chunks = read_all(CASES / "csv" / "latin1.csv", encoding="latin-1")
    assert rows_of(chunks) == [{"id": "1", "name": "Müller"}, {"id": "2", "name": "Café crème"}]


def test_utf16_with_bom_is_transcoded() -> None:
    chunks = read_all(CASES / "csv" / "utf16_bom.csv", encoding="utf-16")
    assert rows_of(chunks) == [{"id": "1", "name": "Müller"}, {"id": "2", "name": "日本"}]


def test_latin1_without_declaring_it_stays_an_encoding_reject() -> None:
    assert rejected(CASES / "csv" / "latin1.csv").reason_code == reasons.FILE_ENCODING


def test_bytes_invalid_in_the_declared_encoding_are_an_encoding_reject(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,name\n1,ok\n2,\x81bad\n")
    error = rejected(path, encoding="cp1252")
    assert error.reason_code == reasons.FILE_ENCODING
    assert error.reason_detail.startswith("invalid cp1252 at byte offset 15")


def test_a_declared_encoding_across_many_blocks(tmp_path: Path) -> None:
    text = "id,name\n" + "".join(f"{i},Zoë {i}\n" for i in range(200_000))
    path = tmp_path / "big.csv"
    path.write_bytes(text.encode("utf-16"))
    chunks = read_all(path, chunk_size=50_000, encoding="utf-16")
    assert numbers_of(chunks) == list(range(1, 200_001))
    assert rows_of(chunks)[-1] == {"id": "199999", "name": "Zoë 199999"}


def test_empty_records_stay_visible_by_default() -> None:
    chunks = read_all(CASES / "csv" / "excel_padding.csv", delimiter=";")
    assert numbers_of(chunks) == [1, 2, 3, 4, 6]
    assert rows_of(chunks)[1] == {"id": "", "name": "", "qty": ""}
    assert rejects_of(chunks) == [(5, reasons.TOO_FEW_COLUMNS, ";")]


def test_skip_empty_records_drops_them_keeping_the_numbering() -> None:
    chunks = read_all(CASES / "csv" / "excel_padding.csv", delimiter=";", skip_empty_records=True)
    assert rows_of(chunks) == [{"id": "1", "name": "ann", "qty": "2"}, {"id": "2", "name": "bob", "qty": "3"}]
    assert numbers_of(chunks) == [1, 3]
    assert rejects_of(chunks) == []


@pytest.mark.parametrize("suffix, compress", [
    (".csv.gz", gzip.compress), (".csv.bz2", bz2.compress),
    (".csv.zst", lambda data: _pyarrow_compress(data, "zstd")),
], ids=["gzip", "bz2", "zstd"])
def test_compressed_files_stream_decompressed(tmp_path: Path, suffix: str, compress: Any) -> None:
    text = b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i) for i in range(100_000)) + b"x\n"
    path = tmp_path / f"orders{suffix}"
    path.write_bytes(compress(text))
    chunks = read_all(path, chunk_size=30_000)
    assert numbers_of(chunks) == list(range(1, 100_001))
    assert rows_of(chunks)[99_999] == {"id": "99999", "name": "n99999"}
    assert rejects_of(chunks) == [(100_001, reasons.TOO_FEW_COLUMNS, "x")]


def test_gzip_members_concatenated_read_as_one_file(tmp_path: Path) -> None:
    path = tmp_path / "two.tsv.gz"
    path.write_bytes(gzip.compress(b"a\tb\n1\t2\n") + gzip.compress(b"3\t4\n"))
    assert rows_of(read_all(path, "tsv")) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_compressed_latin1_is_decompressed_then_transcoded(tmp_path: Path) -> None:
    path = tmp_path / "l.csv.gz"
    path.write_bytes(gzip.compress((CASES / "csv" / "latin1.csv").read_bytes()))
    assert rows_of(read_all(path, encoding="latin-1"))[1] == {"id": "2", "name": "Café crème"}


@pytest.mark.parametrize("name, data", [
    ("corrupt.csv.gz", b"\x1f\x8b\x08\x00garbage that is not deflate"),
    ("truncated.csv.gz", gzip.compress(b"id\n" + b"1\n" * 100_000)[:200]),
    ("not_bz2.csv.bz2", b"id\n1\n"),
], ids=["corrupt", "truncated", "not-compressed"])
def test_a_broken_compressed_stream_is_unreadable(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert rejected(path).reason_code == reasons.FILE_UNREADABLE


def test_invalid_utf8_in_a_compressed_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"id,name\n1,a\n2,\xffb\n"))
    error = rejected(path)
    assert error.reason_code == reasons.FILE_ENCODING
    assert "(line 3)" in error.reason_detail


@needs_corpus
def test_frictionless_compressed_comment_and_latin1_files() -> None:
    expected = [{"id": "1", "name": "english"}, {"id": "2", "name": "中国人"}]
    assert rows_of(read_all(CORPUS / "table.csv.gz")) == expected
    assert rows_of(read_all(CORPUS / "table.csv.bz2")) == expected
    assert rows_of(read_all(CORPUS / "skip-rows.csv", comment="#")) == expected
    assert rows_of(read_all(CORPUS / "latin1.csv", encoding="latin-1")) == [
        {"id": "1", "name": "english"}, {"id": "2", "name": "©"}]
    assert rows_of(read_all(CORPUS / "without-headers.csv", header=False, column_names=["id", "name"]))[0] == {
        "id": "1", "name": "english"}
    assert [r["id"] for r in rows_of(read_all(CORPUS / "table-infer-missing-values.csv", null_values=["-"]))] == [
        "1", None, "2", None, "3", None, "4"]


def _pyarrow_compress(data: bytes, codec: str) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return bytes(sink.getvalue())
