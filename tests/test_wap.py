"""Write-audit-publish end to end, through the command line: a delivery that fails its audits reaches no sink, the
fixed delivery then gives every sink what a run that never failed gives, a held load waits for `--publish`, and a
run killed between audit and publish is completed or undone by the next run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import REPO, SAMPLE, Sandbox, box_args, make_sandbox, query, run_cli, snapshot
from deltalake import DeltaTable

from retail_bronze_source.audits import Completeness
from retail_bronze_source.crash_points import WAP_POINTS
from retail_bronze_source.observe import format_record, load_info
from retail_bronze_source.observe.metrics import exposition, run_metrics
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.run import PublishRefused, RunResult, publish_staged, run_bronze
from retail_bronze_source.wap import WapSettings, wap_settings
from schemas.schemas import UTC_TS, col

TABLES = ["customers", "stores", "orders"]
DELIVERY = "orders/orders_2024-03-09.csv"
HEADER = "order_id,customer_id,store_id,order_ts,order_dt,status,channel,currency,total_amount,customer_email,note," \
         "updated_at\n"


def deliver_orders(box: Sandbox, *, first_customer: int) -> None:
    """A day of 200 orders whose customers are numbered from `first_customer` (the sample knows 1 to 300)."""
    lines = [f"{200000 + i},{first_customer + i},{1 + i % 30},2024-03-09T10:{i % 60:02d}:00+00:00,2024-03-09,paid,web,"
             f"EUR,{10 + i}.50,,,2024-03-09T11:00:00+00:00\n" for i in range(200)]
    (box.raw / DELIVERY).write_text(HEADER + "".join(lines))


def sandbox(root: Path) -> Sandbox:
    raw = root / "raw"
    shutil.copytree(SAMPLE, raw)
    return make_sandbox(root, raw=raw)


def cli(box: Sandbox, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*box_args(box, TABLES), *args, env=env)


def staging(box: Sandbox) -> Path:
    return box.warehouse.with_name(box.warehouse.name + ".wap")


def sinks(box: Sandbox) -> dict[str, Any]:
    """Everything a reader of any sink sees: rows of every table, change log files, Delta versions, warehouse loads
    and rejects CSVs."""
    delta = box.lake / "bronze" / "delta"
    return {
        "rows": snapshot(box, TABLES),
        "change_log": sorted(str(p.relative_to(box.lake)) for p in (box.lake / "bronze" / "parquet").rglob("*")),
        "delta": {p.name: DeltaTable(str(p)).version() for p in sorted(delta.iterdir())},
        "loads": query(box.warehouse, "SELECT load_id FROM bronze._dlt_loads ORDER BY 1"),
        "rejects_csv": sorted(str(p.relative_to(box.lake)) for p in (box.lake / "_rejects").rglob("*.csv")),
    }


@pytest.fixture(scope="module")
def never_failed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample, then the good delivery, each loaded by a run without write-audit-publish."""
    box = sandbox(tmp_path_factory.mktemp("never_failed"))
    assert cli(box).returncode == 0
    deliver_orders(box, first_customer=1)
    assert cli(box).returncode == 0
    return snapshot(box, TABLES)


