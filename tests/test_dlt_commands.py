"""dlt's own commands on the pipelines of a run (`drop`, `drop --drop-all`, `abort-packages`, `sync`, `schema`,
refresh modes) and the reload of a table: the next run works, and the warehouse and Delta equal a clean run (the
change log, a log, keeps the earlier loads and records the reload)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SAMPLE, Sandbox, box_args, make_sandbox, query, run_cli, snapshot

TABLES = ["customers", "orders", "events"]
Snapshot = dict[str, dict[str, list[tuple[Any, ...]]]]


def _box(root: Path) -> Sandbox:
    raw = root / "raw"
    for table in TABLES:
        shutil.copytree(SAMPLE / table, raw / table)
    return make_sandbox(root, raw=raw)


def _run(box: Sandbox, *extra: str, env: dict[str, str] | None = None) -> str:
    done = run_cli(*box_args(box, TABLES), *extra, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pipeline_name(stdout: str) -> str:
    words = next(line for line in stdout.splitlines() if line.startswith("inspect:")).split()
    return words[words.index("--pipelines-dir") + 2]


def _dlt(box: Sandbox, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("dlt")), "-y", "pipeline", "--pipelines-dir",
                           str(box.pipelines_dir), name, *command], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    box = _box(tmp_path_factory.mktemp("clean"))
    _run(box)
    return snapshot(box, TABLES)


def _assert_converged(box: Sandbox, clean: Snapshot) -> None:
    now = snapshot(box, TABLES)
    for name, sinks in clean.items():
        assert now[name]["duckdb"] == sinks["duckdb"], name
        assert now[name]["delta"] == sinks["delta"], name
        assert set(sinks["parquet"]) <= set(now[name]["parquet"]), name


@pytest.mark.slow
@pytest.mark.parametrize("command", [["drop", "orders"], ["drop", "events"], ["drop", "--drop-all"]],
                         ids=" ".join)
def test_dlt_drop_then_a_run_reloads_in_every_sink(tmp_path: Path, command: list[str], clean: Snapshot) -> None:
    box = _box(tmp_path)
    name = _pipeline_name(_run(box))
    dropped = _dlt(box, name, *command)
    assert dropped.returncode == 0, dropped.stderr
    if command == ["drop", "events"]:  # the shared tables belong to no data table's resource
        assert "rejects" not in dropped.stdout and "manifest_processed_files" not in dropped.stdout
    _run(box)
    _assert_converged(box, clean)
    assert "nothing new: " in _run(box)
    resets = query(box.warehouse, "SELECT DISTINCT table_name FROM bronze.table_resets")
    assert {r[0] for r in resets} == ({"orders"} if command == ["drop", "orders"] else {"events"} if
                                      command == ["drop", "events"] else set(TABLES))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--reload", "refresh"])
def test_reloading_a_table_replaces_it_in_every_sink(tmp_path: Path, how: str, clean: Snapshot) -> None:
    box = _box(tmp_path)
    _run(box)
    if how == "--reload":
        out = _run(box, "--reload", "events")
    else:
        out = _run(box, env={"REFRESH": "drop_resources"})
        assert "refresh=drop_resources is configured" in out
    read = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.split()[:1] in (
        ["customers"], ["orders"], ["events"])}
    assert read == ({"customers": 0, "orders": 0, "events": 3} if how == "--reload" else
                    {"customers": 3, "orders": 9, "events": 3})
    _assert_converged(box, clean)
    assert "nothing new: " in _run(box)


@pytest.mark.slow
def test_abort_packages_after_a_kill_then_a_run_equals_a_clean_run(tmp_path: Path, clean: Snapshot) -> None:
    from test_crash_recovery import KILL_AROUND_JOB_COMMIT

    box = _box(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILL_AROUND_JOB_COMMIT, "events", "before_marker",
                             *box_args(box, TABLES)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert query(box.warehouse, "SELECT count(*) FROM bronze.events")[0][0] > 0  # rows of a load never completed
    name = next(p.name for p in box.pipelines_dir.iterdir() if p.is_dir() and "lake" not in p.name)
    aborted = _dlt(box, name, "abort-packages")
    assert aborted.returncode == 0, aborted.stderr
    out = _run(box)
    assert "removed" in out and "interrupted load" in out
    assert snapshot(box, TABLES) == clean


@pytest.mark.slow
def test_sync_and_schema_leave_the_next_run_a_no_op(tmp_path: Path, clean: Snapshot) -> None:
    box = _box(tmp_path)
    name = _pipeline_name(_run(box))
    schema = _dlt(box, name, "schema")
    assert schema.returncode == 0, schema.stderr
    orders = schema.stdout[schema.stdout.index("  orders:"):]
    assert "write_disposition: merge" in orders[:orders.index("\n  ", 10)] or "write_disposition: merge" in orders
    shutil.rmtree(box.pipelines_dir / name)  # what `dlt pipeline sync` would do, without its need of credentials
    assert "nothing new: " in _run(box)
    assert snapshot(box, TABLES) == clean
