"""Safe text: URL credentials redacted, reject details without host paths, escapes or long quotes of a file, and
spreadsheet-safe cells."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from retail_bronze_source import reasons
from retail_bronze_source.discovery import discover_files
from retail_bronze_source.extract import TableExtractor
from retail_bronze_source.redact import DETAIL_MAX_CHARS, redact, reject_detail, spreadsheet_safe
from retail_bronze_source.registry import TableSpec
from schemas.schemas import col


@pytest.mark.parametrize(("text", "shown"), [
    ("raw directory 'http://user:s3cr3t@host:8080/drops' does not exist",
     "raw directory 'http://user:***@host:8080/drops' does not exist"),
    ("https://ghp_token123@github.com/org/repo", "https://***@github.com/org/repo"),
    ("s3://AKIA:pa@ss@bucket/key", "s3://AKIA:***@bucket/key"),
    ("https://acct.blob.core.windows.net/c/f.csv?sv=2022&sig=abc%2Bdef&se=2030",
     "https://acct.blob.core.windows.net/c/f.csv?sv=2022&sig=***&se=2030"),
    ("GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff00&x=1 failed",
     "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1 failed"),
    ("http://h/p?access_token=t1;api_key=k2&password=p3", "http://h/p?access_token=***;api_key=***&password=***"),
    ("plain text, user@example.com and http://host/path?page=2", "plain text, user@example.com and http://host/path?page=2"),
], ids=["password", "token-only", "at-in-password", "azure-sas", "aws-presigned", "named-params", "untouched"])
def test_redact_hides_credentials_of_urls(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_reject_detail_reads_relative_to_the_raw_root() -> None:
    roots = ["/data/raw", "/mnt/real/raw", "file:///data/raw", "file:/data/raw"]
    detail = ("Object at location /data/raw/returns/part-0.parquet not found; file:///data/raw/returns/x "
              "file:/data/raw/y /mnt/real/raw/z, root /data/raw, sibling /data/raw2/q")
    assert reject_detail(detail, roots) == (
        "Object at location returns/part-0.parquet not found; returns/x y z, root <raw root>, sibling /data/raw2/q")


def test_reject_detail_is_one_bounded_line_without_escapes() -> None:
    detail = "Kernel error:\n  \x1b[31m↳\x1b[0m bad\tvalue \x07bell\x00 " + "x" * 5000
    shown = reject_detail(detail)
    assert shown.startswith("Kernel error: ↳ bad value \\x07bell\\x00 xxx")
    assert shown.endswith("x... (4039 more characters)")  # 39 + 5000 characters once cleaned, 1000 kept
    assert len(shown) == DETAIL_MAX_CHARS + len("... (4039 more characters)")


def _extract(spec: TableSpec, raw: Path) -> list[dict[str, Any]]:
    extractor = TableExtractor(spec, ingestion_ts=datetime.now(UTC), load_id="1", chunk_size=100, ledger={})
    return [r for kind, t in extractor.run(discover_files(spec, str(raw))) if kind == "rejects" for r in t.to_pylist()]


def test_a_deltalake_error_names_the_data_file_relative_to_the_raw_root(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_deltalake(raw / "returns", pa.table({"id": [1, 2]}))
    part = next((raw / "returns").glob("*.parquet"))
    part.unlink()
    spec = TableSpec(name="returns", schema=pa.schema([col("id", pa.int64(), required=True)]), files="returns",
                     formats=("delta",), primary_key=("id",), write_disposition="merge", sequence_column=None)
    [reject] = _extract(spec, raw)
    assert reject["reason_code"] == reasons.FILE_UNREADABLE
    assert f"returns/{part.name}" in reject["reason_detail"]
    assert str(tmp_path) not in reject["reason_detail"] and "\x1b" not in reject["reason_detail"]


def test_a_file_level_detail_quotes_at_most_a_bounded_part_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "things").mkdir()
    header = ",".join(f"SECRET_{i:05d}" for i in range(2_000))
    (tmp_path / "things" / "wide.csv").write_text(f"{header}\n" + ",".join("1" for _ in range(2_000)) + "\n")
    spec = TableSpec(name="things", schema=pa.schema([col("id", pa.int64(), required=True)]), files="things/*",
                     formats=("csv",), primary_key=(), write_disposition="append", sequence_column=None)
    [reject] = _extract(spec, tmp_path)
    assert reject["reason_code"] == reasons.MISSING_REQUIRED_COLUMN
    assert len(reject["reason_detail"]) < DETAIL_MAX_CHARS + 40
    assert "SECRET_01999" not in reject["reason_detail"]


def test_spreadsheet_safe_neutralises_formulas_and_shows_control_characters() -> None:
    cells = pa.array(["=HYPERLINK(\"http://x\")", "+1", "-200", "@SUM(A1)", "\t=1", "\r=1", "\x00x", "line\nbreak",
                      "crlf\r\nend", "ok", None, "", " =1", "'quoted", "x\u202ey", "c\x85d", "esc\x1b[31m", "a\x7f"])
    assert spreadsheet_safe(cells).to_pylist() == [
        "'=HYPERLINK(\"http://x\")", "'+1", "'-200", "'@SUM(A1)", "'␉=1", "'␍=1", "'␀x", "line␊break",
        "crlf␍␊end", "ok", None, "", " =1", "'quoted", "x<U+202E>y", "c<U+0085>d", "esc␛[31m", "a␡"]
    chunked = pa.chunked_array([cells[:5], cells[5:]])
    assert spreadsheet_safe(chunked).equals(spreadsheet_safe(cells))
    assert spreadsheet_safe(pa.array(["=1"], pa.large_string())).to_pylist() == ["'=1"]
