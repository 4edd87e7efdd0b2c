"""The benchmark's quick smoke run: every section is reported with rows and ratios (no timing assertions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "bench" / "run_benchmark.py"
SECTIONS = ("== Machine", "== Orders CSV head to head", "== Orders CSV at --dlt-scale", "== Per-format throughput",
            "== Scaling, an update of the big load, and dirty input", "== Ratios")
FORMAT_TABLES = ("products", "order_items", "exchange_rates", "events", "returns", "sensors")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One `--quick --repeat 2` run into its own work dir: the printed report and report.json."""
    work = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--repeat", "2", "--work", str(work)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads((work / "report.json").read_text())


def _ok(report: dict[str, Any], section: str, contender: str, table: str = "orders", round_: int = 0) -> dict[str, Any]:
    found = [m for m in report["measurements"]
             if (m["section"], m["contender"], m["table"], m["round"]) == (section, contender, table, round_)]
    assert len(found) == 1, f"{section}/{contender}/{table}: {found}"
    assert found[0]["status"] == "ok", found[0]
    return found[0]


@pytest.mark.slow
def test_report_prints_every_section(quick: tuple[str, dict[str, Any]]) -> None:
    text, _ = quick
    positions = [text.find(title) for title in SECTIONS]
    assert all(p >= 0 for p in positions), [t for t, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert re.search(r"nproc=\d+ +ram_gb=[\d.]+ +python=3\.", text)
    assert "duckdb=1.5" in text and "dlt=1.31" in text and "pyarrow=" in text


@pytest.mark.slow
def test_orders_head_to_head_loads_the_same_rows(quick: tuple[str, dict[str, Any]]) -> None:
    _, report = quick
    duck, pkg = _ok(report, "orders", "duckdb"), _ok(report, "orders", "package")
    assert duck["rows"] == pkg["rows"] > 1000
    assert pkg["extra"]["rejected"] == 0 and pkg["extra"]["failed_jobs"] == 0
    for m in (duck, pkg):
        assert m["wall_s"] > 0 and m["rows_per_s"] > 0 and m["peak_rss_mb"] > 10
    dlt = _ok(report, "orders small", "dlt_read_csv_duckdb")
    assert dlt["rows"] == pkg["rows"]


@pytest.mark.slow
def test_every_format_is_measured_or_marked_unavailable(quick: tuple[str, dict[str, Any]]) -> None:
    text, report = quick
    for table in FORMAT_TABLES:
        pkg = _ok(report, "formats", "package", table)
        assert pkg["rows"] > 0 and pkg["rows_per_s"] > 0
    for table in ("products", "order_items", "events", "sensors"):
        assert _ok(report, "formats", "duckdb", table)["rows"] == _ok(report, "formats", "package", table)["rows"]
    native = {m["table"]: m for m in report["measurements"] if m["section"] == "formats" and m["contender"] == "duckdb"}
    assert native["exchange_rates"]["status"] == "n/a"
    assert native["returns"]["status"] == "ok" or native["returns"]["note"] == "n/a (no offline extension)"
    assert "n/a (DuckDB has no reader for this format)" in text


@pytest.mark.slow
def test_ratios_are_printed_with_values(quick: tuple[str, dict[str, Any]]) -> None:
    text, report = quick
    ratios = report["ratios"]
    for key in ("package_vs_duckdb_wall", "dlt_vs_package_rows_per_s", "dirty_extra_time"):
        assert isinstance(ratios[key]["value"], float), ratios[key]
    assert ratios["package_vs_duckdb_wall"]["value"] > 0
    assert re.search(r"\(2\)/\(1\) wall time, orders CSV, scale 2 +[\d.]+x  \(median of 2 rounds: ", text)
    assert re.search(r"dirty \(5% bad rows\) vs clean: extra wall time +[+-][\d.]+ %  \(median of 2 rounds", text)
    dirty = _ok(report, "dirty", "package")
    assert dirty["extra"]["rejected"] > 0 and dirty["rows"] >= _ok(report, "orders", "package")["rows"]
    assert "scaling skipped (pass --scaling" in text


@pytest.mark.slow
def test_scaling_run_is_kept_for_a_one_percent_update(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--scaling", "--no-formats", "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    big, update = _ok(report, "scaling", "package"), _ok(report, "update", "package")
    assert big["extra"]["files"] == 8 and update["extra"]["files"] == 1
    assert 0 < update["rows"] < big["rows"] / 50
    assert update["extra"]["valid"] == update["extra"]["delta_rows"] == update["rows"]
    assert report["ratios"]["update_peak_rss"]["value"] > 0
    assert not list((tmp_path / "raw").glob("*/orders/orders_zz_update.csv"))
    assert not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]


@pytest.mark.slow
def test_repeated_rounds_are_interleaved_and_each_ratio_is_their_median(quick: tuple[str, dict[str, Any]]) -> None:
    _, report = quick
    runs = {r: [_ok(report, section, contender, round_=r) for section, contender in
                (("orders", "duckdb"), ("orders", "package"), ("dirty", "package"))] for r in (0, 1)}
    order = [(m["section"], m["contender"], m["round"]) for m in report["measurements"] if m["round"] in (0, 1)
             and m["section"] in ("orders", "dirty")]
    assert order == [(m["section"], m["contender"], r) for r in (0, 1) for m in runs[r]]
    ratio = report["ratios"]["package_vs_duckdb_wall"]
    assert ratio["rounds"] == pytest.approx([runs[r][1]["wall_s"] / runs[r][0]["wall_s"] for r in (0, 1)])
    assert ratio["value"] == pytest.approx(sum(ratio["rounds"]) / 2)
    dirty = report["ratios"]["dirty_extra_time"]
    assert dirty["rounds"] == pytest.approx([(runs[r][2]["wall_s"] / runs[r][1]["wall_s"] - 1) * 100 for r in (0, 1)])


@pytest.mark.slow
def test_baseline_checkout_runs_beside_the_package_in_every_round(tmp_path: Path) -> None:
    """`--baseline` runs another checkout's package (here a copy of this one's code) in each head-to-head round and
    reports both ratios; a directory that is no checkout is refused before anything runs."""
    import shutil

    baseline = tmp_path / "baseline"
    for part in ("bench", "retail_bronze_source", "schemas", "scripts", ".dlt"):
        shutil.copytree(REPO / part, baseline / part, ignore=shutil.ignore_patterns("__pycache__", "out", "*.toml.bak"))
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--repeat", "2", "--no-formats", "--baseline",
                           str(baseline), "--work", str(work)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    for round_ in (0, 1):
        pkg, base = _ok(report, "orders", "package", round_=round_), _ok(report, "orders", "baseline", round_=round_)
        assert base["rows"] == pkg["rows"] > 1000 and base["extra"]["valid"] == pkg["extra"]["valid"]
        assert (work / "runs" / "orders-baseline-orders-2.log").exists()
    ratios = report["ratios"]
    assert len(ratios["baseline_vs_duckdb_wall"]["rounds"]) == 2
    assert len(ratios["package_vs_baseline_wall"]["rounds"]) == 2
    assert "(2b) the --baseline checkout" in done.stdout and "(2)/(2b) wall time" in done.stdout

    refused = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--baseline", str(tmp_path / "nothing"),
                              "--work", str(work)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2 and "not a checkout of this project" in refused.stderr
