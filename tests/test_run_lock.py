"""Two runs against one warehouse and lake never interleave: real processes, real locks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE

from retail_bronze_source.run_lock import RunLocked, run_lock

HOLD = (
    "import sys, time; from pathlib import Path; from retail_bronze_source.run_lock import run_lock\n"
    "with run_lock(Path(sys.argv[1]), 5):\n"
    "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n"
)


def _holder(lock: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(SAMPLE),
         "--lake", str(tmp_path / "lake"), "--warehouse", str(tmp_path / "w.duckdb"),
         "--pipelines-dir", str(tmp_path / "p"), "--tables", "stores", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_second_run_gives_up_after_the_timeout_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "w.duckdb.lock", 30)
    try:
        started = time.monotonic()
        done = _cli(tmp_path, "--lock-timeout", "1")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "w.duckdb.lock" in lines[0]
    assert waited >= 1
    assert not (tmp_path / "w.duckdb").exists()


def test_second_run_waits_for_the_first_and_then_loads(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "lake" / ".retail_bronze.lock", 2)
    try:
        done = _cli(tmp_path, "--lock-timeout", "60")
    finally:
        holder.wait()
    assert done.returncode == 0, done.stderr
    assert "stores" in done.stdout


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "x.lock", 60)
    holder.kill()
    holder.wait()
    with run_lock(tmp_path / "x.lock", 1), pytest.raises(RunLocked, match="another run holds"), \
            run_lock(tmp_path / "x.lock", 0):
        pytest.fail("a second holder got the lock")
