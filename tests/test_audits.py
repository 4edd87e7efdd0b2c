"""Audits declared as data: refused when they cannot run, and each kind passing one delivery and failing another in
real write-audit-publish runs (DuckDB warehouse, change log and Delta mirror on disk)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import Sandbox, make_sandbox, query

from retail_bronze_source.auditing import AuditResult
from retail_bronze_source.audits import (
    AUDIT_KINDS,
    AcceptedValues,
    Anomaly,
    Audit,
    Completeness,
    Freshness,
    References,
    SchemaAudit,
    ValueRange,
)
from retail_bronze_source.registry import RETAIL_TABLES, TableSpec
from retail_bronze_source.run import RunResult, run_bronze
from schemas.schemas import UTC_TS, col

CUSTOMERS = pa.schema([col("customer_id", pa.int64(), required=True), col("updated_at", UTC_TS, required=True)])
ORDERS = pa.schema([
    col("order_id", pa.int64(), required=True),
    col("customer_id", pa.int64(), required=True),
    col("currency", pa.string()),
    col("amount", pa.decimal128(12, 2)),
    col("order_ts", UTC_TS, required=True),
])


def registry(orders: tuple[Audit, ...] = (), customers: tuple[Audit, ...] = ()) -> list[TableSpec]:
    return [
        TableSpec(name="customers", schema=CUSTOMERS, files="customers/*", formats=("csv",),
                  primary_key=("customer_id",), write_disposition="merge", sequence_column="updated_at",
                  audits=customers),
        TableSpec(name="orders", schema=ORDERS, files="orders/*", formats=("csv",), primary_key=("order_id",),
                  write_disposition="append", audits=orders),
    ]


def declare(*audits: Audit) -> TableSpec:
    return registry(orders=audits)[1]


# Declarations


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        (ValueRange(column="nope", min="1"), "column 'nope' is not a column of the table"),
        (ValueRange(column="amount"), "declare min, max or both"),
        (ValueRange(column="amount", min="ten"), "bound 'ten' is not a value of column 'amount'"),
        (ValueRange(column="amount", min="1", max_failing_share=1.5), "max_failing_share must be a share"),
        (AcceptedValues(column="currency", values=()), "values must be a non-empty tuple"),
        (AcceptedValues(column="currency", values="EUR"), "values must be a non-empty tuple"),  # type: ignore[arg-type]
        (References(columns=("customer_id",), table="customers", to_columns=("a", "b")), "as many columns"),
        (References(columns=("nope",), table="customers"), "column 'nope' is not a column"),
        (Completeness(runs=3, min_runs=5), "min_runs \\(5\\) must not exceed runs \\(3\\)"),
        (Completeness(min_rows_ratio=0), "min_rows_ratio must be a positive number"),
        (Completeness(required_files="orders/*"), "required_files must be a tuple"),  # type: ignore[arg-type]
        (Anomaly(metric="mean"), "metric must be one of row_count, reject_rate"),  # type: ignore[arg-type]
        (Anomaly(metric="row_count", max_deviation=-1), "max_deviation must be a positive number"),
        (Freshness(column="currency", max_age=timedelta(days=1)), "not a timestamp or date"),
        (Freshness(column="order_ts"), "declare max_age, max_lag or both"),
        (SchemaAudit(max_rescued_share=2), "max_rescued_share must be a share"),
        (SchemaAudit(severity="fatal"), "severity must be one of error, warn"),  # type: ignore[arg-type]
        (SchemaAudit(name=" "), "a name must not be blank"),
    ],
    ids=["unknown-column", "no-bounds", "bad-bound", "share-above-one", "no-values", "values-as-text",
         "key-length", "unknown-key", "min-runs-above-runs", "zero-ratio", "patterns-as-text", "unknown-metric",
         "negative-deviation", "freshness-of-text", "freshness-without-limit", "rescued-share", "severity", "blank"],
)
def test_an_audit_that_cannot_run_is_refused_when_the_table_is_declared(audit: Audit, message: str) -> None:
    with pytest.raises(ValueError, match=f"table 'orders': audit .*{message}"):
        declare(audit)


def test_two_audits_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="audit 'range:amount' is declared twice"):
        declare(ValueRange(column="amount", min="0"), ValueRange(column="amount", max="9"))
    declare(ValueRange(column="amount", min="0"), ValueRange(name="small", column="amount", max="9"))


def test_audits_are_a_tuple_of_audits() -> None:
    with pytest.raises(ValueError, match="audits must be a tuple of audits"):
        declare(SchemaAudit()).__class__(**{**declare().__dict__, "audits": SchemaAudit()})
    with pytest.raises(ValueError, match="is not an audit"):
        declare("schema")  # type: ignore[arg-type]


def test_the_shipped_registry_uses_every_audit_kind_and_the_required_references() -> None:
    kinds = {type(a) for spec in RETAIL_TABLES for a in spec.audits}
    assert kinds == set(AUDIT_KINDS)
    references = {(spec.name, a.columns, a.table) for spec in RETAIL_TABLES for a in spec.audits
                  if isinstance(a, References)}
    assert references >= {("order_items", ("order_id",), "orders"), ("orders", ("customer_id",), "customers"),
                          ("orders", ("store_id",), "stores"), ("returns", ("order_id",), "orders"),
                          ("sensors", ("store_id",), "stores")}


# Each kind in real runs


def deliver(box: Sandbox, table: str, name: str, rows: list[dict[str, Any]]) -> None:
    folder = box.raw / table
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def orders(ids: range, *, customer: int = 1, currency: str = "EUR", amount: str = "10.00",
           ts: str = "2024-03-01T10:00:00Z", **extra: Any) -> list[dict[str, Any]]:
    return [{"order_id": i, "customer_id": customer, "currency": currency, "amount": amount, "order_ts": ts, **extra}
            for i in ids]


def customers(ids: range) -> list[dict[str, Any]]:
    return [{"customer_id": i, "updated_at": "2024-01-01T00:00:00Z"} for i in ids]


def run(box: Sandbox, specs: list[TableSpec], *, wap: bool = True, **options: Any) -> RunResult:
    return run_bronze(box.layout, tables=specs, pipelines_dir=str(box.pipelines_dir), wap=wap, **options)


def result(outcome: RunResult, audit: str) -> AuditResult:
    assert outcome.wap is not None
    [found] = [r for r in outcome.wap.results if r.audit == audit]
    return found


def published_orders(box: Sandbox) -> int:
    """Rows of the published orders table (0 before its first publication)."""
    if not query(box.warehouse, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'bronze' AND "
                                "table_name = 'orders'")[0][0]:
        return 0
    return int(query(box.warehouse, "SELECT count(*) FROM bronze.orders")[0][0])


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__ON_FAILURE", "delete")
    return make_sandbox(tmp_path)


def assert_failed_then_passed(box: Sandbox, specs: list[TableSpec], audit: str, bad: RunResult,
                              fix: Any) -> tuple[AuditResult, AuditResult]:
    """`bad` failed `audit` and published nothing; after `fix()` the next run passes it and publishes."""
    before = published_orders(box)
    assert bad.wap is not None and bad.wap.status == "failed"
    failed = result(bad, audit)
    assert not failed.passed and failed in bad.wap.failed
    assert published_orders(box) == before
    fix()
    good = run(box, specs)
    assert good.wap is not None and good.wap.status == "published", good.wap.failed
    passed = result(good, audit)
    assert passed.passed
    assert published_orders(box) > before
    return failed, passed


@pytest.mark.slow
def test_schema_fails_a_batch_that_adds_a_column_or_keeps_columns_outside_the_contract(box: Sandbox) -> None:
    specs = registry(orders=(SchemaAudit(max_rescued_share=0.0),))
    deliver(box, "orders", "o1.csv", orders(range(1, 11)))
    first = run(box, specs)
    assert [(r.audit, r.passed) for r in first.wap.results] == [  # type: ignore[union-attr]
        ("schema.columns", True), ("schema.types", True), ("schema.rescued", True)]

    deliver(box, "orders", "o2.csv", orders(range(11, 21), channel="web"))
    evolving = run(box, specs, evolve_schema=True)
    assert result(evolving, "schema.columns").observed == "added channel"
    assert evolving.schema_changes == []  # staged, never recorded in bronze.schema_history
    rescued = run(box, specs)
    failed, _ = assert_failed_then_passed(box, specs, "schema.rescued", rescued, lambda: deliver(
        box, "orders", "o2.csv", orders(range(11, 21))))
    assert failed.observed == "100.00% (10 of 10 rows)"
    allowing = registry(orders=(SchemaAudit(allow_added_columns=True),))
    deliver(box, "orders", "o3.csv", orders(range(21, 31), channel="web"))
    evolved = run(box, allowing, evolve_schema=True)
    assert evolved.wap is not None and evolved.wap.status == "published"
    assert [(c["table_name"], c["column_name"]) for c in evolved.schema_changes] == [("orders", "channel")]
    assert query(box.warehouse, "SELECT table_name, column_name FROM bronze.schema_history") == [("orders", "channel")]


@pytest.mark.slow
def test_completeness_compares_rows_and_files_with_recent_runs_and_wants_required_files(box: Sandbox) -> None:
    specs = registry(orders=(Completeness(min_rows_ratio=0.5, min_files_ratio=0.75, runs=3, min_runs=1,
                                          required_files=("orders/daily_*.csv",)),))
    deliver(box, "orders", "daily_1.csv", orders(range(1, 101)))
    deliver(box, "orders", "daily_1b.csv", orders(range(101, 201)))
    first = run(box, specs)
    assert "not judged" in result(first, "completeness.rows").observed

    deliver(box, "orders", "daily_2.csv", orders(range(201, 231)))  # 30 rows, one file: half the files, few rows
    short = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "completeness.rows", short, lambda: (
        deliver(box, "orders", "daily_2.csv", orders(range(201, 331))),
        deliver(box, "orders", "daily_2b.csv", orders(range(331, 431)))))
    assert failed.observed == "30" and failed.expected.startswith(">= 100 (0.5 x median 200 of 1 runs)")
    assert not result(short, "completeness.files").passed
    assert passed.observed == "230"

    deliver(box, "orders", "late_3.csv", orders(range(1001, 1201)))
    deliver(box, "orders", "late_3b.csv", orders(range(1201, 1401)))
    assert result(run(box, specs), "completeness.required:orders/daily_*.csv").passed  # loaded earlier: present

    missing = registry(orders=(Completeness(min_rows_ratio=None, required_files=("orders/weekly_*.csv",)),))
    deliver(box, "orders", "late_4.csv", orders(range(2001, 2101)))
    bad = run(box, missing)
    failed, _ = assert_failed_then_passed(box, missing, "completeness.required:orders/weekly_*.csv", bad, lambda: (
        deliver(box, "orders", "weekly_1.csv", orders(range(3001, 3101)))))
    assert failed.observed == "0 file(s)"


@pytest.mark.slow
def test_range_fails_a_batch_with_too_many_values_outside_the_bounds(box: Sandbox) -> None:
    specs = registry(orders=(ValueRange(column="amount", min="1", max="1000", max_failing_share=0.1),))
    deliver(box, "orders", "o1.csv", orders(range(1, 10)) + orders(range(10, 12), amount="0.50"))  # 2 of 11
    bad = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "range:amount", bad, lambda: deliver(
        box, "orders", "o1.csv", orders(range(1, 20)) + orders(range(20, 21), amount="5000.00")))  # 1 of 20
    assert failed.observed == "18.18% (2 of 11 values)"
    assert passed.observed == "5.00% (1 of 20 values)"


@pytest.mark.slow
def test_accepted_values_fails_a_batch_with_other_values_where_the_condition_holds(box: Sandbox) -> None:
    specs = registry(orders=(AcceptedValues(column="currency", values=("EUR", "USD"), where="amount > 1"),))
    deliver(box, "orders", "o1.csv", orders(range(1, 5)) + orders(range(5, 7), currency="XXX"))
    bad = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "accepted_values:currency", bad, lambda: deliver(
        box, "orders", "o1.csv", orders(range(1, 5)) + orders(range(5, 7), currency="XXX", amount="0.10")))
    assert failed.observed == "33.33% (2 of 6 values)" and failed.detail == "e.g. 'XXX'"
    assert passed.observed == "0.00% (0 of 4 values)"


@pytest.mark.slow
def test_references_fail_orphans_and_count_keys_published_or_staged_in_the_same_run(box: Sandbox) -> None:
    specs = registry(orders=(References(columns=("customer_id",), table="customers", max_orphan_share=0.2),))
    deliver(box, "customers", "c1.csv", customers(range(1, 4)))
    deliver(box, "orders", "o1.csv", orders(range(1, 5), customer=2))  # the customers arrive in the same batch
    assert result(run(box, specs), "references:customer_id->customers").observed == "0.00% (0 of 4 rows)"

    deliver(box, "orders", "o2.csv", orders(range(5, 10), customer=99))
    bad = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "references:customer_id->customers", bad, lambda: (
        deliver(box, "customers", "c2.csv", customers(range(99, 100)))))
    assert failed.observed == "100.00% (5 of 5 rows)"
    assert passed.observed == "0.00% (0 of 5 rows)"
    assert query(box.warehouse, "SELECT count(*) FROM bronze.customers")[0][0] == 4


@pytest.mark.slow
def test_anomaly_judges_row_count_and_reject_rate_against_the_history_once_it_is_long_enough(box: Sandbox) -> None:
    specs = registry(orders=(Anomaly(metric="row_count", runs=5, min_runs=3, max_deviation=3.0),
                             Anomaly(metric="reject_rate", runs=5, min_runs=3, max_deviation=3.0)))
    first = 1
    for day, size in enumerate((100, 110, 95)):
        deliver(box, "orders", f"o{day}.csv", orders(range(first, first + size)))
        outcome = run(box, specs)
        assert "not judged" in result(outcome, "anomaly:row_count").observed
        first += size
    deliver(box, "orders", "o3.csv", orders(range(first, first + 1000)))
    bad = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "anomaly:row_count", bad, lambda: deliver(
        box, "orders", "o3.csv", orders(range(first, first + 105))))
    assert failed.observed.startswith("1000 rows (") and "median 100 rows" in failed.expected
    assert passed.observed.startswith("105 rows (0.5 sd)")
    first += 105

    deliver(box, "orders", "o4.csv", orders(range(first, first + 60)) + orders(range(first + 60, first + 100),
                                                                                 amount="ten"))
    bad = run(box, specs)
    failed, passed = assert_failed_then_passed(box, specs, "anomaly:reject_rate", bad, lambda: deliver(
        box, "orders", "o4.csv", orders(range(first, first + 100))))
    assert failed.observed.startswith("40.00% (") and passed.observed.startswith("0.00% (0.0 sd)")


@pytest.mark.slow
def test_freshness_fails_a_stale_batch_against_the_run_and_the_published_newest(box: Sandbox) -> None:
    specs = registry(orders=(Freshness(column="order_ts", max_lag=timedelta(days=30)),))
    deliver(box, "orders", "o1.csv", orders(range(1, 5), ts="2024-03-10T00:00:00Z"))
    assert result(run(box, specs), "freshness:order_ts.lag").passed
    deliver(box, "orders", "o2.csv", orders(range(5, 9), ts="2024-01-01T00:00:00Z"))
    bad = run(box, specs)
    failed, _ = assert_failed_then_passed(box, specs, "freshness:order_ts.lag", bad, lambda: deliver(
        box, "orders", "o2.csv", orders(range(5, 9), ts="2024-03-01T00:00:00Z")))
    assert failed.observed == "2024-01-01T00:00:00+00:00 (69 days before it)"

    aged = registry(orders=(Freshness(column="order_ts", max_age=timedelta(days=2)),))
    deliver(box, "orders", "o3.csv", orders(range(9, 12), ts="2024-03-11T00:00:00Z"))
    bad = run(box, aged)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    assert_failed_then_passed(box, aged, "freshness:order_ts.age", bad, lambda: deliver(
        box, "orders", "o3.csv", orders(range(9, 12), ts=now)))


@pytest.mark.slow
def test_a_warning_is_recorded_and_publishes_and_an_audit_that_cannot_run_fails(box: Sandbox) -> None:
    specs = registry(orders=(ValueRange(column="amount", max="1", severity="warn"),
                             ValueRange(name="broken", column="amount", min="0", where="no_such_column > 1")))
    deliver(box, "orders", "o1.csv", orders(range(1, 5)))
    outcome = run(box, specs)
    assert outcome.wap is not None and outcome.wap.status == "failed"
    assert [r.audit for r in outcome.wap.warnings] == ["range:amount"]
    [broken] = outcome.wap.failed
    assert broken.audit == "broken" and broken.detail.startswith("the audit could not run: Binder Error")
    assert run(box, registry(orders=specs[1].audits[:1])).wap.status == "published"  # type: ignore[union-attr]
    stored = query(box.warehouse, "SELECT audit, passed, severity, outcome FROM bronze.audit_results ORDER BY "
                                  "audited_at, audit")
    assert stored == [("broken", False, "error", "failed"), ("range:amount", False, "warn", "failed"),
                      ("range:amount", False, "warn", "published")]
