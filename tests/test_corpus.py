"""The shared corpus of hostile third-party files through a real run: nothing stops it, nothing is lost.

Every file of `../shared/corpus/` is placed in a raw root under a table that accepts its format (by its name ending;
files of other formats go to the CSV table, where they are `UNSUPPORTED_FILE` rejects), each Delta table directory is
the input of a Delta table of its own. The tables have permissive contracts (two nullable text columns; everything
else is kept in `_rescued_data`). One run loads them into real DuckDB, Parquet and Delta sinks.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import CORPUS, Sandbox, changelog_table, delta_table, make_sandbox, query

from retail_bronze_source.readers.formats import FileFormat
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.run import RunResult, run_bronze
from schemas.schemas import col

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus absent"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

PERMISSIVE = pa.schema([col("id", pa.string()), col("name", pa.string())])
FOLDERS: dict[str, tuple[str, FileFormat]] = {
    ".csv": ("corpus_csv", "csv"), ".json": ("corpus_jsonl", "jsonl"), ".parquet": ("corpus_parquet", "parquet"),
    ".xlsx": ("corpus_xlsx", "xlsx"),
}
"""File name ending -> the table (and raw folder) that takes it; JSON documents are read as JSON Lines."""


def _table(name: str, files: str, fmt: FileFormat) -> TableSpec:
    return TableSpec(name=name, schema=PERMISSIVE, files=files, formats=(fmt,), primary_key=(),
                     write_disposition="append")


def _delta_tables() -> list[Path]:
    return sorted(p.parent for p in CORPUS.rglob("_delta_log"))


def _place_corpus(raw: Path) -> tuple[list[TableSpec], dict[str, str]]:
    """Copy the corpus into `raw`; return the tables and, for every input, its table."""
    tables = [_table(name, f"{name}/*", fmt) for name, fmt in FOLDERS.values()]
    inputs: dict[str, str] = {}
    deltas = _delta_tables()
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file()):
        if any(d in path.parents for d in deltas):
            continue
        table, _ = FOLDERS.get(path.suffix.lower(), FOLDERS[".csv"])
        relative = "__".join(path.relative_to(CORPUS).parts)
        name = relative.removesuffix(".json") + ".jsonl" if path.suffix.lower() == ".json" else relative
        (raw / table).mkdir(exist_ok=True)
        shutil.copyfile(path, raw / table / name)
        inputs[f"{table}/{name}"] = table
    for i, directory in enumerate(deltas):
        name = f"corpus_delta_{i}"
        shutil.copytree(directory, raw / name)
        tables.append(_table(name, name, "delta"))
        inputs[name] = name
    return tables, inputs


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sandbox, RunResult, dict[str, str]]:
    box = make_sandbox(tmp_path_factory.mktemp("corpus"))
    tables, inputs = _place_corpus(box.raw)
    result = run_bronze(box.layout, tables=tables, pipelines_dir=str(box.pipelines_dir))
    return box, result, inputs


def test_the_run_finishes_and_every_input_has_a_manifest_row(corpus_run: tuple[Sandbox, RunResult, dict[str, str]]
                                                            ) -> None:
    box, result, inputs = corpus_run
    assert result.failed_jobs == []
    manifest = query(box.warehouse, "SELECT src_path, table_name FROM bronze.manifest_processed_files")
    assert sorted(manifest) == sorted(inputs.items())
    assert len(inputs) > 400


def test_rows_read_are_valid_or_rejected_per_file(corpus_run: tuple[Sandbox, RunResult, dict[str, str]]) -> None:
    box, _, _ = corpus_run
    manifest = query(box.warehouse, "SELECT src_path, row_count, valid_count, reject_count, status "
                                    "FROM bronze.manifest_processed_files")
    records = Counter(path for (path,) in query(box.warehouse, "SELECT src_filename FROM bronze.rejects "
                                                               "WHERE src_row_number IS NULL"))
    rejected_rows = dict(query(box.warehouse, "SELECT src_filename, count(DISTINCT (src_sheet, src_row_number)) "
                                              "FROM bronze.rejects WHERE src_row_number IS NOT NULL GROUP BY 1"))
    for path, rows, valid, rejected, status in manifest:
        assert rows == valid + rejected, path
        if status == "file_rejected":
            assert (rows, records[path], rejected_rows.get(path, 0)) == (0, 1, 0), path
        else:
            assert (records[path], rejected_rows.get(path, 0)) == (0, rejected), path


def test_every_sink_holds_exactly_the_valid_rows(corpus_run: tuple[Sandbox, RunResult, dict[str, str]]) -> None:
    box, _, inputs = corpus_run
    valid = {path: n for path, n in query(box.warehouse, "SELECT src_path, valid_count - superseded_count "
                                                         "FROM bronze.manifest_processed_files")}
    for table in sorted(set(inputs.values())):
        expected = {path: n for path, n in valid.items() if inputs[path] == table and n}
        if not expected:
            continue
        assert dict(query(box.warehouse, f"SELECT src_filename, count(*) FROM bronze.{table} GROUP BY 1")) == expected
        for sink in (delta_table(box.lake, table), changelog_table(box.lake, table)):
            assert dict(Counter(sink["src_filename"].to_pylist())) == expected, table


def test_no_corpus_file_meets_an_unexpected_error(corpus_run: tuple[Sandbox, RunResult, dict[str, str]]) -> None:
    box, _, _ = corpus_run
    assert query(box.warehouse, "SELECT src_filename, reason_detail FROM bronze.rejects "
                                "WHERE reason_code = 'VALIDATION_FAILED'") == []


def test_the_outcomes_the_corpus_readme_asks_for(corpus_run: tuple[Sandbox, RunResult, dict[str, str]]) -> None:
    box, _, _ = corpus_run
    counts = {p: (r, v, j, s) for p, r, v, j, s in query(
        box.warehouse, "SELECT src_path, row_count, valid_count, reject_count, status FROM bronze.manifest_processed_files")}
    prefix = "corpus_jsonl/json__JSONTestSuite__test_parsing__"
    for path in (p for p in counts if p.startswith(prefix)):
        name = path.removeprefix(prefix).removesuffix(".jsonl")
        text = (CORPUS / "json" / "JSONTestSuite" / "test_parsing" / f"{name}.json").read_bytes()
        if b"\n" in text or b"\r" in text or not text.removeprefix(b"\xef\xbb\xbf").strip(b" \t"):
            continue  # not one JSON Lines record (blank lines and a lone BOM are no records, by the reader's policy)
        rows, valid, rejected, _ = counts[path]
        if name.startswith("n_"):
            assert (rows, valid, rejected) == (1, 0, 1), path
        elif name.startswith("y_"):
            assert (rows, valid) == (1, 1 if text.lstrip(b"\xef\xbb\xbf \t").startswith(b"{") else 0), path
    assert counts["corpus_csv/csv__frictionless__latin1.csv"][3] == "file_rejected"
    assert counts["corpus_csv/csv__csv-spectrum__csvs__simple.csv"][:3] == (1, 1, 0)
    assert all(c[3] == "file_rejected" for p, c in counts.items() if p.endswith((".md", ".txt", ".zip")))
    for compressed in ("gz", "bz2"):  # compressed CSVs are read as they stream
        assert counts[f"corpus_csv/csv__frictionless__table.csv.{compressed}"] == (2, 2, 0, "ok")
    assert sorted(c[:3] for p, c in counts.items() if p.startswith("corpus_delta_")) == [
        (3, 3, 0), (5, 5, 0), (7, 7, 0), (8, 8, 0), (11, 11, 0)]
