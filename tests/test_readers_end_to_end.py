"""The new formats and options through the whole source: one table receiving CSV, compressed CSV, TSV, JSON and
files over a limit, loaded into DuckDB with the manifest, the rejects and their raw records."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import dlt
import duckdb
import pyarrow as pa

from retail_bronze_source import TableSpec, reasons, retail_source
from schemas.schemas import col

SCHEMA = pa.schema([col("id", pa.int64(), required=True), col("price", pa.decimal128(10, 2)),
                    col("city", pa.string())])


def run(tmp_path: Path, spec: TableSpec) -> duckdb.DuckDBPyConnection:
    pipeline = dlt.pipeline(f"e2e_{spec.name}", destination=dlt.destinations.duckdb(str(tmp_path / "w.duckdb")),
                            dataset_name="bronze", pipelines_dir=str(tmp_path / "pipelines"))
    info = pipeline.run(retail_source(raw_url=str(tmp_path / "raw"), tables=[spec]), loader_file_format="parquet")
    assert not info.has_failed_jobs
    return duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)


def test_delivered_formats_load_with_their_options(tmp_path: Path) -> None:
    drops = tmp_path / "raw" / "prices"
    drops.mkdir(parents=True)
    (drops / "a.csv").write_text("id;price;city\n1;10,50;Köln\n2;N/A;Paris\n")
    (drops / "b.csv.gz").write_bytes(gzip.compress("id;price;city\n3;1.500;Rome\n4;-0,25;Wien\n".encode("latin-1")))
    (drops / "c.tsv").write_text("id\tprice\tcity\n5\t7,5\tOslo\n6\t1,234\tLyon\n")
    # `decimal` is an option of delimited text: JSON numbers are read as written.
    (drops / "d.json").write_text(json.dumps([{"id": 7, "price": 3.10, "city": "Bern"}, {"price": 1, "zip": 1}]))
    (drops / "e.csv").write_text(";".join(f"c{i}" for i in range(40)) + "\n" + ";".join("1" * 40) + "\n")
    spec = TableSpec(name="prices", schema=SCHEMA, files="prices/*", formats=("csv", "tsv", "json"),
                     primary_key=("id",), write_disposition="append",
                     reader_options={"delimiter": ";", "decimal": ",", "null_values": ["N/A"], "encoding": "latin-1",
                                     "max_columns": 30})
    with run(tmp_path, spec) as con:
        rows = con.execute("SELECT id, price, city, src_filename, src_row_number FROM bronze.prices ORDER BY id"
                           ).fetchall()
        manifest = con.execute("SELECT src_path, status, row_count, valid_count, reject_count "
                               "FROM bronze.manifest_processed_files ORDER BY 1").fetchall()
        rejects = con.execute("SELECT src_filename, src_row_number, reason_code, raw_record FROM bronze.rejects "
                              "ORDER BY 1, 2").fetchall()
    # a.csv is read as Latin-1 too: "Köln" written as UTF-8 reads as two Latin-1 characters, as declared.
    assert rows == [
        (1, Decimal("10.50"), "KÃ¶ln", "prices/a.csv", 1), (2, None, "Paris", "prices/a.csv", 2),
        (4, Decimal("-0.25"), "Wien", "prices/b.csv.gz", 2), (5, Decimal("7.50"), "Oslo", "prices/c.tsv", 1),
        (7, Decimal("3.10"), "Bern", "prices/d.json", 1),
    ]
    assert manifest == [
        ("prices/a.csv", "ok", 2, 2, 0), ("prices/b.csv.gz", "with_rejects", 2, 1, 1),
        ("prices/c.tsv", "with_rejects", 2, 1, 1), ("prices/d.json", "with_rejects", 2, 1, 1),
        ("prices/e.csv", "file_rejected", 0, 0, 0),
    ]
    assert rejects == [
        ("prices/b.csv.gz", 1, reasons.TYPE_MISMATCH, "3;1.500;Rome"),
        ("prices/c.tsv", 2, reasons.TYPE_MISMATCH, "6\t1,234\tLyon"),
        ("prices/d.json", 2, reasons.NOT_NULL, '{"price": 1, "zip": 1}'),
        ("prices/e.csv", None, reasons.LIMIT_EXCEEDED, None),
    ]
