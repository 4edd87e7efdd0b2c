"""The JSON reader (a top-level array streamed element by element, or JSON Lines in a .json file) and the JSON Lines
reader's CR-only line ends, encodings and compression."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import fsspec
import pytest

from retail_bronze_source import reasons
from retail_bronze_source.raw import FileRejected, RawChunk, RawFile
from retail_bronze_source.readers import read

CASES = Path(__file__).parent / "cases"
JSON_SUITE = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "json" / "JSONTestSuite"
needs_corpus = pytest.mark.skipif(not JSON_SUITE.is_dir(), reason="shared corpus not present")


def read_all(path: Path, fmt: str = "json", chunk_size: int = 1000, **options: Any) -> list[RawChunk]:
    return list(read(fmt, RawFile(fsspec.filesystem("file"), path=str(path), rel_path=path.name), chunk_size,
                     options))


def rows_of(chunks: list[RawChunk]) -> list[dict[str, Any]]:
    return [row for chunk in chunks for row in chunk.data.to_pylist()]


def numbers_of(chunks: list[RawChunk]) -> list[int]:
    return [n for chunk in chunks for n in chunk.row_numbers.to_pylist()]


def rejects_of(chunks: list[RawChunk]) -> list[tuple[int, str, str]]:
    return [(r.row_number, r.reason_code, r.raw_record) for chunk in chunks for r in chunk.rejects]


def rejected(path: Path, fmt: str = "json", **options: Any) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        read_all(path, fmt, **options)
    return caught.value


def test_an_array_of_objects_is_read_element_by_element() -> None:
    chunks = read_all(CASES / "json" / "array.json")
    assert numbers_of(chunks) == [1, 2, 5]
    rows = rows_of(chunks)
    assert rows[0] | {"nested": None} == {"id": "1", "name": "ann", "tags": '["a","b"]', "nested": None}
    assert rows[1]["name"] == "bob\n[x]"
    assert json.loads(rows[1]["nested"]) == {"k": [1, {"z": "}"}]}
    assert rows[2]["id"] == "4"
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == [(3, reasons.NOT_AN_OBJECT), (4, reasons.INVALID_JSON)]
    assert rejects_of(chunks)[0][2] == "[1, 2]"
    assert [r for chunk in chunks for r in chunk.raw_records.to_pylist()][1] == (
        '{"id": 2, "name": "bob\\n[x]", "nested": {"k": [1, {"z": "}"}]}}')
    assert all(chunk.columns_per_record for chunk in chunks)


def test_json_lines_in_a_json_file_are_read_as_json_lines() -> None:
    chunks = read_all(CASES / "json" / "lines.json")
    assert rows_of(chunks) == [{"id": "1", "name": "ann"}, {"id": "2", "name": "bob"}]
    assert numbers_of(chunks) == [1, 3]


@pytest.mark.parametrize("text, rows", [(b"", 0), (b"  \n ", 0), (b"[]", 0), (b"\xef\xbb\xbf [ ]\n", 0),
                                         (b'[{"a": "x"}]', 1)], ids=["empty", "blank", "empty-array", "bom", "one"])
def test_small_arrays(tmp_path: Path, text: bytes, rows: int) -> None:
    path = tmp_path / "small.json"
    path.write_bytes(text)
    assert len(rows_of(read_all(path))) == rows


@pytest.mark.parametrize("text, expected", [
    (b'[{"id": 1} {"id": 2}]', "expected ',' or ']' at byte offset 11"),
    (b'[{"id": 1},,{"id": 2}]', "expected a value at byte offset 11"),
    (b'[{"id": 1}, {"id": 2}', "expected ',' or ']' at byte offset 21, the file ends"),
    (b'[{"id": 1}, {"id": 2', "the end of the element"),
    (b'[{"id": 1}] trailing', "expected nothing after the array at byte offset 12"),
], ids=["missing-comma", "empty-element", "not-closed", "element-not-closed", "trailing"])
def test_a_broken_array_structure_rejects_the_file(tmp_path: Path, text: bytes, expected: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(text)
    error = rejected(path)
    assert error.reason_code == reasons.FILE_UNREADABLE
    assert expected in error.reason_detail


def test_a_large_array_streams_with_bounded_memory_and_elements_across_blocks(tmp_path: Path) -> None:
    element = '{"id": %d, "name": "%s", "deep": {"list": [1, 2, {"s": "]}"}]}}'
    text = "[\n" + ",\n".join(element % (i, "x" * (i % 97)) for i in range(100_000)) + "\n]"
    path = tmp_path / "big.json.gz"
    path.write_bytes(gzip.compress(text.encode()))
    tracemalloc.start()
    try:
        count = last = 0
        for chunk in read("json", RawFile(fsspec.filesystem("file"), path=str(path), rel_path=path.name), 5_000, {}):
            count += chunk.data.num_rows
            last = chunk.row_numbers[-1].as_py()
            assert not chunk.rejects
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (count, last) == (100_000, 100_000)
    assert len(text) > 10 << 20
    assert peak < 6 << 20  # Python objects of a block and a chunk's element texts, not the 10 MB file


def test_an_element_over_the_record_limit_rejects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "long.json"
    path.write_bytes(b'[{"id": 1}, {"blob": "' + b"x" * 5000 + b'"}]')
    error = rejected(path, max_record_bytes=4096)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_record_bytes: array element 2 is")


def test_json_lines_with_cr_only_line_ends() -> None:
    chunks = read_all(CASES / "jsonl" / "cr_only.jsonl", "jsonl")
    assert rows_of(chunks) == [{"id": "1", "name": "ann"}, {"id": "2", "name": "bob"}, {"id": "3", "name": None}]
    assert numbers_of(chunks) == [1, 2, 4]


def test_json_lines_with_crlf_are_not_taken_for_cr_only(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"id": 1}\r\n{"id": 2}\r\n')
    assert numbers_of(read_all(path, "jsonl")) == [1, 2]


def test_compressed_and_transcoded_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress('{"id": 1, "city": "Köln"}\n{"id": 2, "city": "Zürich"}\n'.encode("utf-16")))
    chunks = read_all(path, "jsonl", encoding="utf-16")
    assert rows_of(chunks) == [{"id": "1", "city": "Köln"}, {"id": "2", "city": "Zürich"}]


def test_a_json_line_over_the_record_limit_rejects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"id": 1}\n{"blob": "' + b"x" * (3 << 20) + b'"}\n{"id": 3}\n')
    error = rejected(path, "jsonl", max_record_bytes=1 << 20)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_record_bytes: line 2 is at least")


def test_a_json_line_just_over_the_limit_within_one_block(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"id": 1}\n{"blob": "' + b"x" * 2000 + b'"}\n')
    error = rejected(path, "jsonl", max_record_bytes=1024)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_record_bytes: line 2 is at least 2012 bytes long, over the limit of 1024")


def test_too_many_keys_reject_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wide.json"
    path.write_bytes(json.dumps([{f"k{i}": i for i in range(50)}]).encode())
    error = rejected(path, max_columns=40)
    assert error.reason_code == reasons.LIMIT_EXCEEDED
    assert error.reason_detail.startswith("max_columns: the objects of one chunk hold 50 distinct keys")


@needs_corpus
def test_json_test_suite_documents_as_one_element_arrays_keep_the_jsonl_outcome(tmp_path: Path) -> None:
    """Each `y_` object document wrapped in an array is a row, each `n_` document is a reject or a file reject."""
    for source in sorted(JSON_SUITE.glob("y_object*.json")):
        path = tmp_path / "y.json"
        path.write_bytes(b"[" + source.read_bytes() + b"]")
        assert len(rows_of(read_all(path))) == 1, source.name
    for source in sorted(JSON_SUITE.glob("n_*.json"))[:120]:
        path = tmp_path / "n.json"
        path.write_bytes(b"[" + source.read_bytes().replace(b"\n", b" ") + b"]")
        try:
            chunks = read_all(path)
        except FileRejected as error:
            assert error.reason_code in (reasons.FILE_UNREADABLE, reasons.FILE_ENCODING), source.name
            continue
        assert not rows_of(chunks) or source.name.startswith("n_structure"), source.name
