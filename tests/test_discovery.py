"""File discovery: the raw root is a boundary, and files that cannot be read safely are file-level rejects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import REPO, changelog_table, delta_table, make_sandbox, query, warehouse_table
from deltalake import write_deltalake

from retail_bronze_source import reasons
from retail_bronze_source.discovery import discover_files
from retail_bronze_source.extract import TableExtractor
from retail_bronze_source.raw import FileRejected
from retail_bronze_source.registry import TableSpec
from schemas.schemas import col

SPEC = TableSpec(
    name="things", schema=pa.schema([col("id", pa.int64(), required=True), col("value", pa.string())]),
    files="things/*", formats=("csv",), primary_key=(), write_disposition="append", sequence_column=None,
)
SECRET = "hunter2-do-not-leak"
"""A value that only files outside the raw root hold: it must appear in no output."""


def _things(raw: Path) -> Path:
    folder = raw / "things"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.csv").write_text("id,value\n1,a\n2,b\n")
    return folder


def _outside(tmp_path: Path) -> Path:
    """A folder beside the raw root holding a CSV that would load if it were read."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secrets.csv").write_text(f"id,value\n7,{SECRET}\n")
    return folder


def _refused(spec: TableSpec, raw: Path) -> dict[str, tuple[str, str] | None]:
    return {f.rel_path: f.refused for f in discover_files(spec, str(raw))}


