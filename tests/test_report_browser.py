"""The run report in a real browser: headless Chromium renders the page of a real run, its figures are the
warehouse's, its links lead to the rejects CSVs, nothing is loaded from elsewhere; a screenshot is kept."""

from __future__ import annotations

import re
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from conftest import ARTIFACTS, SAMPLE, make_sandbox, query
from services import chromium

from retail_bronze_source.observe.report import REPORT_FOLDER
from retail_bronze_source.run import run_bronze

TABLES = ["customers", "orders", "order_items", "stores", "events", "sensors"]


class _Figures(HTMLParser):
    """Every element with `data-figure`: (figure, table, reason) -> its text; and every link and source."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[tuple[str, str | None, str | None], str] = {}
        self.links: list[str] = []
        self.sources: list[str] = []
        self.scripts = 0
        self._open: list[tuple[str, tuple[str, str | None, str | None]] | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if found.get("src"):
            self.sources.append(str(found["src"]))
        key = (str(found["data-figure"]), found.get("data-table"), found.get("data-reason")) \
            if found.get("data-figure") else None
        if key is not None and found.get("data-value") is not None:
            self.figures[key] = str(found["data-value"])
            key = None
        if tag not in ("br", "img", "meta", "link", "rect", "line"):
            self._open.append((tag, key) if key is not None else None)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for item in reversed(self._open):
            if item is not None:
                self.figures[item[1]] = self.figures.get(item[1], "") + data
                break


def _number(text: str) -> int:
    return int(text.replace(",", "").strip())


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.slow
def test_report_page_in_chromium_shows_the_warehouse_figures(tmp_path: Path, test_services: Any) -> None:
    raw = tmp_path / "raw"
    for table in TABLES:
        shutil.copytree(SAMPLE / table, raw / table)
    box = make_sandbox(tmp_path, raw=raw)
    run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    shutil.copy(SAMPLE / "customers" / "customers_2.csv", raw / "customers" / "customers_9.csv")
    shutil.copy(SAMPLE / "events" / "events_2.jsonl", raw / "events" / "events_9.jsonl")
    record = run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir)).record
    run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))  # nothing new: a third run
    assert record is not None and record.warehouse_load_id is not None
    load = record.warehouse_load_id
    page = box.lake / REPORT_FOLDER / f"{record.run_id}.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page loads nothing from elsewhere"

    dom = chromium(test_services, ["--dump-dom", page.as_uri()], tmp_path / "profile")
    parsed = _Figures()
    parsed.feed(dom)
    assert parsed.scripts == 0 and parsed.sources == []
    figures = parsed.figures
    manifest = query(box.warehouse, "SELECT table_name, sum(row_count), sum(valid_count), sum(reject_count), "
                     "sum(superseded_count), count(*) FILTER (WHERE status = 'file_rejected'), count(*) "
                     "FROM bronze.manifest_processed_files WHERE load_id = ? GROUP BY ALL", [load])
    assert manifest
    for table, read, valid, rejected, superseded, file_rejects, files in manifest:
        assert _number(figures[("rows_read", table, None)]) == read
        assert _number(figures[("rows_valid", table, None)]) == valid
        assert _number(figures[("rows_rejected", table, None)]) == rejected
        assert _number(figures[("rows_superseded", table, None)]) == superseded
        assert _number(figures[("files_rejected", table, None)]) == file_rejects
        assert _number(figures[("files_new", table, None)]) + _number(figures[("files_changed", table, None)]) == files
    total_read = query(box.warehouse, "SELECT sum(row_count) FROM bronze.manifest_processed_files WHERE load_id = ?",
                       [load])[0][0]
    assert _number(figures[("rows_read", None, None)]) == _number(figures[("rows_read", "*", None)]) == total_read
    reasons = query(box.warehouse, "SELECT table_name, reason_code, count(*) FROM bronze.rejects WHERE load_id = ? "
                    "GROUP BY ALL", [load])
    shown = {(t, r): int(v) for (f, t, r), v in figures.items() if f == "reject_records"}
    assert shown == {(t, r): n for t, r, n in reasons}
    loaded = query(box.warehouse, "SELECT count(*) FROM bronze.customers WHERE _dlt_load_id = ?", [load])[0][0]
    assert _number(figures[("duckdb_rows", "customers", None)]) == loaded
    read_again = {table: files for table, *_, files in manifest}
    for table in TABLES:
        assert _number(figures[("files_unchanged", table, None)]) == len(list((raw / table).iterdir())) - \
            read_again.get(table, 0)
    assert figures[("audits", None, None)].strip() == "no audits"
    assert figures[("status", None, None)].strip() == "ok"
    assert figures[("warehouse_load_id", None, None)].strip() == load
    csv_links = [link for link in parsed.links if link.endswith(".csv")]
    assert csv_links and all(Path(unquote(urlparse(page.as_uri()).path)).parent.joinpath(link).resolve().is_file()
                             for link in csv_links)
    assert len(csv_links) == len({t for t, _, _ in reasons})

    index = box.lake / REPORT_FOLDER / "index.html"
    index_dom = chromium(test_services, ["--dump-dom", index.as_uri()], tmp_path / "profile")
    runs = re.findall(r'data-run="([^"]+)"', index_dom)
    assert len(runs) == 3 and runs[1] == record.run_id

    shot = tmp_path / "report.png"
    chromium(test_services, ["--window-size=1280,2200", f"--screenshot={shot}", page.as_uri()],
             tmp_path / "profile")
    assert _png_size(shot) == (1280, 2200) and shot.stat().st_size > 50_000
    index_shot = tmp_path / "index.png"
    chromium(test_services, ["--window-size=1280,1000", f"--screenshot={index_shot}", index.as_uri()],
             tmp_path / "profile")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report_run.png")
    shutil.copy(index_shot, ARTIFACTS / "report_index.png")
