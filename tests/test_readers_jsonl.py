"""The JSON Lines reader: strict per-line parsing, line numbering, value extraction, and the JSONTestSuite corpus."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from retail_bronze_source import reasons, settings
from retail_bronze_source.raw import RawChunk, RawFile
from retail_bronze_source.readers.jsonl import read_jsonl
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.validate import Validator
from schemas.schemas import col

CASES = Path(__file__).parent / "cases" / "jsonl"
CORPUS = Path(__file__).parents[1] / ".." / "shared" / "corpus" / "json" / "JSONTestSuite" / "test_parsing"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
BLANK_N_FILES = {"n_single_space.json", "n_structure_no_data.json", "n_structure_UTF8_BOM_no_data.json"}


def read(path: Path, chunk_size: int = 1000) -> list[RawChunk]:
    return list(read_jsonl(RawFile(fsspec.filesystem("file"), path=str(path), rel_path=path.name), chunk_size))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def rows_of(chunks: list[RawChunk]) -> list[dict[str, str | None]]:
    return [row for chunk in chunks for row in chunk.data.to_pylist()]


def numbers_of(chunks: list[RawChunk]) -> list[int]:
    return [n for chunk in chunks for n in chunk.row_numbers.to_pylist()]


def rejects_of(chunks: list[RawChunk]) -> list[tuple[int, str, str]]:
    return [(r.row_number, r.reason_code, r.raw_record) for chunk in chunks for r in chunk.rejects]


def test_good_and_bad_lines_interleave_with_exact_line_numbers() -> None:
    chunks = read(CASES / "mixed.jsonl")
    assert len(chunks) == 1
    chunk = chunks[0]
    assert chunk.columns_per_record
    assert chunk.data.column_names == ["id", "name", "price", "tags", "meta", "active", "qty", "note"]
    assert chunk.data.schema.types == [pa.string()] * 8
    blank = dict.fromkeys(chunk.data.column_names)
    assert rows_of(chunks) == [
        {**blank, "id": "1", "name": "ann", "price": "19.90", "tags": '["a","b"]', "meta": '{"x":null}'},
        {**blank, "id": "3", "price": "1e2", "active": "true", "qty": "-0"},
        {**blank, "id": "7", "name": 'crlf "quoted"', "price": "99999999999999.99"},
        {**blank, "id": "8", "name": "dup"},
        {**blank, "id": "10", "note": "NaN and Infinity inside a string, trailing ,]"},
    ]
    assert numbers_of(chunks) == [1, 6, 11, 12, 14]
    assert rejects_of(chunks) == [
        (2, reasons.NOT_AN_OBJECT, "[1, 2]"),
        (4, reasons.INVALID_JSON, '{"id": 2, "name": "b\\u00f6b", "price": NaN}'),
        (7, reasons.INVALID_JSON, '{"id": 4,}'),
        (8, reasons.NOT_AN_OBJECT, '"just a string"'),
        (9, reasons.INVALID_JSON, '{"id": 5 "name": "x"}'),
        (10, reasons.INVALID_JSON, '{"id": 6, "name": "caf\\xe9"}'),
        (13, reasons.NOT_AN_OBJECT, "null"),
    ]
    assert chunk.raw_records is not None
    assert chunk.raw_records.to_pylist()[1] == '{"id": 3, "name": null, "active": true, "price": 1e2, "qty": -0}'
    assert chunk.raw_records.to_pylist()[2].endswith("99999999999999.99}")


def test_numbers_are_kept_as_written(tmp_path: Path) -> None:
    numbers = [
        "0",
        "-0",
        "1.0",
        "1.50",
        "100.10",
        "1e5",
        "1E-7",
        "0.0000001",
        "12345678901234567.89",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "1.7976931348623157e308",
        "5e-324",
    ]
    lines = [f'{{"v": {n}, "s": "{n}"}}' for n in numbers]
    chunks = read(write(tmp_path, "numbers.jsonl", "\n".join(lines).encode()))
    assert [row["v"] for row in rows_of(chunks)] == numbers
    assert [row["s"] for row in rows_of(chunks)] == numbers


def test_blank_lines_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf\r\n{"a": 1}\r\n \r\n\r\n{"a": 2}'
    chunks = read(write(tmp_path, "crlf.jsonl", data))
    assert rows_of(chunks) == [{"a": "1"}, {"a": "2"}]
    assert numbers_of(chunks) == [2, 5]
    assert rejects_of(chunks) == []


def test_files_without_records(tmp_path: Path) -> None:
    for name, data in [("empty.jsonl", b""), ("bom.jsonl", b"\xef\xbb\xbf"), ("blank.jsonl", b"\n \n\t\r\n")]:
        assert read(write(tmp_path, name, data)) == []


def test_a_bom_that_is_not_at_the_start_is_invalid(tmp_path: Path) -> None:
    chunks = read(write(tmp_path, "bom2.jsonl", b'{"a": 1}\n\xef\xbb\xbf{"a": 2}\n'))
    assert rows_of(chunks) == [{"a": "1"}]
    assert rejects_of(chunks) == [(2, reasons.INVALID_JSON, '\ufeff{"a": 2}')]


def test_empty_object_is_a_row_without_columns(tmp_path: Path) -> None:
    chunks = read(write(tmp_path, "empty_object.jsonl", b"{}\n{ }\n"))
    assert [(chunk.data.num_rows, chunk.data.num_columns) for chunk in chunks] == [(2, 0)]
    assert numbers_of(chunks) == [1, 2]


def test_whitespace_that_json_does_not_allow_is_not_blank(tmp_path: Path) -> None:
    chunks = read(write(tmp_path, "formfeed.jsonl", b"\x0c\n\xc2\xa0\n"))
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == [(1, reasons.INVALID_JSON), (2, reasons.INVALID_JSON)]


def test_deep_nesting_does_not_recurse(tmp_path: Path) -> None:
    data = b"[" * 100_000 + b"\n" + b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}\n"
    chunks = read(write(tmp_path, "deep.jsonl", data))
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == [(1, reasons.INVALID_JSON)]
    assert rows_of(chunks) == [{"a": "[" * 500 + "]" * 500}]


def test_many_blocks_keep_line_numbers_and_values(tmp_path: Path) -> None:
    lines = []
    for i in range(1, 40_001):
        if i % 97 == 0:
            lines.append('{"id": ' + str(i) + ", bad}")
        elif i % 89 == 0:
            lines.append("")
        elif i % 83 == 0:
            lines.append(json.dumps({"id": i, "blob": "x" * 5000}))
        else:
            lines.append(json.dumps({"id": i, "price": f"{i}.50", "name": f"n{i}"}) + ("\r" if i % 2 else ""))
    path = write(tmp_path, "big.jsonl", "\n".join(lines).encode() + b"\n")
    assert path.stat().st_size > 2 * (1 << 20)
    chunks = read(path, chunk_size=1)
    assert len(chunks) >= 2
    expected_rows = [i for i in range(1, 40_001) if i % 97 and i % 89]
    assert numbers_of(chunks) == expected_rows
    assert [int(str(row["id"])) for row in rows_of(chunks)] == expected_rows
    assert [n for n, _, _ in rejects_of(chunks)] == [i for i in range(1, 40_001) if i % 97 == 0]
    by_id = {row["id"]: row for row in rows_of(chunks)}
    assert by_id["1"]["price"] == "1.50" and by_id["2"]["name"] == "n2"
    assert by_id["83"]["blob"] == "x" * 5000


def test_a_line_longer_than_a_block(tmp_path: Path) -> None:
    big = json.dumps({"id": 2, "blob": "y" * (3 << 20)})
    chunks = read(write(tmp_path, "long.jsonl", ('{"id": 1}\n' + big + '\n{"id": 3}').encode()), chunk_size=1)
    assert numbers_of(chunks) == [1, 2, 3]
    assert [row["id"] for row in rows_of(chunks)] == ["1", "2", "3"]


def single_line_corpus() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*.json") if b"\n" not in p.read_bytes() and b"\r" not in p.read_bytes())


@needs_corpus
@pytest.mark.parametrize("path", single_line_corpus(), ids=lambda p: p.name)
def test_json_test_suite_as_one_line_files(path: Path, tmp_path: Path) -> None:
    chunks = read(path)
    rows, rejects = len(rows_of(chunks)), [code for _, code, _ in rejects_of(chunks)]
    if path.name in BLANK_N_FILES:
        assert (rows, rejects) == (0, [])
    elif path.name.startswith("n_"):
        assert (rows, rejects) == (0, [reasons.INVALID_JSON])
    elif path.name.startswith("y_"):
        is_object = isinstance(json.loads(path.read_bytes()), dict)
        assert (rows, rejects) == ((1, []) if is_object else (0, [reasons.NOT_AN_OBJECT]))
    else:
        assert rows + len(rejects) == 1
        again = read(path)
        assert (rows_of(again), rejects_of(again)) == (rows_of(chunks), rejects_of(chunks))
    if rows:
        assert numbers_of(chunks) == [1]


@needs_corpus
def test_implementation_defined_policy() -> None:
    def outcome(name: str) -> str:
        chunks = read(CORPUS / name)
        return "row" if rows_of(chunks) else rejects_of(chunks)[0][1]

    assert outcome("i_structure_UTF-8_BOM_empty_object.json") == "row"
    assert outcome("i_number_huge_exp.json") == reasons.NOT_AN_OBJECT
    assert outcome("i_string_lone_second_surrogate.json") == reasons.INVALID_JSON
    assert outcome("i_string_iso_latin_1.json") == reasons.INVALID_JSON
    assert outcome("i_structure_500_nested_arrays.json") == reasons.NOT_AN_OBJECT


@needs_corpus
def test_strict_rejections_of_lenient_inputs(tmp_path: Path) -> None:
    lines = [
        (CORPUS / name).read_bytes()
        for name in [
            "n_number_NaN.json",
            "n_number_infinity.json",
            "n_number_minus_infinity.json",
            "n_object_trailing_comma.json",
            "n_array_extra_comma.json",
            "n_number_Inf.json",
        ]
    ]
    lines += [b'{"a": nan}', b'{"a": -inf}', b'{"a": [1 , ] }', b'{"a": 1 ,\t}']
    chunks = read(write(tmp_path, "lenient.jsonl", b"\n".join(lines)))
    assert rows_of(chunks) == []
    assert [(n, code) for n, code, _ in rejects_of(chunks)] == [(i, reasons.INVALID_JSON) for i in range(1, 11)]


@pytest.mark.parametrize("group_columns", [100, 1])
def test_rescued_data_holds_the_keys_each_record_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     group_columns: int) -> None:
    """A key outside the contract that one record lacks is not in that record's `_rescued_data`; an explicit JSON
    null is kept; a record with none of the keys has no `_rescued_data` (also when the object is built from
    several groups of columns)."""
    monkeypatch.setattr(settings, "RESCUE_GROUP_COLUMNS", group_columns)
    path = write(tmp_path, "t.jsonl", b'{"id": 1, "x": "a", "y": 5}\n{"id": 2, "y": 6}\n{"id": 3, "x": null}\n'
                                      b'{"id": 4}\n')
    chunks = read(path)
    assert sorted(chunks[0].absent) == ["x", "y"]
    assert chunks[0].absent["x"].to_pylist() == [False, True, False, True]
    spec = TableSpec(name="t", schema=pa.schema([col("id", pa.int64(), required=True)]), files="t/*",
                     formats=("jsonl",), primary_key=("id",), write_disposition="append", sequence_column=None)
    valid = Validator(spec).validate(chunks[0], "t.jsonl").valid
    rescued = [None if r is None else json.loads(r) for r in valid["_rescued_data"].to_pylist()]
    assert rescued == [{"x": "a", "y": "5"}, {"y": "6"}, {"x": None}, None]
