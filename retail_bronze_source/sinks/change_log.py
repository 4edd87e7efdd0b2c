"""The Parquet change log: every completed load of the warehouse imported, file by file, into the lake.

The change log holds what the warehouse loaded, with the same audit columns and `_dlt_load_id`; it knows which
warehouse loads it holds (`CHANGE_LOG_IMPORTS`, one row per warehouse load, and `imported_through` in its pipeline's
state, which commits with the lake load). The lake's own record wins over the state: a lake reached under another
pipeline name (the default layout run from another directory, say) has loads imported by that pipeline, which
this pipeline's state does not know of. Each run imports every completed warehouse load newer than both, oldest
first, whatever happened in between (a run killed between the two loads, a lost pipelines directory, a lost lake):
- from the warehouse's load package when it is still in the pipelines directory (its files are imported as they
  are: no second read or validation);
- otherwise exported from the warehouse (`SELECT * ... WHERE _dlt_load_id IN (...)`): the rows those loads left
  in the warehouse, which are all their rows unless a later load has since replaced some of them (a lake rebuilt
  after it was lost holds the current rows of each load, not the versions they replaced).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import dlt
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.common.pipeline import LoadInfo, get_dlt_pipelines_dir
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.extract.resource import DltResource
from dlt.pipeline.pipeline import Pipeline

from ..helpers import quote_ident, quote_literal
from ..storage import LAKE_SECTION, Store
from ..workdirs import staging_dir
from . import DATASET, LOADER_FILE_FORMAT, META_SCHEMA, RESTORED_LOADS
from .packages import package_files
from .warehouse import table_exists

CHANGE_LOG_IMPORTS = "change_log_imports"
"""Lake table listing every warehouse load the change log holds (`warehouse_load_id`, `imported_at`, `source`)."""
IMPORTS_SCHEMA = pa.schema([
    pa.field("warehouse_load_id", pa.string(), nullable=False),
    pa.field("imported_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("source", pa.string(), nullable=False),
])
CHANGE_LOG_DATASET = "parquet"
"""The change log's dataset: its folder under `<lake>/bronze/`."""
CHANGE_LOG_LAYOUT = "{table_name}/{load_id}.{file_id}.{ext}"
_KEPT_HINTS = ("name", "data_type", "nullable", "precision", "scale", "timezone")


def lake_pipeline(lake: Store, pipeline_name: str, *, pipelines_dir: str | None = None) -> Pipeline:
    """The filesystem pipeline writing the append-only Parquet change log to `<lake>/bronze/parquet/<table>/`; on
    object storage through the named destination `retail_bronze_lake`, with the lake's credentials."""
    if lake.is_local:
        destination = dlt.destinations.filesystem(bucket_url=(lake.local_path / DATASET).resolve().as_uri(),
                                                  layout=CHANGE_LOG_LAYOUT)
    else:
        destination = dlt.destinations.filesystem(bucket_url=lake.url_of(DATASET), credentials=lake.credentials,
                                                  layout=CHANGE_LOG_LAYOUT, destination_name=LAKE_SECTION[-1],
                                                  **lake.options)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=destination, dataset_name=CHANGE_LOG_DATASET,
                        pipelines_dir=pipelines_dir or get_dlt_pipelines_dir())


def warehouse_loads(warehouse_db: Path) -> list[str]:
    """The completed load ids of the warehouse's dataset, oldest first: dlt's, and those a restored warehouse took
    from its lake (`RESTORED_LOADS`)."""
    if not warehouse_db.exists():
        return []
    loads: set[str] = set()
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        if table_exists(con, "_dlt_loads"):
            loads.update(row[0] for row in con.execute(
                f"SELECT DISTINCT load_id FROM {DATASET}._dlt_loads WHERE status = 0").fetchall())
        if table_exists(con, RESTORED_LOADS, META_SCHEMA):
            loads.update(row[0] for row in con.execute(
                f"SELECT load_id FROM {META_SCHEMA}.{RESTORED_LOADS}").fetchall())
    return sorted(loads, key=Decimal)


