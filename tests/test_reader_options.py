"""Reader options are checked when a `TableSpec` is declared, file name endings map to formats, and each reader gets
only the options of its format."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from retail_bronze_source import TableSpec
from retail_bronze_source.readers.formats import EXTENSION_FORMATS, file_suffix
from retail_bronze_source.readers.options import OPTIONS, options_for
from schemas.schemas import col

SCHEMA = pa.schema([col("id", pa.int64(), required=True), col("price", pa.decimal128(10, 2)),
                    col("ratio", pa.float64()), col("name", pa.string())])


def spec(formats: tuple[str, ...] = ("csv",), **options: Any) -> TableSpec:
    return TableSpec(name="t", schema=SCHEMA, files="t/*", formats=formats, primary_key=("id",),  # type: ignore[arg-type]
                     write_disposition="append", reader_options=options)


@pytest.mark.parametrize("formats, options, message", [
    (("csv",), {"delimeter": ";"}, "reader option 'delimeter' is unknown"),
    (("csv",), {"sheets": ["a"]}, "'sheets' applies to xlsx, none of the table's formats"),
    (("csv",), {"delimiter": ";;"}, "'delimiter' must be one character"),
    (("csv",), {"quote_char": ""}, "'quote_char' must be one character"),
    (("csv",), {"header": "no"}, "'header' must be True or False"),
    (("csv",), {"header_row": 0}, "'header_row' must be an integer >= 1"),
    (("csv",), {"null_values": "N/A"}, "'null_values' must be a list of strings"),
    (("csv",), {"decimal": ";"}, "'decimal' must be '.' or ','"),
    (("csv",), {"encoding": "latin-99"}, "'latin-99' is not a codec Python knows"),
    (("csv",), {"encoding": "rot13"}, "'rot13' is not a text encoding"),
    (("csv",), {"comment": ""}, "'comment' must be a non-empty prefix"),
    (("csv",), {"max_columns": 0}, "'max_columns' must be an integer >= 1"),
    (("csv",), {"max_record_bytes": 10}, "'max_record_bytes' must be an integer >= 1024"),
    (("csv",), {"column_names": ["a"]}, "'column_names' is for files without a header"),
    (("csv",), {"header": False, "column_names": ["a", "a"]}, "'column_names' must not repeat a name"),
    (("csv",), {"header": False, "header_row": 2}, "'header_row' needs a header"),
    (("csv",), {"quote_char": ";", "delimiter": ";"}, "'quote_char' ';' is also the delimiter"),
    (("csv",), {"escape_char": '"'}, "'escape_char' '\"' is also the delimiter or the quote character"),
    (("csv",), {"decimal_columns": ["price"]}, "'decimal_columns' needs decimal=','"),
    (("txt",), {}, "'delimiter' is required for txt files"),
    (("xlsx",), {"max_unpacked_bytes": -1}, "'max_unpacked_bytes' must be an integer >= 1"),
], ids=lambda v: str(v)[:30])
def test_bad_options_fail_when_the_table_is_declared(formats: tuple[str, ...], options: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValueError, match="table 't': reader option") as caught:
        spec(formats, **options)
    assert message in str(caught.value)


def test_contract_dependent_defaults_are_filled_in() -> None:
    assert spec(header=False).reader_options["column_names"] == ("id", "price", "ratio", "name")
    assert spec(delimiter=";", decimal=",").reader_options["decimal_columns"] == ("price", "ratio")
    assert spec(delimiter=";").reader_options == {"delimiter": ";"}


def test_each_reader_gets_only_the_options_of_its_format() -> None:
    declared = spec(("csv", "tsv", "xlsx", "parquet"), delimiter=";", sheets=["s"], max_columns=10).reader_options
    assert options_for("csv", declared) == {"delimiter": ";", "max_columns": 10}
    assert options_for("tsv", declared) == {"max_columns": 10}
    assert options_for("xlsx", declared) == {"sheets": ["s"], "max_columns": 10}
    assert options_for("parquet", declared) == {"max_columns": 10}
    assert options_for("delta", {"starting_version": 3}) == {"starting_version": 3}


@pytest.mark.parametrize("name, suffix, fmt", [
    ("a/orders.csv", ".csv", "csv"), ("a/ORDERS.CSV.GZ", ".csv.gz", "csv"), ("x.v2.tsv.zst", ".tsv.zst", "tsv"),
    ("x.jsonl.bz2", ".jsonl.bz2", "jsonl"), ("x.json", ".json", "json"), ("x.txt", ".txt", "txt"),
    ("export.xls", ".xls", "xlsx"), ("x.parquet.gz", ".parquet.gz", None), ("x.tar.gz", ".tar.gz", None),
    ("README", "", None),
])
def test_file_name_endings_and_compressions(name: str, suffix: str, fmt: str | None) -> None:
    assert file_suffix(name) == suffix
    assert EXTENSION_FORMATS.get(suffix) == fmt


def test_every_option_is_documented_with_formats_default_and_meaning() -> None:
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)
    assert all(o.formats and o.default and o.meaning for o in OPTIONS)
