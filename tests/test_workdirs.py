"""Staging directories: removed by the run that made them, and by the next run when a kill left them behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, make_sandbox, warehouse_table

from retail_bronze_source import workdirs
from retail_bronze_source.workdirs import remove_stale, staging_dir, staging_root

HOLDER = """
import sys
from retail_bronze_source.workdirs import staging_dir
with staging_dir("other_target") as path:
    (path / "rows.arrow").write_bytes(b"staged")
    print(path, flush=True)
    sys.stdin.read()
"""
"""Another run, alive: it holds a staging directory until its stdin closes."""


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of the test's own, for this process and the processes it starts."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    return root


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                             check=True)
    return int(process.stdout)


def test_staging_of_dead_processes_is_removed_and_staging_of_live_ones_is_kept(tmp_root: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        root = staging_root()
        assert root is not None and live.parent == root
        start = workdirs._start_time(holder.pid)
        assert start is not None
        killed = root / f"{_dead_pid()}-12345.orders.abc"
        reused = root / f"{holder.pid}-{start + 1}.orders.def"  # the holder's pid, another process's start time
        foreign = root / "notes"
        for folder in (killed, reused, foreign):
            (folder / "duckdb").mkdir(parents=True)
            (folder / "duckdb" / "spill.tmp").write_bytes(b"x")
        with staging_dir("mine") as mine:
            assert mine.parent == root
            assert not killed.exists() and not reused.exists()
            assert (live / "rows.arrow").read_bytes() == b"staged" and foreign.exists()
            assert remove_stale(root) == []  # this process's own staging and the holder's stay
            assert mine.exists()
        assert not mine.exists()
    finally:
        holder.communicate("", timeout=60)
    assert not live.exists()


def test_a_staging_root_others_could_prepare_is_not_used(tmp_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / f"{_dead_pid()}-1.orders.abc").mkdir(parents=True)
    os.symlink(elsewhere, tmp_root / f"retail_bronze-{os.getuid()}")
    assert staging_root() is None
    with staging_dir("orders") as path:
        assert path.parent == tmp_root and path.name.startswith("retail_bronze_orders_")
    assert len(list(elsewhere.iterdir())) == 1  # nothing removed through the link


@pytest.mark.slow
def test_a_run_killed_while_staging_is_cleaned_up_by_the_next_run(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    (box.raw / "customers").mkdir()
    for name in ("customers_1.csv", "customers_2.csv"):
        (box.raw / "customers" / name).write_bytes((REPO / "data_raw" / "customers" / name).read_bytes())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(box.raw), "--lake",
               str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
               "--tables", "customers"]
    env = {**os.environ, "TMPDIR": str(tmp)}
    killed = subprocess.run(command, cwd=REPO, env={**env, "RETAIL_BRONZE_CRASH_AT": "file_staged"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p for p in tmp.rglob("*") if p.is_file()]
    assert [p for p in left if p.suffix == ".arrow"], "the killed run staged rows"
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p for p in tmp.rglob("*") if p.is_file()] == []
    assert [p.name for p in tmp.iterdir()] == [f"retail_bronze-{os.getuid()}"]
    assert warehouse_table(box.warehouse, "customers").num_rows > 0