def imported_through(lake: Pipeline) -> str | None:
    """The newest warehouse load the change log holds (every older completed load is held too)."""
    state = lake.state.get("sources", {}).get(lake.default_schema_name or lake.pipeline_name, {})
    through = state.get("imported_through")
    # Lakes written before `imported_through` list the imported loads per table.
    older = [load for resource in state.get("resources", {}).values() for load in resource.get("imported_loads", [])]
    candidates = [str(x) for x in [through, *older] if x]
    return max(candidates, key=Decimal) if candidates else None


def recorded_elsewhere(lake_store: Store, own_schema: str, after: str | None) -> tuple[str | None, str | None]:
    """What the lake records as imported by other pipelines: the newest warehouse load in `CHANGE_LOG_IMPORTS` of
    the completed lake loads of schemas other than `own_schema` newer than the lake load `after`; and the newest
    completed lake load of any pipeline (the `after` of the next call: older loads were read already)."""
    folder = lake_store.path_of(DATASET, CHANGE_LOG_DATASET)
    completed: dict[str, str] = {}
    for name in _names(lake_store, f"{folder}/_dlt_loads"):
        schema, sep, rest = name.removesuffix(".jsonl").rpartition("__")
        if sep and _is_load_id(rest):
            completed[rest] = schema
    if not completed:
        return None, None
    newest = max(completed, key=Decimal)
    foreign = {load for load, schema in completed.items()
               if schema != own_schema and (after is None or Decimal(load) > Decimal(after))}
    files = [f"{folder}/{CHANGE_LOG_IMPORTS}/{name}" for name in _names(lake_store, f"{folder}/{CHANGE_LOG_IMPORTS}")
             if name.endswith(".parquet") and name.rsplit(".", 2)[0] in foreign]
    through: str | None = None
    for path in files:
        with lake_store.fs.open(path, "rb") as handle:
            loads = pq.read_table(handle, columns=["warehouse_load_id"]).column(0).to_pylist()
        for load in loads:
            if through is None or Decimal(load) > Decimal(through):
                through = load
    return through, newest


def recorded_imports(lake_store: Store) -> set[str]:
    """Every warehouse load the lake's `CHANGE_LOG_IMPORTS` records (of any pipeline)."""
    folder = f"{lake_store.path_of(DATASET, CHANGE_LOG_DATASET)}/{CHANGE_LOG_IMPORTS}"
    loads: set[str] = set()
    for name in _names(lake_store, folder):
        if name.endswith(".parquet"):
            with lake_store.fs.open(f"{folder}/{name}", "rb") as handle:
                loads.update(pq.read_table(handle, columns=["warehouse_load_id"]).column(0).to_pylist())
    return loads


def _names(store: Store, folder: str) -> list[str]:
    """The names of the files in `folder` of `store`; none when it does not exist. Listed afresh: other processes
    write the lake (a listing cached by fsspec would miss their loads)."""
    store.fs.invalidate_cache(folder)
    if not store.fs.isdir(folder):
        return []
    return [str(path).rstrip("/").rsplit("/", 1)[-1] for path in store.fs.ls(folder, detail=False)]