def _extract(spec: TableSpec, raw: Path) -> dict[str, list[dict[str, Any]]]:
    """Run the extractor in a daemon thread: a regression that opens a FIFO blocks forever, and fails here."""
    out: dict[str, list[dict[str, Any]]] = {"rows": [], "rejects": [], "manifest": []}
    errors: list[BaseException] = []

    def extract() -> None:
        try:
            extractor = TableExtractor(spec, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=100, ledger={})
            for kind, table in extractor.run(discover_files(spec, str(raw))):
                out[kind].extend(table.to_pylist())
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    worker = threading.Thread(target=extract, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "extraction hangs"
    if errors:
        raise errors[0]
    return out


def test_links_leading_outside_the_raw_root_are_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = _things(raw)
    outside = _outside(tmp_path)
    os.symlink(outside / "secrets.csv", folder / "linked.csv")
    os.symlink(outside, folder / "linked_dir")
    os.symlink("../../outside/secrets.csv", folder / "relative.csv")
    os.symlink(outside, raw / "elsewhere")
    refused = _refused(SPEC, raw)
    assert refused.pop("things/good.csv") is None
    assert set(refused) == {"things/linked.csv", "things/relative.csv", "things/linked_dir"}
    assert {code for code, _ in filter(None, refused.values())} == {reasons.OUTSIDE_RAW_ROOT}
    assert refused["things/linked_dir"] == (reasons.OUTSIDE_RAW_ROOT, (
        "things/linked_dir is a symbolic link, or lies under one, leading outside the raw root; it is not read (a "
        "table reads such files only when declared with allow_outside_raw_root=True)"))
    linked_folder = replace(SPEC, files="elsewhere/*.csv")
    assert _refused(linked_folder, raw) == {"elsewhere/secrets.csv": (reasons.OUTSIDE_RAW_ROOT, (
        "elsewhere/secrets.csv is a symbolic link, or lies under one, leading outside the raw root; it is not read "
        "(a table reads such files only when declared with allow_outside_raw_root=True)"))}
    out = _extract(SPEC, raw)
    assert sorted(r["value"] for r in out["rows"]) == ["a", "b"]
    assert sorted((r["src_filename"], r["reason_code"]) for r in out["rejects"]) == [
        ("things/linked.csv", reasons.OUTSIDE_RAW_ROOT), ("things/linked_dir", reasons.OUTSIDE_RAW_ROOT),
        ("things/relative.csv", reasons.OUTSIDE_RAW_ROOT)]
    assert SECRET not in repr(out)
    out = _extract(linked_folder, raw)
    assert out["rows"] == [] and [r["reason_code"] for r in out["rejects"]] == [reasons.OUTSIDE_RAW_ROOT]
    assert SECRET not in repr(out)


def test_refused_files_are_never_opened(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    os.symlink(_outside(tmp_path) / "secrets.csv", _things(raw) / "linked.csv")
    [file] = [f for f in discover_files(SPEC, str(raw)) if f.rel_path == "things/linked.csv"]
    with pytest.raises(FileRejected) as info:
        file.open()
    assert info.value.reason_code == reasons.OUTSIDE_RAW_ROOT


def test_links_inside_the_raw_root_and_a_linked_raw_root_are_read(tmp_path: Path) -> None:
    real = tmp_path / "real_raw"
    folder = _things(real)
    (real / "archive").mkdir()
    (real / "archive" / "old.csv").write_text("id,value\n3,c\n")
    os.symlink(real / "archive" / "old.csv", folder / "old.csv")
    os.symlink(real / "archive", folder / "archive_dir")
    os.symlink(real, tmp_path / "raw")
    refused = _refused(SPEC, tmp_path / "raw")
    assert refused == {"things/good.csv": None, "things/old.csv": None}
    assert sorted(r["value"] for r in _extract(SPEC, tmp_path / "raw")["rows"]) == ["a", "b", "c"]


def test_a_table_may_allow_links_leading_outside_explicitly(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    os.symlink(_outside(tmp_path) / "secrets.csv", _things(raw) / "linked.csv")
    allowed = replace(SPEC, allow_outside_raw_root=True)
    assert _refused(allowed, raw) == {"things/good.csv": None, "things/linked.csv": None}
    assert sorted(r["value"] for r in _extract(allowed, raw)["rows"]) == ["a", "b", SECRET]


@contextmanager
def _listening_socket(path: Path) -> Iterator[None]:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        yield
    finally:
        server.close()


def test_fifos_and_sockets_are_refused_without_opening(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = _things(raw)
    os.mkfifo(folder / "pipe.csv")
    os.symlink(folder / "pipe.csv", folder / "to_pipe.csv")
    with _listening_socket(folder / "sock.csv"):
        assert _refused(SPEC, raw) == {
            "things/good.csv": None,
            "things/pipe.csv": (reasons.UNSUPPORTED_FILE,
                                "things/pipe.csv is a FIFO (named pipe), not a regular file; it is not opened"),
            "things/sock.csv": (reasons.UNSUPPORTED_FILE,
                                "things/sock.csv is a socket, not a regular file; it is not opened"),
            "things/to_pipe.csv": (reasons.UNSUPPORTED_FILE,
                                   "things/to_pipe.csv is a FIFO (named pipe), not a regular file; it is not opened"),
        }
        out = _extract(SPEC, raw)
    assert sorted(r["value"] for r in out["rows"]) == ["a", "b"]
    rejects = {r["src_filename"]: r["reason_code"] for r in out["rejects"]}
    assert rejects == {"things/pipe.csv": reasons.UNSUPPORTED_FILE, "things/sock.csv": reasons.UNSUPPORTED_FILE,
                       "things/to_pipe.csv": reasons.UNSUPPORTED_FILE}
    manifest = {r["src_path"]: r for r in out["manifest"]}
    assert {p: (r["status"], r["row_count"]) for p, r in manifest.items() if p != "things/good.csv"} == {
        p: ("file_rejected", 0) for p in rejects}


def test_a_link_to_a_device_is_refused_where_links_may_lead_outside(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    os.symlink("/dev/zero", _things(raw) / "zero.csv")
    allowed = replace(SPEC, allow_outside_raw_root=True)
    assert _refused(allowed, raw)["things/zero.csv"] == (
        reasons.UNSUPPORTED_FILE, "things/zero.csv is a character device, not a regular file; it is not opened")
    out = _extract(allowed, raw)
    assert [r["reason_code"] for r in out["rejects"]] == [reasons.UNSUPPORTED_FILE] and len(out["rows"]) == 2


@pytest.mark.parametrize("swap", ["link out", "fifo"])
def test_a_file_replaced_after_discovery_is_checked_again_when_opened(tmp_path: Path, swap: str) -> None:
    raw = tmp_path / "raw"
    folder = _things(raw)
    (folder / "later.csv").write_text("id,value\n5,e\n")
    outside = _outside(tmp_path)
    files = discover_files(SPEC, str(raw))
    assert [f.refused for f in files] == [None, None]
    (folder / "later.csv").unlink()
    if swap == "link out":
        os.symlink(outside / "secrets.csv", folder / "later.csv")
    else:
        os.mkfifo(folder / "later.csv")
    out: dict[str, list[dict[str, Any]]] = {"rows": [], "rejects": [], "manifest": []}

    def extract() -> None:
        extractor = TableExtractor(SPEC, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=100, ledger={})
        for kind, table in extractor.run(files):
            out[kind].extend(table.to_pylist())

    worker = threading.Thread(target=extract, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "extraction hangs"
    assert sorted(r["value"] for r in out["rows"]) == ["a", "b"]
    code = reasons.OUTSIDE_RAW_ROOT if swap == "link out" else reasons.UNSUPPORTED_FILE
    assert [(r["src_filename"], r["reason_code"]) for r in out["rejects"]] == [("things/later.csv", code)]
    assert SECRET not in repr(out)


def test_dangling_and_looping_links_are_unreadable(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = _things(raw)
    os.symlink(folder / "gone.csv", folder / "dangling.csv")
    os.symlink(folder / "loop_b.csv", folder / "loop_a.csv")
    os.symlink(folder / "loop_a.csv", folder / "loop_b.csv")
    refused = _refused(SPEC, raw)
    assert refused["things/dangling.csv"] == (
        reasons.FILE_UNREADABLE, "things/dangling.csv is a symbolic link that cannot be followed: No such file or directory")
    assert refused["things/loop_a.csv"] is not None and refused["things/loop_a.csv"][0] in {
        reasons.FILE_UNREADABLE, reasons.OUTSIDE_RAW_ROOT}
    out = _extract(SPEC, raw)
    assert len(out["rows"]) == 2 and len(out["rejects"]) == 3


def test_a_file_name_that_is_not_utf8_is_a_reject_and_the_run_goes_on(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = _things(raw)
    name = os.fsdecode(b"caf\xe9.csv")
    (folder / name).write_text("id,value\n9,z\n")
    refused = _refused(SPEC, raw)
    assert refused["things/caf\\xe9.csv"] == (
        reasons.UNSUPPORTED_FILE,
        "the name things/caf\\xe9.csv is not valid UTF-8 (shown with \\xNN escapes); rename the file to load it")
    out = _extract(SPEC, raw)
    assert sorted(r["value"] for r in out["rows"]) == ["a", "b"]
    assert [(r["src_filename"], r["reason_code"]) for r in out["rejects"]] == [
        ("things/caf\\xe9.csv", reasons.UNSUPPORTED_FILE)]


def test_a_delta_table_directory_linked_from_outside_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_deltalake(tmp_path / "outside_table", pa.table({"id": [1, 2]}))
    os.symlink(tmp_path / "outside_table", raw / "returns")
    spec = TableSpec(name="returns", schema=pa.schema([col("id", pa.int64(), required=True)]), files="returns",
                     formats=("delta",), primary_key=("id",), write_disposition="merge")
    [table] = discover_files(spec, str(raw))
    assert table.refused is not None and table.refused[0] == reasons.OUTSIDE_RAW_ROOT
    out = _extract(spec, raw)
    assert out["rows"] == [] and [r["reason_code"] for r in out["rejects"]] == [reasons.OUTSIDE_RAW_ROOT]


@pytest.mark.slow
def test_a_hostile_raw_root_loads_the_rest_and_leaks_nothing_into_any_sink(tmp_path: Path) -> None:
    """The command line over a raw root holding links out of it, a FIFO, a socket and a name that is not UTF-8:
    it ends (the FIFO is never opened), loads the regular file, rejects the others, and no output holds a byte of
    the files outside."""
    box = make_sandbox(tmp_path)
    folder = box.raw / "customers"
    folder.mkdir()
    good = (REPO / "data_raw" / "customers" / "customers_2.csv").read_text()
    (folder / "good.csv").write_text(good)
    outside = _outside(tmp_path)
    (outside / "secrets.csv").write_text(f"customer_id,email\n{SECRET},{SECRET}\n")
    os.symlink(outside / "secrets.csv", folder / "secrets.csv")
    os.symlink("/etc/passwd", folder / "passwd.csv")
    os.symlink(outside, box.raw / "customers" / "more")
    os.mkfifo(folder / "pipe.csv")
    (folder / os.fsdecode(b"caf\xe9.csv")).write_text(good)
    with _listening_socket(folder / "sock.csv"):
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(box.raw), "--lake",
             str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
             "--tables", "customers"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rejects = dict(query(box.warehouse, "SELECT src_filename, reason_code FROM bronze.rejects "
                                        "WHERE src_row_number IS NULL"))
    assert rejects == {
        "customers/secrets.csv": reasons.OUTSIDE_RAW_ROOT, "customers/passwd.csv": reasons.OUTSIDE_RAW_ROOT,
        "customers/more": reasons.OUTSIDE_RAW_ROOT, "customers/pipe.csv": reasons.UNSUPPORTED_FILE,
        "customers/sock.csv": reasons.UNSUPPORTED_FILE, "customers/caf\\xe9.csv": reasons.UNSUPPORTED_FILE}
    assert warehouse_table(box.warehouse, "customers").num_rows == good.count("\n") - 1
    outputs = [read(where, table) for table in ("customers", "rejects", "manifest_processed_files")
               for read, where in ((warehouse_table, box.warehouse), (changelog_table, box.lake), (delta_table, box.lake))]
    text = repr([t.to_pylist() for t in outputs]) + "".join(p.read_text() for p in box.lake.rglob("*.csv"))
    assert "customers/sock.csv" in text
    assert SECRET not in text and "root:x:0:0" not in text
