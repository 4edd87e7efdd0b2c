"""The table extractor: per-file conservation when key resolution rejects or supersedes rows across files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from retail_bronze_source import reasons, settings
from retail_bronze_source.discovery import discover_files
from retail_bronze_source.extract import TableExtractor
from retail_bronze_source.registry import DerivedColumn, TableSpec
from schemas.schemas import col

SPEC = TableSpec(
    name="things",
    schema=pa.schema([col("id", pa.int64(), required=True), col("value", pa.string()),
                      col("updated_at", pa.timestamp("us", tz="UTC"), required=True)]),
    files="things/*.csv", formats=("csv",), primary_key=("id",), write_disposition="merge",
    sequence_column="updated_at",
)


def _run(raw: Path) -> dict[str, list[pa.Table]]:
    out: dict[str, list[pa.Table]] = {"rows": [], "rejects": [], "manifest": []}
    extractor = TableExtractor(SPEC, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=1000, ledger={})
    for kind, table in extractor.run(discover_files(SPEC, str(raw))):
        out[kind].append(table)
    return out


def test_a_file_whose_rows_all_conflict_still_emits_every_reject(tmp_path: Path) -> None:
    (tmp_path / "things").mkdir()
    (tmp_path / "things" / "a.csv").write_text("id,value,updated_at\n1,x,2024-01-01T00:00:00Z\n")
    (tmp_path / "things" / "b.csv").write_text("id,value,updated_at\n1,y,2024-01-01T00:00:00Z\n2,z,2024-01-01T00:00:00Z\n")
    out = _run(tmp_path)
    manifest = {r["src_path"]: r for t in out["manifest"] for r in t.to_pylist()}
    rejects = [r for t in out["rejects"] for r in t.to_pylist()]
    assert [(r["src_filename"], r["src_row_number"], r["reason_code"]) for r in rejects] == [
        ("things/a.csv", 1, reasons.DUPLICATE_KEY), ("things/b.csv", 1, reasons.DUPLICATE_KEY)]
    assert sum(t.num_rows for t in out["rows"]) == 1
    for path, row in manifest.items():
        assert row["row_count"] == row["valid_count"] + row["reject_count"], path
        assert row["reject_count"] == sum(1 for r in rejects if r["src_filename"] == path), path


def test_the_manifest_fingerprint_is_the_sha256_of_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "HASH_BLOCK_BYTES", 7)  # many blocks
    content = b"id,value,updated_at\n" + b"".join(f"{i},v{i},2024-01-01T00:00:00Z\n".encode() for i in range(50))
    (tmp_path / "things").mkdir()
    (tmp_path / "things" / "a.csv").write_bytes(content)
    [manifest] = _run(tmp_path)["manifest"]
    assert manifest["file_fingerprint"].to_pylist() == [f"sha256:{hashlib.sha256(content).hexdigest()}"]


def _write_dirty_files(raw: Path, files: int) -> None:
    (raw / "things").mkdir()
    for f in range(files):
        rows = [f"{f * 10 + i},v,2024-01-01T00:00:00Z" for i in range(3)] + [f"x{f},bad,2024-01-01T00:00:00Z"]
        (raw / "things" / f"{f}.csv").write_text("id,value,updated_at\n" + "\n".join(rows) + "\n")


def test_every_file_of_a_load_has_its_manifest_row_and_its_rejects(tmp_path: Path) -> None:
    _write_dirty_files(tmp_path, 3)
    out = _run(tmp_path)
    rejects = [r for t in out["rejects"] for r in t.to_pylist()]
    assert [r["src_filename"] for r in rejects] == ["things/0.csv", "things/1.csv", "things/2.csv"]
    assert {r["reason_code"] for r in rejects} == {reasons.TYPE_MISMATCH}
    assert [r for t in out["manifest"] for r in t.select(["src_path", "row_count", "valid_count", "reject_count"])
            .to_pylist()] == [{"src_path": f"things/{f}.csv", "row_count": 4, "valid_count": 3, "reject_count": 1}
                              for f in range(3)]
    assert sum(t.num_rows for t in out["rows"]) == 9


def test_an_unexpected_validation_error_rejects_its_file_and_the_others_load(tmp_path: Path) -> None:
    # A derived column whose SQL fails on one file's values: DuckDB raises in the validation query.
    spec = TableSpec(name="codes", schema=pa.schema([col("code", pa.string(), required=True)]), files="codes/*.csv",
                     formats=("csv",), primary_key=(), write_disposition="append",
                     derived=(DerivedColumn("code_number", pa.int64(), "CAST(code AS BIGINT)"),))
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "a.csv").write_text("code\n12\nabc\n")
    (tmp_path / "codes" / "b.csv").write_text("code\n7\n")
    extractor = TableExtractor(spec, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=1000, ledger={})
    out: dict[str, list[pa.Table]] = {"rows": [], "rejects": [], "manifest": []}
    for kind, table in extractor.run(discover_files(spec, str(tmp_path))):
        out[kind].append(table)
    assert [r["code_number"] for t in out["rows"] for r in t.to_pylist()] == [7]
    [reject] = [r for t in out["rejects"] for r in t.to_pylist()]
    assert (reject["src_filename"], reject["reason_code"]) == ("codes/a.csv", reasons.VALIDATION_FAILED)
    assert reject["reason_detail"].startswith("ConversionException: Conversion Error")
    assert [(r["src_path"], r["status"], r["row_count"]) for t in out["manifest"] for r in t.to_pylist()] == [
        ("codes/a.csv", "file_rejected", 0), ("codes/b.csv", "ok", 1)]
