"""The source as a library: registry-driven resources and hints, config keys, and a user's own table and destination."""

from __future__ import annotations

import shutil
from pathlib import Path

import dlt
import duckdb
import pyarrow as pa
import pytest
from conftest import SAMPLE

from retail_bronze_source import SCHEMA_CONTRACT, TableSpec, reasons, retail_source
from retail_bronze_source.outputs import table_schema
from retail_bronze_source.registry import RETAIL_TABLES, select_tables
from schemas.schemas import col


def test_every_registry_table_has_a_resource_with_its_hints() -> None:
    source = retail_source(raw_url=str(SAMPLE))
    assert list(source.resources) == [spec.name for spec in RETAIL_TABLES]
    for spec in RETAIL_TABLES:
        table = source.resources[spec.name].compute_table_schema()
        assert table["name"] == spec.name
        assert table["write_disposition"] == "merge"
        assert table["schema_contract"] == SCHEMA_CONTRACT
        keys = [c for c, h in table["columns"].items() if h.get("primary_key")]
        merge_keys = [c for c, h in table["columns"].items() if h.get("merge_key")]
        if spec.write_disposition == "merge":
            assert (keys, merge_keys) == (list(spec.primary_key), [])
        else:
            assert (keys, merge_keys) == ([], ["src_filename"])


def test_performance_internals_are_not_public_arguments() -> None:
    import inspect

    assert set(inspect.signature(retail_source).parameters) == {
        "raw_url", "table_names", "ingestion_ts", "chunk_size", "evolve_schema", "tables"}


def test_raw_url_resolves_from_the_source_config_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__RAW_URL", str(tmp_path))
    source = retail_source()
    assert source.name == "retail_bronze"
    assert source.section == "retail_bronze"
    pipeline = dlt.pipeline("cfg_check", destination=dlt.destinations.duckdb(str(tmp_path / "c.duckdb")),
                            pipelines_dir=str(tmp_path / "p"))
    pipeline.extract(source.with_resources("stores"))
    assert pipeline.last_trace is not None


def test_select_tables_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown table"):
        select_tables(RETAIL_TABLES, ["orders", "nope"])


def test_registry_entry_must_name_columns_of_its_contract() -> None:
    with pytest.raises(ValueError, match="not in its schema"):
        TableSpec(name="x", schema=pa.schema([col("a", pa.int64(), required=True)]), files="x/*", formats=("csv",),
                  primary_key=("b",), write_disposition="merge", sequence_column=None)


def test_another_project_declares_its_own_table_and_destination(tmp_path: Path) -> None:
    raw = tmp_path / "drops"
    (raw / "loyalty").mkdir(parents=True)
    (raw / "loyalty" / "points_1.csv").write_text(
        "member_id;points;tier\n1;10;gold\n2;-5;gold\n3;7;tin\n4;12;gold\n1;10;gold\n", encoding="utf-8")
    points = TableSpec(
        name="loyalty_points",
        schema=pa.schema([col("member_id", pa.int64(), required=True), col("points", pa.int32(), min_value="0"),
                          col("tier", pa.string(), accepted=("gold", "silver"))]),
        files="loyalty/*.csv", formats=("csv",), primary_key=("member_id",), write_disposition="append",
        sequence_column=None, reader_options={"delimiter": ";"},
    )
    pipeline = dlt.pipeline("their_pipeline", destination=dlt.destinations.duckdb(str(tmp_path / "theirs.duckdb")),
                            dataset_name="landing", pipelines_dir=str(tmp_path / "pipelines"))
    info = pipeline.run(retail_source(raw_url=str(raw), tables=[points]),
                        loader_file_format="parquet")
    assert not info.has_failed_jobs
    with duckdb.connect(str(tmp_path / "theirs.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT member_id, points, src_row_number FROM landing.loyalty_points ORDER BY 3").fetchall()
        columns = [r[0] for r in con.execute("DESCRIBE landing.loyalty_points").fetchall()]
        load_ids = con.execute("SELECT DISTINCT _dlt_load_id FROM landing.loyalty_points").fetchall() \
            if "_dlt_load_id" in columns else None
        rejected = con.execute("SELECT src_row_number, reason_code, column_name FROM landing.rejects ORDER BY 1, 2"
                               ).fetchall()
        columns = [r[0] for r in con.execute("DESCRIBE landing.loyalty_points").fetchall()]
    assert loaded == [(1, 10, 1), (4, 12, 4), (1, 10, 5)]
    assert load_ids == [(info.loads_ids[0],)]  # whatever the normalizer configuration
    assert rejected == [(2, reasons.OUT_OF_RANGE, "points"), (3, reasons.ACCEPTED_VALUES, "tier")]
    with duckdb.connect(str(tmp_path / "theirs.duckdb"), read_only=True) as con:
        raw_records = con.execute("SELECT raw_record FROM landing.rejects ORDER BY src_row_number").fetchall()
    assert raw_records == [("2;-5;gold",), ("3;7;tin",)]
    assert [c for c in columns if not c.startswith("_dlt")] == table_schema(points).names

    again = pipeline.run(retail_source(raw_url=str(raw), tables=[points]),
                         loader_file_format="parquet")
    assert not again.has_failed_jobs
    with duckdb.connect(str(tmp_path / "theirs.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM landing.loyalty_points").fetchone() == (3,)


def test_source_runs_from_an_fsspec_url(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "stores", raw / "stores")
    pipeline = dlt.pipeline("url_pipeline", destination=dlt.destinations.duckdb(str(tmp_path / "u.duckdb")),
                            dataset_name="bronze", pipelines_dir=str(tmp_path / "pipelines"))
    info = pipeline.run(retail_source(raw_url=raw.as_uri(), table_names=["stores"]), loader_file_format="parquet")
    assert not info.has_failed_jobs
    with duckdb.connect(str(tmp_path / "u.duckdb"), read_only=True) as con:
        files = con.execute("SELECT src_path, status FROM bronze.manifest_processed_files ORDER BY 1").fetchall()
    assert [f[0] for f in files] == sorted(p.relative_to(raw).as_posix() for p in (raw / "stores").iterdir())