def _is_load_id(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


def held_through(lake: Pipeline, lake_store: Store) -> tuple[str | None, str | None]:
    """The newest warehouse load the change log holds, by the lake pipeline's state and the lake's own record of
    the other pipelines' imports; and the newest completed lake load (see `recorded_elsewhere`)."""
    own_schema = lake.default_schema_name or lake.pipeline_name
    state = lake.state.get("sources", {}).get(own_schema, {})
    elsewhere, newest_lake_load = recorded_elsewhere(lake_store, own_schema, state.get("lake_loads_read_through"))
    marks = [x for x in (imported_through(lake), elsewhere) if x is not None]
    return (max(marks, key=Decimal) if marks else None), newest_lake_load


def sync_change_log(warehouse: Pipeline, warehouse_db: Path, lake: Pipeline, lake_store: Store) -> LoadInfo | None:
    """Import every completed warehouse load newer than the change log holds, in one lake load; None if none."""
    through, newest_lake_load = held_through(lake, lake_store)
    missing = [load for load in warehouse_loads(warehouse_db) if through is None or Decimal(load) > Decimal(through)]
    if not missing:
        return None
    on_disk = set(warehouse.list_completed_load_packages())
    by_table: dict[str, list[str]] = {}
    sources: dict[str, str] = {}
    exported = []
    for load_id in missing:
        if load_id in on_disk and warehouse.get_load_package_info(load_id).state == "loaded":
            for table, files in package_files(warehouse, load_id, loaded_only=True).items():
                by_table.setdefault(table, []).extend(files)
            sources[load_id] = "package"
        else:
            exported.append(load_id)
            sources[load_id] = "warehouse"
    with staging_dir("export") as tmp:
        for table, files in export_loads(warehouse_db, exported, Path(tmp)).items():
            by_table.setdefault(table, []).extend(files)
        resources = [_import_resource(warehouse, table, files) for table, files in sorted(by_table.items())]
        resources.append(_imports_resource(missing, sources, newest_lake_load))
        return lake.run(resources, loader_file_format=LOADER_FILE_FORMAT)


def export_loads(warehouse_db: Path, load_ids: list[str], folder: Path) -> dict[str, list[str]]:
    """The rows of `load_ids` in every table of the warehouse's dataset, one Parquet file per table that has any."""
    if not load_ids:
        return {}
    ids = ", ".join(quote_literal(load_id) for load_id in load_ids)
    out: dict[str, list[str]] = {}
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        tables = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = ? AND column_name = "
            "'_dlt_load_id' AND table_name NOT LIKE '\\_dlt%' ESCAPE '\\' ORDER BY 1", [DATASET]).fetchall()]
        for table in tables:
            rows = f"SELECT * FROM {DATASET}.{quote_ident(table)} WHERE _dlt_load_id IN ({ids})"
            found = con.execute(f"SELECT count(*) FROM ({rows})").fetchone()
            if not found or not found[0]:
                continue
            target = folder / f"{table}.parquet"
            con.execute(f"COPY ({rows}) TO {quote_literal(str(target))} (FORMAT parquet, ROW_GROUP_SIZE 131072)")
            out[table] = [str(target)]
    return out


def _append_columns(warehouse: Pipeline, table: str, files: list[str]) -> TTableSchemaColumns:
    """The columns of `table` with types only (the change log is append-only and keyless): the warehouse schema's,
    else the files' own."""
    columns: Any = {}
    for path in files:
        columns.update(py_arrow_to_table_schema_columns(pq.read_schema(path)))
    if warehouse.default_schema_name and table in warehouse.default_schema.tables:
        columns.update(warehouse.default_schema.get_table_columns(table))
    kept: Any = {name: {k: v for k, v in column.items() if k in _KEPT_HINTS} for name, column in columns.items()}
    return cast(TTableSchemaColumns, kept)


def _import_resource(warehouse: Pipeline, table: str, files: list[str]) -> DltResource:
    def imports() -> Iterator[Any]:
        for path in files:
            yield dlt.mark.with_file_import(path, "parquet", items_count=pq.ParquetFile(path).metadata.num_rows)

    return dlt.resource(imports(), name=table, table_name=table, write_disposition="append",
                        columns=_append_columns(warehouse, table, files))


def _imports_resource(load_ids: list[str], sources: dict[str, str], lake_loads_read: str | None) -> DltResource:
    """The change log's record of the warehouse loads it now holds; it also advances `imported_through` (and the
    newest lake load whose record of imports was read, see `recorded_elsewhere`)."""
    def record() -> Iterator[Any]:
        state = dlt.current.source_state()
        state["imported_through"] = max(load_ids, key=Decimal)
        if lake_loads_read is not None:
            state["lake_loads_read_through"] = lake_loads_read
        now = datetime.now(UTC)
        yield pa.table({"warehouse_load_id": load_ids, "imported_at": [now] * len(load_ids),
                        "source": [sources[load_id] for load_id in load_ids]}, schema=IMPORTS_SCHEMA)

    return dlt.resource(record(), name=CHANGE_LOG_IMPORTS, table_name=CHANGE_LOG_IMPORTS, write_disposition="append")

