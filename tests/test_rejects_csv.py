"""The rejects CSV is safe to open in a spreadsheet; the warehouse and the lake keep the exact values."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from conftest import changelog_table, delta_table, make_sandbox, warehouse_table

from retail_bronze_source import reasons
from retail_bronze_source.registry import TableSpec
from retail_bronze_source.run import run_bronze
from retail_bronze_source.sinks.rejects_csv import write_rejects_csv
from retail_bronze_source.storage import LAKE_SECTION, open_store
from schemas.schemas import col

SPEC = TableSpec(
    name="notes", schema=pa.schema([col("id", pa.int64(), required=True), col("note", pa.string())]),
    files="notes/*.csv", formats=("csv",), primary_key=(), write_disposition="append", sequence_column=None,
)
HOSTILE_RECORDS = [
    "=HYPERLINK(A1&A2;A3),x",
    "+1+1,x",
    "-2+3,x",
    "@SUM(1+1)*cmd|' /C calc'!A0,x",
    '"\tTAB",x',
    '"two\nlines",x',
    '"bidi\u202etxt.exe",x',
]


def _shown(value: str) -> str:
    """What the rejects CSV shows of a value: OWASP's leading quote, then the control pictures and code points."""
    quoted = f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r", "\x00") else value
    return quoted.replace("\n", "␊").replace("\t", "␉").replace("\r", "␍").replace("\u202e", "<U+202E>")


def test_hostile_rejects_are_neutralised_in_the_csv_and_exact_in_every_sink(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    (box.raw / "notes").mkdir()
    (box.raw / "notes" / "=1+2.csv").write_text("id,note\n" + "\n".join(HOSTILE_RECORDS) + "\n3,fine\n")
    result = run_bronze(box.layout, tables=[SPEC], pipelines_dir=str(box.pipelines_dir))
    [written] = result.rejects_files
    warehouse = warehouse_table(box.warehouse, "rejects").sort_by("src_row_number")
    assert warehouse["reason_code"].to_pylist() == [reasons.TYPE_MISMATCH] * len(HOSTILE_RECORDS)
    exact = warehouse["raw_record"].to_pylist()  # the records as RFC 4180 text, as the README describes
    assert [r[0] for r in exact[:5]] == ["=", "+", "-", "@", "\t"]
    assert "two\nlines" in exact[5] and "\u202e" in exact[6]
    assert set(warehouse["src_filename"].to_pylist()) == {"notes/=1+2.csv"}
    for lake_copy in (changelog_table(box.lake, "rejects"), delta_table(box.lake, "rejects")):
        assert sorted(lake_copy["raw_record"].to_pylist()) == sorted(exact)

    text = Path(written).read_text(encoding="utf-8")
    assert text.count("\n") == len(HOSTILE_RECORDS) + 1  # one line per record: no line break inside a cell
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["raw_record"] for r in rows] == [_shown(value) for value in exact]
    assert [r["raw_record"][:2] for r in rows[:5]] == ["'=", "'+", "'-", "'@", "'␉"]
    assert {r["src_filename"] for r in rows} == {"notes/=1+2.csv"}
    formula_start = ("=", "+", "-", "@", "\t", "\r")
    assert not [cell for r in rows for cell in r.values() if cell.startswith(formula_start)]


def test_a_formula_file_name_and_a_control_character_in_any_text_column(tmp_path: Path) -> None:
    rejects = pa.table({
        "table_name": ["t", "t"], "src_filename": ["=cmd.csv", "ok.csv"], "src_row_number": pa.array([1, -2]),
        "reason_code": ["X", "X"], "reason_detail": ["-detail", "a\x00b"],
        "raw_record": pa.array(["@x", None], pa.large_string()),
    })
    [written] = write_rejects_csv(rejects, open_store(tmp_path, LAKE_SECTION), "load")
    rows = list(csv.DictReader(io.StringIO(Path(written).read_text(encoding="utf-8"))))
    assert [(r["src_filename"], r["src_row_number"], r["reason_detail"], r["raw_record"]) for r in rows] == [
        ("'=cmd.csv", "1", "'-detail", "'@x"), ("ok.csv", "-2", "a␀b", "")]
    assert pc.equal(rejects["src_filename"], pa.array(["=cmd.csv", "ok.csv"])).to_pylist() == [True, True]
