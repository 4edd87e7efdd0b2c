"""Faults on the way to the bucket (a fault-injecting proxy on loopback in front of a real S3 server): transient ones
are retried and the run completes; persistent ones end the run with one line naming the bucket and what failed; a
write applied by the server whose answer was lost is never applied twice; the next run converges."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_sandbox
from faults import FaultProxy
from s3_server import S3Server
from test_s3_lake import LAKE_SECTION, RAW_SECTION, _run, _s3_lake_snapshot, _upload, local_snapshot

TABLES = ["customers", "events", "returns"]
Snapshot = dict[str, dict[str, list[tuple[Any, ...]]]]
CHANGE_LOG_PUT = r"/lake/bronze/parquet/(customers|events|returns)/\d"
DELTA_COMMIT = r"/lake/bronze/delta/[a-z_]+/_delta_log/\d+\.json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_clean(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return local_snapshot(tmp_path_factory.mktemp("local"), TABLES)


def _env(server: S3Server, endpoint: str) -> dict[str, str]:
    return {**server.dlt_env(RAW_SECTION, endpoint_url=endpoint), **server.dlt_env(LAKE_SECTION, endpoint_url=endpoint)}


TRANSIENT = {
    "503 on a change log upload": ("error", "PUT", CHANGE_LOG_PUT, 1),
    "500 on the second Delta commit": ("error", "PUT", DELTA_COMMIT, 2),
    "reset while the mirror reads the change log": ("reset", "GET", r"/lake/bronze/parquet/[a-z_]+/\d", 1),
    "lost answer of a change log upload": ("drop_response", "PUT", CHANGE_LOG_PUT, 1),
    "slow answer on a rejects CSV": ("delay", "PUT", r"/lake/_rejects/", 1),
    "503 reading a raw file": ("error", "GET", r"/drops/customers/", 1),
    "reset reading the upstream Delta log": ("reset", "GET", r"/drops/returns/_delta_log/", 1),
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_a_transient_fault_is_retried_and_the_run_completes(s3_server: S3Server, s3_bucket: str, tmp_path: Path,
                                                            local_clean: Snapshot, fault: str) -> None:
    action, method, path, nth = TRANSIENT[fault]
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        injected = proxy.inject(action, method=method, path=path, nth=nth, status=500 if "500" in fault else 503,
                                seconds=2.0)
        done = _run(box, raw, lake, _env(s3_server, proxy.url), tables=TABLES)
    assert injected.fired == 1, fault
    assert done.returncode == 0, done.stderr
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean


PERSISTENT = {
    "every Delta commit refused": (DELTA_COMMIT, "Delta table", "could not be written"),
    "every change log upload refused": (CHANGE_LOG_PUT, "importing into the change log on", "failed"),
}


@pytest.mark.parametrize("fault", list(PERSISTENT))
def test_a_persistent_fault_ends_the_run_in_one_line_and_the_next_run_converges(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path, local_clean: Snapshot, fault: str) -> None:
    path, what, outcome = PERSISTENT[fault]
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.inject("error", method="PUT", path=path, times=None)
        started = time.monotonic()
        failed = _run(box, raw, lake, _env(s3_server, proxy.url), tables=TABLES)
        took = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(what in line and outcome in line and f"s3://{s3_bucket}/lake" in line for line in errors)
    assert all("503" in line or "SlowDown" in line for line in errors), errors
    assert took < 240, took
    done = _run(box, raw, lake, _env(s3_server, s3_server.endpoint_url), tables=TABLES)
    assert done.returncode == 0, done.stderr
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean


def test_a_delta_commit_whose_answer_was_lost_is_not_applied_twice(s3_server: S3Server, s3_bucket: str,
                                                                   tmp_path: Path, local_clean: Snapshot) -> None:
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        lost = proxy.inject("drop_response", method="PUT", path=DELTA_COMMIT, nth=2)
        first = _run(box, raw, lake, _env(s3_server, proxy.url), tables=TABLES)
    assert lost.fired == 1
    done = _run(box, raw, lake, _env(s3_server, s3_server.endpoint_url), tables=TABLES)
    assert done.returncode == 0, (first.stderr, done.stderr)
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean
