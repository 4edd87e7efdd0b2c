"""End to end: the shipped sample through every sink, checked against the generator's ground truth."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import (
    REPO,
    SAMPLE,
    Sandbox,
    changelog_table,
    delta_table,
    make_sandbox,
    query,
    rows_of,
    warehouse_table,
)

from retail_bronze_source import reasons
from retail_bronze_source.outputs import FEW_DISTINCT_HINT, dlt_columns, table_schema
from retail_bronze_source.registry import RETAIL_TABLES, DerivedColumn, TableSpec
from retail_bronze_source.run import RunResult, run_bronze
from retail_bronze_source.sinks.warehouse import load_arrow, warehouse_pipeline
from schemas.schemas import col

MERGE_TABLES = [s for s in RETAIL_TABLES if s.write_disposition == "merge"]
APPEND_TABLES = [s for s in RETAIL_TABLES if s.write_disposition == "append"]


def _compared_columns(spec: TableSpec) -> list[str]:
    return [n for n in table_schema(spec).names if n != "ingestion_ts"] + ["ingestion_ts"]


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((SAMPLE / "_expected.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sandbox, RunResult]:
    """One run over the shipped sample; tests of this module only read its outputs."""
    box = make_sandbox(tmp_path_factory.mktemp("e2e"), raw=SAMPLE)
    result = run_bronze(box.layout, pipelines_dir=str(box.pipelines_dir))
    return box, result


def test_run_has_no_failed_jobs(first_run: tuple[Sandbox, RunResult]) -> None:
    _, result = first_run
    assert result.failed_jobs == []
    assert result.warehouse_load_id and result.lake_load_id


@pytest.mark.parametrize("spec", RETAIL_TABLES, ids=lambda s: s.name)
def test_every_table_lands_in_all_three_sinks(first_run: tuple[Sandbox, RunResult], spec: TableSpec,
                                               expected: dict[str, Any]) -> None:
    box, _ = first_run
    duck = warehouse_table(box.warehouse, spec.name)
    assert duck.num_rows > 0
    assert changelog_table(box.lake, spec.name).num_rows > 0
    assert delta_table(box.lake, spec.name).num_rows == duck.num_rows
    loaded_columns = [c for c in duck.column_names if not c.startswith("_dlt")]
    assert loaded_columns == table_schema(spec).names


@pytest.mark.parametrize("spec", APPEND_TABLES, ids=lambda s: s.name)
def test_append_tables_hold_the_same_rows_in_every_sink(first_run: tuple[Sandbox, RunResult],
                                                        spec: TableSpec, expected: dict[str, Any]) -> None:
    box, _ = first_run
    schema, cols = table_schema(spec), _compared_columns(spec)
    duck = rows_of(warehouse_table(box.warehouse, spec.name), cols, schema)
    assert duck == rows_of(changelog_table(box.lake, spec.name), cols, schema)
    assert duck == rows_of(delta_table(box.lake, spec.name), cols, schema)
    assert len(duck) == expected["valid_rows"][spec.name]


@pytest.mark.parametrize("spec", MERGE_TABLES, ids=lambda s: s.name)
def test_merge_tables_keep_the_latest_version_everywhere(first_run: tuple[Sandbox, RunResult],
                                                         spec: TableSpec, expected: dict[str, Any]) -> None:
    box, _ = first_run
    schema, cols = table_schema(spec), _compared_columns(spec)
    duck = rows_of(warehouse_table(box.warehouse, spec.name), cols, schema)
    assert duck == rows_of(delta_table(box.lake, spec.name), cols, schema)
    assert len(duck) == expected["latest"][spec.name]
    log = changelog_table(box.lake, spec.name)
    latest = _latest_per_key(log, spec)
    assert rows_of(latest, cols, schema) == duck


def _latest_per_key(log: pa.Table, spec: TableSpec) -> pa.Table:
    order = [(c, "descending") for c in [spec.sequence_column, "ingestion_ts", "src_filename", "src_row_number"] if c]
    ranked = log.sort_by(order)
    keys = list(spec.primary_key)
    seen: set[tuple[Any, ...]] = set()
    keep = []
    for i, key in enumerate(zip(*(ranked[k].to_pylist() for k in keys), strict=True)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return ranked.take(pa.array(keep, pa.int64()))


def _reject_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["table_name"], r["src_filename"], r["src_row_number"], r.get("src_sheet"), r["reason_code"],
            r["column_name"])


def test_every_planted_reject_and_nothing_else(first_run: tuple[Sandbox, RunResult],
                                               expected: dict[str, Any]) -> None:
    box, _ = first_run
    got = query(box.warehouse, "SELECT table_name, src_filename, src_row_number, src_sheet, reason_code, "
                               "column_name FROM bronze.rejects")
    planted = sorted((_reject_key(r) for r in expected["rejects"]), key=repr)
    assert sorted(got, key=repr) == planted


def test_every_reason_code_but_load_failed_is_planted_in_the_sample(expected: dict[str, Any]) -> None:
    # LOAD_FAILED needs a destination that refuses a job, COLUMN_TYPE_CHANGED and COLUMN_NAME_CONFLICT mostly a run
    # with --evolve-schema, VALIDATION_FAILED a defect (tests/test_validate.py and tests/test_extract.py cover them),
    # OUTSIDE_RAW_ROOT a link leading out of the raw root (tests/test_discovery.py), LIMIT_EXCEEDED files over the
    # readers' limits (tests/test_limits.py)
    assert {r["reason_code"] for r in expected["rejects"]} == reasons.ALL - {
        reasons.LOAD_FAILED, reasons.COLUMN_TYPE_CHANGED, reasons.COLUMN_NAME_CONFLICT, reasons.VALIDATION_FAILED,
        reasons.OUTSIDE_RAW_ROOT, reasons.LIMIT_EXCEEDED}


def test_manifest_conserves_rows_per_file(first_run: tuple[Sandbox, RunResult], expected: dict[str, Any]) -> None:
    box, result = first_run
    manifest = {
        row[0]: row[1:]
        for row in query(box.warehouse, "SELECT src_path, row_count, valid_count, reject_count, status, load_id "
                                        "FROM bronze.manifest_processed_files")
    }
    assert set(manifest) == set(expected["files"])
    for path, (rows, valid, rejected, status, load_id) in manifest.items():
        truth = expected["files"][path]
        assert rows == valid + rejected, path
        assert (rows, valid, rejected) == (truth["rows"], truth["valid"], truth["rejected"]), path
        assert (status == "file_rejected") == (truth["file_reject"] is not None), path
        assert load_id == result.warehouse_load_id


def test_rejects_keep_the_original_record(first_run: tuple[Sandbox, RunResult]) -> None:
    box, _ = first_run
    rejects = warehouse_table(box.warehouse, "rejects")
    row_level = rejects.filter(pc.invert(pc.is_in(rejects["reason_code"], pa.array(sorted(reasons.FILE_LEVEL)))))
    assert row_level.num_rows > 0
    assert pc.all(pc.invert(pc.is_null(row_level["raw_record"]))).as_py()
    for row in row_level.to_pylist():
        if row["src_filename"].endswith(".jsonl"):
            line = (SAMPLE / row["src_filename"]).read_bytes().split(b"\n")[row["src_row_number"] - 1]
            assert row["raw_record"] == line.rstrip(b"\r").decode("utf-8", "backslashreplace")


def test_audit_columns_are_identical_across_sinks(first_run: tuple[Sandbox, RunResult]) -> None:
    box, result = first_run
    for spec in RETAIL_TABLES:
        for table in (warehouse_table(box.warehouse, spec.name), changelog_table(box.lake, spec.name),
                      delta_table(box.lake, spec.name)):
            stamps = set(table["ingestion_ts"].to_pylist())
            assert stamps == {result.ingestion_ts}, spec.name
            assert pc.all(pc.equal(pc.utf8_length(table["src_row_hash"]), 64)).as_py()


def test_mostly_distinct_text_is_stored_with_fsst_in_every_warehouse_table(first_run: tuple[Sandbox, RunResult]) -> None:
    box, _ = first_run
    hashed = [t for (t,) in query(box.warehouse, "SELECT DISTINCT table_name FROM duckdb_columns() WHERE schema_name = "
                                                 "'bronze' AND column_name = 'src_row_hash'")]
    assert {"customers", "orders", "rejects"} <= set(hashed)
    declared = [*((t, "src_row_hash") for t in hashed), ("rejects", "raw_record"), ("customers", "email"),
                ("orders", "customer_email")]
    for table, column in declared:
        used = query(box.warehouse, f"SELECT DISTINCT compression FROM pragma_storage_info('bronze.{table}') "
                                    f"WHERE column_name = '{column}' AND segment_type = 'VARCHAR'")
        assert used == [("FSST",)], (table, column)  # DuckDB picks `Uncompressed` for these small tables by itself
    used = query(box.warehouse, "SELECT DISTINCT compression FROM pragma_storage_info('bronze.orders') "
                                "WHERE column_name = 'note' AND segment_type = 'VARCHAR'")
    assert used != [("FSST",)]  # text not declared mostly distinct is left to DuckDB


def test_text_with_few_distinct_values_is_stored_as_a_dictionary(tmp_path: Path) -> None:
    # Unique values, which DuckDB would not store as a dictionary by itself: only the hint makes it one.
    values = pa.array([f"{i:064x}" for i in range(50_000)], pa.string())
    rows = pa.table([values, values, values], schema=pa.schema([
        col("kind", pa.string(), accepted=["a"]),  # the validator has checked the values: the loader does not
        pa.field("src_filename", pa.string()),
        pa.field("free_text", pa.string()),
    ]))
    warehouse = tmp_path / "warehouse.duckdb"
    pipeline = warehouse_pipeline(warehouse, "few_distinct_test", pipelines_dir=str(tmp_path / "pipelines"))
    load_arrow(pipeline, rows, "hinted", merge_key=[])
    stored = dict(query(warehouse, "SELECT column_name, string_agg(DISTINCT compression, ',') FROM "
                                   "pragma_storage_info('bronze.hinted') WHERE segment_type = 'VARCHAR' GROUP BY 1"))
    assert stored["kind"] == stored["src_filename"] == stored["_dlt_load_id"] == "Dictionary"
    assert stored["free_text"] != "Dictionary"
    orders = next(spec for spec in RETAIL_TABLES if spec.name == "orders")
    hinted = {name for name, hints in dlt_columns(table_schema(orders)).items() if hints.get(FEW_DISTINCT_HINT)}
    assert hinted == {"status", "channel", "src_filename"}  # accepted values and the file; not `note`, `currency`


def test_rejects_csv_files_match_the_rejects_table(first_run: tuple[Sandbox, RunResult]) -> None:
    box, result = first_run
    written = {Path(p).parent.name: Path(p) for p in result.rejects_files}
    by_table = dict(query(box.warehouse, "SELECT table_name, count(*) FROM bronze.rejects GROUP BY 1"))
    assert set(written) == set(by_table)
    for table, path in written.items():
        assert path == box.lake / "_rejects" / table / f"{result.warehouse_load_id}.csv"
        lines = path.read_text().splitlines()
        assert lines[0].startswith('"table_name","src_filename"')
        assert sum(1 for line in lines[1:] if line.startswith(f'"{table}"')) == by_table[table]
        stamps = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"ingestion_ts": pa.timestamp("us", tz="UTC")}))["ingestion_ts"]
        assert stamps.null_count == 0 and set(stamps.to_pylist()) == {result.ingestion_ts}


def test_second_run_loads_nothing_new(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=SAMPLE)
    first = run_bronze(box.layout, table_names=["customers", "events", "returns"], pipelines_dir=str(box.pipelines_dir))
    counts = {t: query(box.warehouse, f"SELECT count(*) FROM bronze.{t}")[0][0]
              for t in ("customers", "events", "returns", "rejects", "manifest_processed_files")}
    delta_versions = {t: len(list((box.lake / "bronze" / "delta" / t / "_delta_log").glob("*.json")))
                      for t in ("customers", "events", "rejects")}
    second = run_bronze(box.layout, table_names=["customers", "events", "returns"],
                        pipelines_dir=str(box.pipelines_dir))
    assert first.warehouse_load_id
    assert all(s.files == 0 for s in second.summary.values())
    assert counts == {t: query(box.warehouse, f"SELECT count(*) FROM bronze.{t}")[0][0] for t in counts}
    assert delta_versions == {t: len(list((box.lake / "bronze" / "delta" / t / "_delta_log").glob("*.json")))
                              for t in delta_versions}
    assert second.rejects_files == []


def test_an_append_file_delivered_again_without_a_valid_row_takes_its_rows_away(tmp_path: Path) -> None:
    """Events file 1 delivered again empty and file 2 with every row broken: their rows leave DuckDB and Delta (the
    change log keeps the loads it had), file 3 keeps its rows; file 1 delivered again as it was comes back."""
    box = make_sandbox(tmp_path)
    shutil.copytree(SAMPLE / "events", box.raw / "events")

    def run() -> RunResult:
        return run_bronze(box.layout, table_names=["events"], pipelines_dir=str(box.pipelines_dir))

    def counts() -> tuple[dict[str, int], int, int]:
        return (dict(query(box.warehouse, "SELECT src_filename, count(*) FROM bronze.events GROUP BY 1")),
                delta_table(box.lake, "events").num_rows, changelog_table(box.lake, "events").num_rows)

    run()
    loaded, _, logged = counts()
    assert sorted(loaded) == [f"events/events_{i}.jsonl" for i in (1, 2, 3)] and all(loaded.values())
    one, two = box.raw / "events" / "events_1.jsonl", box.raw / "events" / "events_2.jsonl"
    kept = one.read_bytes()
    one.write_bytes(b"")
    two.write_bytes(b"".join(b'{"event_id": "not a number"}\n' for _ in range(3)))
    emptied = run()
    rest = {"events/events_3.jsonl": loaded["events/events_3.jsonl"]}
    assert counts() == (rest, sum(rest.values()), logged)
    assert any("without a valid row" in note for note in emptied.notes), emptied.notes
    assert query(box.warehouse, "SELECT count(DISTINCT src_row_number) FROM bronze.rejects WHERE load_id = ?",
                 [emptied.warehouse_load_id])[0][0] == 3
    one.write_bytes(kept)
    run()
    back = {**rest, "events/events_1.jsonl": loaded["events/events_1.jsonl"]}
    assert counts() == (back, sum(back.values()), logged + loaded["events/events_1.jsonl"])


def _refusing_table(warehouse: Path, spec: TableSpec) -> None:
    """Create `bronze.<table>` with the loaded columns and a CHECK constraint every row violates."""
    import duckdb

    empty = table_schema(spec).append(pa.field("_dlt_load_id", pa.string())).empty_table()
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.register("empty", empty)
        columns = [f'"{name}" {type_}' for name, type_, *_ in con.execute("DESCRIBE SELECT * FROM empty").fetchall()]
        con.execute("CREATE SCHEMA bronze")
        con.execute(f"CREATE TABLE bronze.{spec.name} ({', '.join(columns)}, CHECK (src_row_number < 0))")


def test_refused_load_job_becomes_load_failed_rejects_and_does_not_block(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=SAMPLE)
    sensors = next(s for s in RETAIL_TABLES if s.name == "sensors")
    _refusing_table(box.warehouse, sensors)
    result = run_bronze(box.layout, table_names=["sensors", "stores"], pipelines_dir=str(box.pipelines_dir))
    assert [job.table_name for job in result.failed_jobs] == ["sensors"]
    failed = query(box.warehouse, "SELECT count(*), min(reason_detail) FROM bronze.rejects "
                                  "WHERE reason_code = 'LOAD_FAILED' AND table_name = 'sensors'")
    valid_sensors = query(box.warehouse, "SELECT sum(valid_count) FROM bronze.manifest_processed_files "
                                         "WHERE table_name = 'sensors'")[0][0]
    assert failed[0][0] == valid_sensors > 0
    assert "constraint" in failed[0][1].lower()
    assert query(box.warehouse, "SELECT count(*) FROM bronze.sensors")[0][0] == 0
    assert not (box.lake / "bronze" / "parquet" / "sensors").exists()
    assert not (box.lake / "bronze" / "delta" / "sensors").exists()
    assert query(box.warehouse, "SELECT count(*) FROM bronze.stores")[0][0] > 0
    csv_text = "".join(p.read_text() for p in (box.lake / "_rejects" / "sensors").glob("*.csv"))
    assert csv_text.count('"LOAD_FAILED"') == valid_sensors

    second = run_bronze(box.layout, table_names=["sensors", "stores"], pipelines_dir=str(box.pipelines_dir))
    assert second.failed_jobs == []
    assert all(s.files == 0 for s in second.summary.values())


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_missing_raw_dir_fails_with_one_line(tmp_path: Path) -> None:
    done = _cli("--raw", str(tmp_path / "nope"), "--lake", str(tmp_path / "lake"),
                "--warehouse", str(tmp_path / "w.duckdb"), "--pipelines-dir", str(tmp_path / "p"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: the raw root {tmp_path / 'nope'} does not exist"]


def test_cli_dry_run_writes_nothing(tmp_path: Path, expected: dict[str, Any]) -> None:
    done = _cli("--raw", str(SAMPLE), "--lake", str(tmp_path / "lake"), "--warehouse", str(tmp_path / "w.duckdb"),
                "--pipelines-dir", str(tmp_path / "p"), "--tables", "orders,events", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []
    orders_line = next(line for line in done.stdout.splitlines() if line.startswith("orders "))
    files, read, valid, rejected = (int(x) for x in orders_line.split()[1:5])
    truth = [f for f in expected["files"].values() if f["table"] == "orders"]
    assert (files, read, valid, rejected) == (len(truth), sum(f["rows"] for f in truth),
                                              sum(f["valid"] for f in truth), sum(f["rejected"] for f in truth))


def test_cli_run_then_dlt_pipeline_commands(tmp_path: Path) -> None:
    """The default layout (run from its directory, dlt's default pipelines dir) is inspected by plain name."""
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE, raw)
    env = {**os.environ, "DLT_DATA_DIR": str(tmp_path / "dlt_home")}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(raw),
                           "--tables", "stores,events"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "stores" in done.stdout and "FILE_ENCODING=1" in done.stdout
    assert "inspect: dlt pipeline retail_bronze info" in done.stdout
    dlt_cli = Path(sys.executable).with_name("dlt")
    for command in (["info"], ["trace"], ["load-package"], ["failed-jobs"]):
        shown = subprocess.run([str(dlt_cli), "pipeline", "retail_bronze", *command], capture_output=True, text=True,
                               timeout=120, cwd=tmp_path, env=env)
        assert shown.returncode == 0, (command, shown.stderr)
        assert shown.stdout.strip(), command