@pytest.mark.slow
@pytest.mark.parametrize("on_failure", ["keep", "delete"])
def test_a_failing_delivery_publishes_nothing_then_the_fixed_one_equals_a_run_that_never_failed(
        tmp_path: Path, on_failure: str, never_failed: dict[str, Any]) -> None:
    box = sandbox(tmp_path)
    env = {"SOURCES__RETAIL_BRONZE__ON_FAILURE": on_failure}
    assert cli(box, "--wap", env=env).returncode == 0
    before = sinks(box)

    deliver_orders(box, first_customer=900001)
    failed = cli(box, "--wap", env=env)
    assert failed.returncode == 4, failed.stderr
    assert ("audit failed: orders references:customer_id->customers: expected <= 5.00% of rows without a key in "
            "customers(customer_id), observed 100.00% (200 of 200 rows)") in failed.stderr
    assert "1 audit(s) failed, nothing was published" in failed.stderr
    assert sinks(box) == before
    assert staging(box).is_dir() == (on_failure == "keep")
    if on_failure == "keep":
        kept = staging(box) / box.warehouse.name
        assert query(kept, "SELECT count(*) FROM bronze.orders WHERE customer_id > 900000")[0][0] == 200
    [(load_id, outcome, failures)] = query(
        box.warehouse, "SELECT load_id, any_value(outcome), count(*) FILTER (WHERE NOT passed) FROM "
                       "bronze.audit_results GROUP BY load_id HAVING bool_or(NOT passed)")
    assert (outcome, failures) == ("failed", 1)

    deliver_orders(box, first_customer=1)
    fixed = cli(box, "--wap", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert not staging(box).exists()
    assert snapshot(box, TABLES) == never_failed
    assert (load_id,) not in query(box.warehouse, "SELECT load_id FROM bronze._dlt_loads")
    assert not list((box.lake / "bronze" / "parquet").rglob(f"{load_id}*"))


@pytest.mark.slow
def test_a_load_held_for_inspection_is_published_by_publish(tmp_path: Path, never_failed: dict[str, Any]) -> None:
    box = sandbox(tmp_path)
    env = {"SOURCES__RETAIL_BRONZE__ON_SUCCESS": "inspect"}
    assert cli(box, "--wap").returncode == 0
    before = sinks(box)
    deliver_orders(box, first_customer=1)

    held = cli(box, "--wap", env=env)
    assert held.returncode == 3, held.stderr
    assert "is held for inspection" in held.stdout and "publish it with --publish" in held.stdout
    assert sinks(box) == before
    assert query(box.warehouse, "SELECT DISTINCT outcome FROM bronze.audit_results WHERE load_id = (SELECT "
                                "max(load_id) FROM bronze.audit_results)") == [("held",)]
    kept = staging(box) / box.warehouse.name
    assert query(kept, "SELECT count(*) FROM bronze.orders WHERE order_id >= 200000")[0][0] == 200

    published = cli(box, "--publish")
    assert published.returncode == 0, published.stderr
    assert "published the staged load" in published.stdout
    assert not staging(box).exists()
    assert snapshot(box, TABLES) == never_failed
    assert query(box.warehouse, "SELECT DISTINCT outcome FROM bronze.audit_results WHERE load_id = (SELECT "
                                "max(load_id) FROM bronze.audit_results)") == [("published",)]
    again = cli(box, "--publish")
    assert again.returncode == 2 and "nothing to publish" in again.stderr
    assert cli(box, "--wap").returncode == 0 and snapshot(box, TABLES) == never_failed


@pytest.fixture(scope="module")
def clean_wap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    box = sandbox(tmp_path_factory.mktemp("clean_wap"))
    assert cli(box, "--wap").returncode == 0
    return snapshot(box, TABLES)


WAP_KILLS = {"warehouse_loaded": "undone", "wap_audited": "undone", "wap_publishing": "completed",
             "wap_published": "completed", "lake_loaded": "completed"}
"""Crash points a write-audit-publish run passes, and what the next run does with a run killed there."""


def test_every_write_audit_publish_crash_point_is_covered() -> None:
    assert set(WAP_POINTS) <= set(WAP_KILLS)


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(WAP_KILLS))
def test_a_run_killed_between_audit_and_publish_is_completed_or_undone_by_the_next(
        tmp_path: Path, point: str, clean_wap: dict[str, Any]) -> None:
    box = sandbox(tmp_path)
    killed = cli(box, "--wap", env={"RETAIL_BRONZE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert staging(box).exists() == (point != "lake_loaded")

    after = cli(box, "--wap")
    assert after.returncode == 0, after.stderr
    assert not staging(box).exists()
    assert snapshot(box, TABLES) == clean_wap
    outcomes = query(box.warehouse, "SELECT outcome, count(DISTINCT load_id) FROM bronze.audit_results GROUP BY 1 "
                                    "ORDER BY 1")
    if WAP_KILLS[point] == "undone":
        assert "dropped the unpublished staging of a killed run" in after.stdout
        assert outcomes == ([("discarded", 1), ("published", 1)] if point == "wap_audited" else [("published", 1)])
    else:
        assert outcomes == [("published", 1)]
        if point != "lake_loaded":
            assert "that a killed run was publishing" in after.stdout


@pytest.mark.slow
def test_a_normal_run_after_a_kill_before_publishing_completes_it(tmp_path: Path, clean_wap: dict[str, Any]) -> None:
    box = sandbox(tmp_path)
    assert cli(box, "--wap", env={"RETAIL_BRONZE_CRASH_AT": "wap_publishing"}).returncode == -signal.SIGKILL
    after = cli(box)
    assert after.returncode == 0, after.stderr
    assert "that a killed run was publishing" in after.stdout
    assert snapshot(box, TABLES) == clean_wap


# Settings, held stagings and later runs (in process)

def customers_table(required: str = "customers/good_*") -> TableSpec:
    """A table whose batch passes its audit once a file matching `required` is among its loaded files."""
    return TableSpec(
        name="customers", schema=pa.schema([col("customer_id", pa.int64(), required=True),
                                            col("updated_at", UTC_TS, required=True)]),
        files="customers/*", formats=("csv",), primary_key=("customer_id",), write_disposition="merge",
        sequence_column="updated_at", audits=(Completeness(min_rows_ratio=None, required_files=(required,)),))


def deliver_customers(box: Sandbox, name: str, ids: range) -> None:
    (box.raw / "customers").mkdir(parents=True, exist_ok=True)
    (box.raw / "customers" / name).write_text(
        "customer_id,updated_at\n" + "".join(f"{i},2024-01-01T00:00:00Z\n" for i in ids))


def run(box: Sandbox, *, wap: bool = True, required: str = "customers/good_*") -> RunResult:
    return run_bronze(box.layout, tables=[customers_table(required)], pipelines_dir=str(box.pipelines_dir), wap=wap)


def publish(box: Sandbox) -> None:
    publish_staged(box.layout, tables=[customers_table()], pipelines_dir=str(box.pipelines_dir))


def test_settings_come_from_dlt_config_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WAP", "ON_SUCCESS", "ON_FAILURE"):
        monkeypatch.delenv(f"SOURCES__RETAIL_BRONZE__{key}", raising=False)
    assert wap_settings() is None
    assert wap_settings(True) == WapSettings("publish", "keep")
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__WAP", "true")
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_SUCCESS", "inspect")
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_FAILURE", "delete")
    assert wap_settings() == WapSettings("inspect", "delete")
    assert wap_settings(False) is None
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_FAILURE", "drop")
    with pytest.raises(ValueError, match="on_failure must be 'keep' or 'delete', not 'drop'"):
        wap_settings()


@pytest.mark.slow
@pytest.mark.parametrize("held", ["held", "failed"])
def test_a_later_normal_run_drops_a_kept_staging_and_never_imports_its_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: str) -> None:
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_SUCCESS", "inspect")
    box = make_sandbox(tmp_path)
    deliver_customers(box, "good_1.csv" if held == "held" else "bad_1.csv", range(1, 6))
    kept = run(box)
    assert kept.wap is not None and kept.wap.status == held and kept.wap.staging is not None
    staged_load = kept.wap.load_id

    normal = run(box, wap=False)
    assert any(f"dropped the staging of load {staged_load} held for inspection" in n for n in normal.notes)
    assert not staging(box).exists()
    assert query(box.warehouse, "SELECT count(*) FROM bronze.customers")[0][0] == 5  # loaded again, by this run
    loads = [row[0] for row in query(box.warehouse, "SELECT load_id FROM bronze._dlt_loads")]
    assert staged_load not in loads and normal.warehouse_load_id in loads
    assert not list(box.lake.rglob(f"{staged_load}*"))
    assert {row[0] for row in query(box.warehouse, "SELECT DISTINCT _dlt_load_id FROM bronze.customers")} == \
        {normal.warehouse_load_id}
    assert query(box.warehouse, "SELECT DISTINCT outcome FROM bronze.audit_results WHERE load_id = ?",
                 [staged_load]) == [("discarded" if held == "held" else "failed",)]


@pytest.mark.slow
def test_publish_refuses_without_a_held_staging_after_failed_audits_or_a_changed_warehouse(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = make_sandbox(tmp_path)
    with pytest.raises(PublishRefused, match="nothing to publish"):
        publish(box)
    deliver_customers(box, "seed_0.csv", range(1, 3))
    assert run(box, required="customers/*").wap.status == "published"  # type: ignore[union-attr]
    deliver_customers(box, "bad_1.csv", range(3, 6))
    assert run(box).wap.status == "failed"  # type: ignore[union-attr]
    with pytest.raises(PublishRefused, match="failed its audits"):
        publish(box)

    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_SUCCESS", "inspect")
    deliver_customers(box, "good_1.csv", range(6, 9))
    assert run(box).wap.status == "held"  # type: ignore[union-attr]
    with duckdb.connect(str(box.warehouse)) as con:  # a load the staging does not have, as dlt's own commands make
        con.execute("INSERT INTO bronze._dlt_loads SELECT '9999999999.0', schema_name, 0, now(), "
                    "schema_version_hash FROM bronze._dlt_loads LIMIT 1")
    with pytest.raises(PublishRefused, match=r"took other loads since load .* was staged"):
        publish(box)
    assert staging(box).exists()


@pytest.mark.slow
def test_config_toml_turns_write_audit_publish_on_without_the_flag(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "config.toml").write_text('[sources.retail_bronze]\nwap = true\non_success = "inspect"\n')
    box = make_sandbox(tmp_path)
    shutil.copytree(SAMPLE / "stores", box.raw / "stores")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOURCES__RETAIL_BRONZE__")}
    held = subprocess.run([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), *box_args(box, ["stores"])],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert held.returncode == 3, held.stderr
    assert (staging(box) / box.warehouse.name).exists()


@pytest.mark.slow
def test_load_info_the_report_and_metrics_answer_for_failed_held_and_published_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = make_sandbox(tmp_path)
    deliver_customers(box, "seed_0.csv", range(1, 3))
    first = run(box, required="customers/*")
    assert first.record is not None and first.record.wap is not None
    assert (first.record.status, first.record.exit_code, first.record.wap.outcome) == ("ok", 0, "published")
    assert first.record.warehouse_load_id == first.wap.load_id  # type: ignore[union-attr]

    deliver_customers(box, "bad_1.csv", range(3, 6))
    failed = run(box)
    record = failed.record
    assert record is not None and record.wap is not None and failed.wap is not None
    staged = failed.wap.load_id
    assert (record.status, record.exit_code, record.wap.outcome, record.wap.load_id) == ("audit_failed", 4, "failed",
                                                                                        staged)
    assert record.warehouse_load_id is None and record.sinks == {}  # nothing reached a sink
    customers = record.tables["customers"]
    assert (customers.files_new, customers.rows_read, customers.rows_valid, customers.files_unchanged) == (1, 3, 3, 1)
    assert record.wap.staged_rows["customers"] == 3
    failing = [(a.table_name, a.audit, a.expected, a.observed, a.passed) for a in record.audits if not a.passed]
    assert failing == [("customers", "completeness.required:customers/good_*", "a loaded file", "0 file(s)", False)]

    [answered] = load_info(box.layout, load_id=staged)
    assert answered.run_id == record.run_id and answered.shown_status == "audit_failed"
    assert [(a.audit, a.passed, a.outcome) for a in answered.audits] == [
        ("completeness.required:customers/good_*", False, "failed")]
    assert [r.run_id for r in load_info(box.layout, last=5)] == [first.record.run_id, record.run_id]
    text = run_cli("load-info", staged, "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    assert text.returncode == 0, text.stderr
    assert f"run {record.run_id}: audit_failed" in text.stdout and "(exit 4)" in text.stdout
    assert f"write-audit-publish: audits failed, nothing published; staged load {staged}" in text.stdout
    assert ("audits: 0 passed, 1 failed\n  failed: customers completeness.required:customers/good_*: expected a "
            "loaded file, observed 0 file(s)") in text.stdout
    as_json = run_cli("load-info", record.run_id, "--json", "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    [data] = json.loads(as_json.stdout)
    assert (data["status"], data["exit_code"], data["wap"]["outcome"], data["wap"]["load_id"]) == (
        "audit_failed", 4, "failed", staged)
    assert [(a["table_name"], a["audit"], a["expected"], a["observed"], a["passed"]) for a in data["audits"]] == failing

    page = (box.lake / "_retail_bronze" / "report" / f"{record.run_id}.html").read_text()
    assert 'data-figure="status">audit_failed<' in page
    assert ('data-figure="audit" data-table="customers" data-audit="completeness.required:customers/good_*" '
            'data-passed="false"><td>customers</td><td>completeness.required:customers/good_*</td><td>error</td>'
            '<td>a loaded file</td><td>0 file(s)</td><td>FAILED</td>') in page
    metrics = exposition(run_metrics(record, "p", {}))
    assert ('retail_bronze_audit_failed{pipeline="p",table="customers",audit="completeness.required:customers/good_*",'
            'severity="error"} 1') in metrics
    assert 'retail_bronze_run_exit_code{pipeline="p"} 4' in metrics and 'retail_bronze_run_success{pipeline="p"} 0' \
        in metrics

    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_SUCCESS", "inspect")
    deliver_customers(box, "good_1.csv", range(6, 9))
    held = run(box).record
    assert held is not None and held.wap is not None and (held.status, held.exit_code) == ("held", 3)
    publish(box)
    [later] = load_info(box.layout, load_id=held.wap.load_id)
    assert later.run_id == held.run_id and later.staged_outcome == "published"
    assert f"held for inspection: publish it with --publish; staged load {held.wap.load_id}, since published" in \
        format_record(later)
    assert [r.run_id for r in load_info(box.layout, last=3)] == [first.record.run_id, record.run_id, held.run_id]
