"""A run's metrics reach Prometheus the two standard ways, against the real servers from Debian's packages started on
127.0.0.1: node-exporter's textfile collector and the Pushgateway, both scraped by Prometheus, whose HTTP API then
returns the run's figures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE, Sandbox, box_args, make_sandbox, query, run_cli
from services import free_port, http_get, service

from retail_bronze_source.observe import load_info
from retail_bronze_source.observe.metrics import exposition, run_metrics

TABLES = ["customers", "orders", "stores", "events"]


@pytest.fixture
def prometheus(tmp_path: Path, test_services: Any) -> Iterator[dict[str, Any]]:
    """Pushgateway, node-exporter (textfile collector only) and Prometheus scraping both every second."""
    logs = tmp_path / "services"
    logs.mkdir()
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    push_port, node_port, prom_port = free_port(), free_port(), free_port()
    config = logs / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}]},
        ]}))
    with ExitStack() as running:
        push = running.enter_context(service(test_services, "pushgateway", [
            f"--web.listen-address=127.0.0.1:{push_port}"], push_port, "/-/ready", logs))
        node = running.enter_context(service(test_services, "node_exporter", [
            f"--web.listen-address=127.0.0.1:{node_port}", "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textfiles}"], node_port, "/metrics", logs))
        prom = running.enter_context(service(test_services, "prometheus", [
            f"--config.file={config}", f"--storage.tsdb.path={logs / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port, "/-/ready", logs))
        yield {"push": push, "node": node, "prometheus": prom, "textfiles": textfiles}


def _query(url: str, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The result of an instant query. A busy machine can make Prometheus drop a connection or answer with an empty
    body: that is asked again until `timeout`; an answer that is not a success fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = json.loads(http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
        except (OSError, ValueError) as error:  # connection refused or reset, timeout, empty or cut-off body
            assert time.monotonic() < deadline, f"Prometheus did not answer {promql} in {timeout:g} s: {error}"
            time.sleep(0.5)
            continue
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])


def _value(url: str, promql: str, timeout: float = 60, expected: float | None = None) -> float:
    """The one value of an instant query, waiting until Prometheus has scraped it (and, with `expected`, until a
    scrape of the newest figures gives that value; the last value seen is returned after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _query(url, promql, timeout)
        assert len(found) <= 1, found
        if found:
            value = float(found[0]["value"][1])
            if expected is None or value == expected or time.monotonic() >= deadline:
                return value
        else:
            assert time.monotonic() < deadline, f"no sample of {promql} in {timeout:g} s"
        time.sleep(0.5)


def _raw(root: Path) -> Path:
    raw = root / "raw"
    for table in TABLES:
        shutil.copytree(SAMPLE / table, raw / table)
    return raw


@pytest.mark.slow
def test_a_runs_figures_reach_prometheus_by_textfile_and_pushgateway(tmp_path: Path, prometheus: dict[str, Any],
                                                                       test_services: Any) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    env = {"RETAIL_BRONZE__METRICS__TEXTFILE_DIR": str(prometheus["textfiles"]),
           "RETAIL_BRONZE__METRICS__PUSHGATEWAY_URL": prometheus["push"].url}
    done = run_cli(*box_args(box, TABLES), env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: metrics" not in done.stdout
    [record] = load_info(box.layout)
    [prom_file] = list(prometheus["textfiles"].glob("*.prom"))
    assert prom_file.name == f"{record.pipelines['warehouse']}.prom"
    lint = subprocess.run([str(test_services.programs["prometheus"].with_name("promtool")), "check", "metrics"],
                          input=prom_file.read_text(), capture_output=True, text=True, env=test_services.env)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    url = prometheus["prometheus"].url
    manifest = {table: (read, valid, rejected) for table, read, valid, rejected in query(
        box.warehouse, "SELECT table_name, sum(row_count), sum(valid_count), sum(reject_count) FROM "
        "bronze.manifest_processed_files WHERE load_id = ? GROUP BY ALL", [record.warehouse_load_id])}
    for job in ("node", "retail_bronze"):
        for table, (read, valid, rejected) in manifest.items():
            assert _value(url, f'retail_bronze_rows_read{{job="{job}",table="{table}"}}') == read
            assert _value(url, f'retail_bronze_rows_valid{{job="{job}",table="{table}"}}') == valid
            assert _value(url, f'retail_bronze_rows_rejected{{job="{job}",table="{table}"}}') == rejected
        for table, reason, n in query(box.warehouse, "SELECT table_name, reason_code, count(*) FROM bronze.rejects "
                                      "WHERE load_id = ? GROUP BY ALL", [record.warehouse_load_id]):
            assert _value(url, f'retail_bronze_reject_records{{job="{job}",table="{table}",reason="{reason}"}}') == n
        assert _value(url, f'retail_bronze_files{{job="{job}",table="stores",status="rejected"}}') == 1
        assert _value(url, f'retail_bronze_run_success{{job="{job}"}}') == 1
        assert _value(url, f'retail_bronze_step_duration_seconds{{job="{job}",step="extract"}}') == \
            pytest.approx(record.steps["extract"])
        assert _value(url, f'retail_bronze_sink_rows{{job="{job}",table="orders",sink="duckdb"}}') == \
            record.sinks["orders"].duckdb_rows
        finished = _value(url, f'retail_bronze_table_last_success_timestamp_seconds{{job="{job}",table="orders"}}')
        assert abs(finished - time.time()) < 600
        assert _value(url, f'retail_bronze_bytes_read{{job="{job}",table="orders"}}') == \
            record.tables["orders"].bytes_read
    assert _value(url, 'node_textfile_scrape_error{job="node"}') == 0

    again = run_cli(*box_args(box, TABLES), env=env)
    assert again.returncode == 0, again.stderr
    [noop] = load_info(box.layout)
    unchanged = noop.tables["orders"].files_unchanged
    assert unchanged > 0
    for job in ("retail_bronze", "node"):
        assert _value(url, f'retail_bronze_files{{job="{job}",table="orders",status="unchanged"}}',
                      expected=unchanged) == unchanged
        assert _value(url, f'retail_bronze_rows_read{{job="{job}",table="orders"}}', expected=0) == 0
    assert _value(url, 'retail_bronze_table_last_success_timestamp_seconds{job="node",table="orders"}') >= finished


@pytest.mark.slow
def test_audit_failures_and_a_refused_push_are_reported(tmp_path: Path, prometheus: dict[str, Any]) -> None:
    box: Sandbox = make_sandbox(tmp_path, raw=_raw(tmp_path))
    env = {"RETAIL_BRONZE__METRICS__TEXTFILE_DIR": str(prometheus["textfiles"]),
           "RETAIL_BRONZE__METRICS__PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}",
           "RETAIL_BRONZE__METRICS__PUSH_TIMEOUT": "2"}
    done = run_cli(*box_args(box, TABLES), env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: metrics: the push to http://127.0.0.1:" in done.stdout
    [record] = load_info(box.layout)
    assert any(w.startswith("metrics: the push") for w in record.warnings)
    text = exposition(run_metrics(record, "p", {}))
    assert 'retail_bronze_audits{' not in text and "retail_bronze_run_success{pipeline=\"p\"} 1" in text
    import duckdb
    with duckdb.connect(str(box.warehouse)) as con:
        con.execute("CREATE TABLE bronze.audit_results (run_id VARCHAR, table_name VARCHAR, audit VARCHAR, "
                    "expected VARCHAR, observed VARCHAR, passed BOOLEAN)")
        con.execute("INSERT INTO bronze.audit_results VALUES (?, 'orders', 'completeness', '>= 2000', '12', false)",
                    [record.run_id])
    [audited] = load_info(box.layout)
    text = exposition(run_metrics(audited, "p", {}))
    assert 'retail_bronze_audit_failures{pipeline="p",table="orders"} 1' in text
    assert 'retail_bronze_run_success{pipeline="p"} 0' in text
    assert _value(prometheus["prometheus"].url, 'retail_bronze_run_success{job="node"}') == 1


DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "retail_bronze.json"


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_grafana_dashboard_uses_only_metrics_a_run_exposes() -> None:
    from retail_bronze_source.observe.record import RunRecord

    emitted = {family.name for family in run_metrics(RunRecord("r", True, "ok"), "p", {})}
    variables = [v.get("definition", "") for v in json.loads(DASHBOARD.read_text())["templating"]["list"]]
    used = {name for expr in [*(e for _, e in _dashboard_queries()), *variables]
            for name in re.findall(r"\bretail_bronze_\w+", expr)}
    assert used and used <= emitted, used - emitted
    assert emitted - used <= {"retail_bronze_run_finished_timestamp_seconds"}, emitted - used


@pytest.mark.slow
def test_every_dashboard_query_answers_in_prometheus(tmp_path: Path, prometheus: dict[str, Any]) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    done = run_cli(*box_args(box, TABLES), env={"RETAIL_BRONZE__METRICS__TEXTFILE_DIR": str(prometheus["textfiles"])})
    assert done.returncode == 0, done.stderr
    url = prometheus["prometheus"].url
    _value(url, 'retail_bronze_run_success{job="node"}')
    for title, expr in _dashboard_queries():
        found = _query(url, expr.replace("$pipeline", ".*"))
        assert found or title in ("Audits of the last run", "Failed audits by table and audit (last run)"), \
            (title, expr)