def test_cli_other_layouts_name_their_pipelines_after_their_targets(tmp_path: Path) -> None:
    pipelines = tmp_path / "p"
    done = _cli("--raw", str(SAMPLE), "--lake", str(tmp_path / "lake"), "--warehouse", str(tmp_path / "w.duckdb"),
                "--pipelines-dir", str(pipelines), "--tables", "stores")
    assert done.returncode == 0, done.stderr
    inspect = next(line for line in done.stdout.splitlines() if line.startswith("inspect:")).split()
    name = inspect[inspect.index("--pipelines-dir") + 2]
    assert name.startswith("retail_bronze_") and (pipelines / name).is_dir()
    shown = subprocess.run([str(Path(sys.executable).with_name("dlt")), "pipeline", "--pipelines-dir", str(pipelines),
                            name, "info"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "stores" in shown.stdout


def test_cli_warehouse_open_elsewhere_waits_then_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "w.duckdb").parent.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
                               "print('open', flush=True); time.sleep(60)", str(_empty_warehouse(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        done = _cli("--raw", str(SAMPLE), "--lake", str(tmp_path / "lake"), "--warehouse", str(tmp_path / "w.duckdb"),
                    "--pipelines-dir", str(tmp_path / "p"), "--tables", "stores", "--lock-timeout", "1")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the warehouse"), lines
    assert f"pid {holder.pid}" in lines[0] and "waited 1 s" in lines[0]
    assert not (tmp_path / "lake" / "bronze").exists()


def test_a_warehouse_opened_elsewhere_during_the_run_stops_it_with_one_line(tmp_path: Path) -> None:
    """A session opening the warehouse after the run's start (here as the first table's extraction ends, before the
    load) stops the run with an error naming it; the next run completes the load."""
    from retail_bronze_source.sinks.warehouse import WarehouseTaken

    box = Sandbox(SAMPLE, tmp_path / "lake", tmp_path / "w.duckdb", tmp_path / "p")
    holders: list[subprocess.Popen[str]] = []

    def open_elsewhere(_done: object) -> None:
        if holders:
            return
        holder = subprocess.Popen([sys.executable, "-c",
                                   "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
                                   "print('open', flush=True); time.sleep(120)", str(box.warehouse)],
                                  stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"

    try:
        with pytest.raises(WarehouseTaken) as taken:
            run_bronze(box.layout, table_names=["stores"], pipelines_dir=str(box.pipelines_dir),
                       progress=open_elsewhere)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    message = str(taken.value)
    assert "\n" not in message and f"(pid {holders[0].pid})" in message, message
    assert message.startswith(f"the warehouse {box.warehouse} was opened in ")
    done = run_bronze(box.layout, table_names=["stores"], pipelines_dir=str(box.pipelines_dir))
    assert done.exit_code == 0
    stores = query(box.warehouse, "SELECT count(*), count(DISTINCT store_id) FROM bronze.stores")[0]
    assert stores[0] == stores[1] > 0
    assert delta_table(box.lake, "stores").num_rows == stores[0]


def test_a_warehouse_released_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(3)", str(_empty_warehouse(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        done = _cli("--raw", str(SAMPLE), "--lake", str(tmp_path / "lake"), "--warehouse", str(tmp_path / "w.duckdb"),
                    "--pipelines-dir", str(tmp_path / "p"), "--tables", "stores", "--lock-timeout", "30")
    finally:
        holder.wait()
    assert done.returncode == 0, done.stderr
    assert query(tmp_path / "w.duckdb", "SELECT count(*) FROM bronze.stores")[0][0] > 0


def _empty_warehouse(folder: Path) -> Path:
    import duckdb

    path = folder / "w.duckdb"
    duckdb.connect(str(path)).close()
    return path


def test_relative_paths_follow_the_working_directory_of_each_run(tmp_path: Path) -> None:
    pipelines = tmp_path / "shared_pipelines"
    for name in ("first", "second"):
        work = tmp_path / name
        work.mkdir()
        done = _cli("--raw", str(SAMPLE), "--lake", "lake", "--warehouse", "duckdb/warehouse.duckdb",
                    "--pipelines-dir", str(pipelines), "--tables", "stores", cwd=work)
        assert done.returncode == 0, done.stderr
        assert query(work / "duckdb" / "warehouse.duckdb", "SELECT count(*) FROM bronze.stores")[0][0] > 0


def test_files_that_broke_validation_load_or_are_rejected_and_the_other_tables_load(tmp_path: Path) -> None:
    # Each of these files failed the whole run in extraction (and the pending package every later run).
    box = make_sandbox(tmp_path)
    typed = TableSpec(name="typed", schema=pa.schema([col("id", pa.int64(), required=True), col("value", pa.float64()),
                                                      col("amount", pa.decimal128(12, 2)), col("tag", pa.string())]),
                      files="typed/*", formats=("parquet",), primary_key=("id",), write_disposition="merge")
    lines = TableSpec(name="lines", schema=pa.schema([col("note", pa.string())]), files="lines/*",
                      formats=("jsonl",), primary_key=(), write_disposition="append")
    codes = TableSpec(name="codes", schema=pa.schema([col("code", pa.string())]), files="codes/*", formats=("csv",),
                      primary_key=(), write_disposition="append",
                      derived=(DerivedColumn("number", pa.int64(), "CAST(code AS BIGINT)"),))
    for folder in ("typed", "lines", "codes"):
        (box.raw / folder).mkdir()
    pq.write_table(pa.table({"id": [1, 2], "value": pa.array(np.array([1.5, 0.25], dtype=np.float16)),
                             "extra": pa.array(np.array([2.5, 3], dtype=np.float16))}), box.raw / "typed/half.parquet")
    pq.write_table(pa.table({"id": [3], "amount": pa.array([Decimal("12.50")], pa.decimal256(40, 2)),
                             "huge": pa.array([Decimal("1" + "0" * 45)], pa.decimal256(50, 0))}),
                   box.raw / "typed/wide_decimals.parquet")
    pq.write_table(pa.table({"id": [4, 5], "tag": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
                             "raw": pa.array([b"\xff\xfe", b"ok"], pa.binary(2))}), box.raw / "typed/map_and_bytes.parquet")
    pq.write_table(pa.table({"id": [6], "seen": pa.array([dt.datetime(9999, 12, 31)], pa.timestamp("us"))}),
                   box.raw / "typed/int96.parquet", use_deprecated_int96_timestamps=True)
    (box.raw / "lines/empty_object.jsonl").write_text("{}\n")
    (box.raw / "lines/note.jsonl").write_text('{"note": "x"}\n')
    (box.raw / "codes/bad.csv").write_text("code\nabc\n")
    (box.raw / "codes/good.csv").write_text("code\n12\n")

    result = run_bronze(box.layout, tables=[typed, lines, codes], pipelines_dir=str(box.pipelines_dir))

    assert result.failed_jobs == []
    manifest = {r[0]: r[1:] for r in query(box.warehouse, "SELECT src_path, row_count, valid_count, reject_count, "
                                                          "status FROM bronze.manifest_processed_files")}
    assert manifest == {
        "typed/half.parquet": (2, 2, 0, "ok"), "typed/wide_decimals.parquet": (1, 1, 0, "ok"),
        "typed/map_and_bytes.parquet": (2, 1, 1, "with_rejects"), "typed/int96.parquet": (1, 1, 0, "ok"),
        "lines/empty_object.jsonl": (1, 1, 0, "ok"), "lines/note.jsonl": (1, 1, 0, "ok"),
        "codes/bad.csv": (0, 0, 0, "file_rejected"), "codes/good.csv": (1, 1, 0, "ok")}
    assert query(box.warehouse, "SELECT id, value, amount, _rescued_data FROM bronze.typed ORDER BY id") == [
        (1, 1.5, None, '{"extra":"2.5"}'), (2, 0.25, None, '{"extra":"3.0"}'), (3, None, Decimal("12.50"), '{"huge":"'
                                                                                                    + "1" + "0" * 45 + '"}'),
        (5, None, None, '{"raw":"ok"}'), (6, None, None, '{"seen":"9999-12-31 00:00:00"}')]
    rejects = query(box.warehouse, "SELECT src_filename, reason_code, column_name, reason_detail FROM bronze.rejects "
                                   "ORDER BY 1")
    assert [r[:3] for r in rejects] == [("codes/bad.csv", reasons.VALIDATION_FAILED, None),
                                        ("typed/map_and_bytes.parquet", reasons.TYPE_MISMATCH, "tag")]
    assert rejects[0][3].startswith("ConversionException: Conversion Error: Could not convert string 'abc'")
    assert rejects[1][3] == """'[["k",1]]' is not a valid string"""
    assert query(box.warehouse, "SELECT count(*), count(note) FROM bronze.lines") == [(2, 1)]
    assert query(box.warehouse, "SELECT code, number FROM bronze.codes") == [("12", 12)]
    for table, rows in (("typed", 5), ("lines", 2), ("codes", 1)):
        assert delta_table(box.lake, table).num_rows == rows
