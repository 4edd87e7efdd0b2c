"""Whose state is whose: the pipelines of a warehouse and lake, the identity of each sink, and their binding.

A run writes three places that hold state: the DuckDB warehouse, the lake (Parquet change log, Delta mirror, rejects
CSVs) and dlt's pipelines directory (the working state of the warehouse and lake pipelines: pending packages, the file
ledger, schemas). The sinks are the truth; the pipelines directory is a cache of them, bound to the sink it describes:
- The default layout (`duckdb/warehouse.duckdb` and `lake` in one folder, whatever the working directory) uses the
  pipelines `retail_bronze` and `retail_bronze_lake`, so that `dlt pipeline retail_bronze info` works from the
  repository root; any other layout gets pipelines named after its targets (`retail_bronze_<8 hex digits of the
  warehouse's absolute path>`, `retail_bronze_lake_<... of the lake's>`), so that runs on different targets never
  share a working directory. Default layouts of several folders (clones) share the names: their states are bound
  to their sinks (below).
- The warehouse carries an identity (`_retail_bronze.sink`: a random id, made on its first run) and the lake a
  binding file (`<lake>/_retail_bronze/sink.json`: its own id and the id of the warehouse it mirrors). A pipeline's
  local state records the id of the sink it was made for; a local state made for another sink (another clone on the
  machine, a deleted and recreated warehouse or lake) is dropped and restored from the sink itself.
- A lake mirrors one warehouse. A warehouse that was lost (deleted, or replaced by an empty one at the same path)
  is restored from its lake's Delta tables; any other warehouse on a lake that mirrors another is refused, and so
  is a copy of the mirrored one (same identity, the original still in place: the two would diverge and the lake
  take the loads of both), while a moved one is followed. A lake holding data without a binding (written before
  bindings existed, or its file deleted) is bound only to a warehouse holding every load the lake records.
- A warehouse may feed several lakes: each is a full mirror of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
from dlt.pipeline.pipeline import Pipeline

from ..helpers import quote_ident
from ..registry import TableSpec
from ..storage import Store
from . import DATASET, META_SCHEMA, RESTORED_LOADS, Layout
from .change_log import held_through, lake_pipeline, recorded_imports, warehouse_loads
from .delta import mirror_to_delta
from .restore import restore_warehouse
from .warehouse import table_exists, warehouse_pipeline

WAREHOUSE_PIPELINE = "retail_bronze"
LAKE_PIPELINE = "retail_bronze_lake"
DEFAULT_WAREHOUSE = Path("duckdb") / "warehouse.duckdb"
DEFAULT_LAKE = Path("lake")
LAKE_BINDING = Path("_retail_bronze") / "sink.json"
LOCAL_STATE_KEY = "retail_bronze_sink"
"""Key of the bound sink id in a pipeline's local (never synchronized) state."""


class SinkMismatch(Exception):
    """The warehouse and lake of a run belong to different Bronze layers; the message says what to do."""


def pipeline_names(warehouse: Path, lake: Store | Path) -> tuple[str, str]:
    """The names of the warehouse and lake pipelines of a layout (see the module docstring): a function of the
    targets alone, never of the working directory, so that one warehouse and lake have one pair of pipelines
    however their paths are spelled."""
    warehouse = warehouse.resolve()
    if isinstance(lake, Path):
        lake_key = str(lake.resolve())
    else:
        lake_key = str(lake.local_path.resolve()) if lake.is_local else lake.url
    root = warehouse.parent.parent
    if warehouse == root / DEFAULT_WAREHOUSE and lake_key == str(root / DEFAULT_LAKE):
        return WAREHOUSE_PIPELINE, LAKE_PIPELINE
    return f"{WAREHOUSE_PIPELINE}_{_digest(str(warehouse))}", f"{LAKE_PIPELINE}_{_digest(lake_key)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class WarehouseIdentity:
    """The identity of a warehouse file, kept in the file itself."""

    sink_id: str
    created_at: datetime
    restored_through: str | None = None
    """Newest load id of the rows restored from the lake, when the warehouse was restored (loads up to it are
    complete although dlt's `_dlt_loads` of this file does not list them)."""


def read_warehouse_identity(warehouse: Path) -> WarehouseIdentity | None:
    """The identity of `warehouse`, None for a new file or one made before identities existed."""
    if not warehouse.exists():
        return None
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not table_exists(con, "sink", META_SCHEMA):
            return None
        row = con.execute(f"SELECT sink_id, created_at, restored_through FROM {META_SCHEMA}.sink").fetchone()
    return WarehouseIdentity(row[0], row[1], row[2]) if row else None


def write_warehouse_identity(warehouse: Path, identity: WarehouseIdentity) -> WarehouseIdentity:
    """Store `identity` in `warehouse` (replacing any other)."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.sink (sink_id VARCHAR NOT NULL, "
                    "created_at TIMESTAMPTZ NOT NULL, restored_through VARCHAR)")
        con.execute(f"DELETE FROM {META_SCHEMA}.sink")
        con.execute(f"INSERT INTO {META_SCHEMA}.sink VALUES (?, ?, ?)",
                    [identity.sink_id, identity.created_at, identity.restored_through])
    return identity


def _record_restored_loads(warehouse: Path, recorded: set[str]) -> set[str]:
    """Record in the restored `warehouse` the loads it took from its lake: those the lake records and those its
    restored rows carry; return them."""
    with duckdb.connect(str(warehouse)) as con:
        tables = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = ? AND column_name = "
            "'_dlt_load_id'", [DATASET]).fetchall()]
        loads = set(recorded)
        for table in tables:
            loads.update(row[0] for row in con.execute(
                f"SELECT DISTINCT _dlt_load_id FROM {DATASET}.{quote_ident(table)} WHERE _dlt_load_id IS NOT NULL"
            ).fetchall())
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.{RESTORED_LOADS} (load_id VARCHAR NOT NULL)")
        con.execute(f"DELETE FROM {META_SCHEMA}.{RESTORED_LOADS}")
        if loads:
            con.executemany(f"INSERT INTO {META_SCHEMA}.{RESTORED_LOADS} VALUES (?)", [[x] for x in sorted(loads)])
    return loads


def new_identity() -> WarehouseIdentity:
    return WarehouseIdentity(uuid.uuid4().hex, datetime.now(UTC))


def completed_loads(warehouse: Path, dataset: str) -> bool:
    """Whether dlt completed any load into `dataset` of `warehouse`."""
    if not warehouse.exists():
        return False
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not table_exists(con, "_dlt_loads", dataset):
            return False
        loads = con.execute(f'SELECT count(*) FROM "{dataset}"._dlt_loads WHERE status = 0').fetchone()
    return bool(loads and loads[0])


@dataclass(frozen=True)
class LakeBinding:
    """Which warehouse a lake mirrors, kept in the lake (`LAKE_BINDING`)."""

    lake_id: str
    warehouse_id: str
    warehouse_location: str


def read_lake_binding(lake: Store) -> LakeBinding | None:
    path = lake.path_of(*LAKE_BINDING.parts)
    if not lake.fs.exists(path):
        return None
    data = json.loads(lake.fs.cat_file(path))
    return LakeBinding(data["lake_id"], data["warehouse_id"], data["warehouse_location"])


def write_lake_binding(lake: Store, binding: LakeBinding) -> LakeBinding:
    """Store `binding` in the lake: atomically (a local file renamed into place; one PUT on object storage)."""
    text = json.dumps(binding.__dict__).encode()
    if lake.is_local:
        path = lake.local_path / LAKE_BINDING
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(text)
        os.replace(tmp, path)
    else:
        lake.fs.pipe_file(lake.path_of(*LAKE_BINDING.parts), text)
    return binding


def lake_has_data(lake: Store) -> bool:
    """Whether the lake holds any data files (change log or Delta)."""
    if lake.is_local:
        folder = lake.local_path / DATASET
        return folder.is_dir() and any(folder.rglob("*.parquet"))
    root = lake.path_of(DATASET)
    return lake.fs.isdir(root) and any(path.endswith(".parquet") for path in lake.fs.find(root))


def warehouse_location(warehouse: Path, lake: Store) -> str:
    """How a lake names the warehouse it mirrors: its absolute path, with the host's name for a lake on object storage
    (which other machines reach too: a warehouse at the same path elsewhere is another warehouse)."""
    path = str(warehouse.resolve())
    return path if lake.is_local else f"{socket.gethostname()}:{path}"


def bind_local_state(pipeline: Pipeline, sink_id: str, *, keep_unbound: bool) -> bool:
    """Bind the local state of `pipeline` to the sink `sink_id`, dropping it first (state, schemas, pending packages)
    if it was made for another sink; return whether it was dropped. `keep_unbound`: a state made before bindings
    existed belongs to this sink (it is adopted)."""
    pipeline.activate()
    try:
        bound: Any = pipeline.get_local_state_val(LOCAL_STATE_KEY)
    except KeyError:
        bound = None
    if bound == sink_id:
        return False
    dropped = bound is not None or (not keep_unbound and pipeline.has_data)
    if dropped:
        pipeline.drop()
        pipeline.activate()
    pipeline.set_local_state_val(LOCAL_STATE_KEY, sink_id)
    return dropped


@dataclass
class Sinks:
    """The pipelines of a layout, bound to its warehouse and lake, and what was done to bind them."""

    warehouse: Pipeline
    lake: Pipeline
    identity: WarehouseIdentity
    notes: list[str]


def open_sinks(layout: Layout, specs: Sequence[TableSpec], pipelines_dir: str | None) -> Sinks:
    """The warehouse and lake pipelines of `layout`, their local state bound to the sinks it describes; a lost
    warehouse restored from its lake. Raises `SinkMismatch` when the lake mirrors another warehouse."""
    lake_store = layout.lake_store
    warehouse_name, lake_name = pipeline_names(layout.warehouse, lake_store)
    notes: list[str] = []
    identity = read_warehouse_identity(layout.warehouse)
    had_loads = completed_loads(layout.warehouse, DATASET)
    binding = read_lake_binding(lake_store)
    location = warehouse_location(layout.warehouse, lake_store)
    restored = False
    if binding is not None and (identity is None or identity.sink_id != binding.warehouse_id):
        if not lake_has_data(lake_store):
            binding = None  # an empty lake: it mirrors whatever warehouse this is
        elif identity is None and not had_loads and binding.warehouse_location == location:
            mirror_to_delta(lake_store, specs)  # Delta first takes every load the change log holds
            from_delta = restore_warehouse(layout.warehouse, layout.delta_root)
            # Loads the lake holds without rows in Delta (a state-only load) are complete too.
            taken = _record_restored_loads(layout.warehouse, recorded_imports(lake_store))
            marks = [x for x in (from_delta, *taken) if x is not None]
            through = max(marks, key=Decimal) if marks else None
            identity = write_warehouse_identity(layout.warehouse, WarehouseIdentity(
                binding.warehouse_id, datetime.now(UTC), through))
            restored = True
            if from_delta is not None:
                notes.append(f"the warehouse {layout.warehouse} was missing or empty: restored from the lake's Delta "
                             f"tables (loads up to {through})")
        else:
            raise SinkMismatch(
                f"the lake {lake_store} mirrors the warehouse {binding.warehouse_location}, not {location}: "
                f"run with that warehouse, or give this warehouse a lake of its own (--lake)")
    if binding is not None and identity is not None and binding.warehouse_location != location:
        _refuse_a_copy(layout.warehouse, lake_store, binding, identity)
    if binding is None and lake_has_data(lake_store):
        _adopt_unbound_lake(layout.warehouse, lake_store, identity)
    if identity is None:
        identity = write_warehouse_identity(layout.warehouse, new_identity())
    if binding is None:
        binding = write_lake_binding(lake_store, LakeBinding(new_identity().sink_id, identity.sink_id, location))
    elif binding.warehouse_location != location:
        binding = write_lake_binding(lake_store, LakeBinding(binding.lake_id, identity.sink_id, location))

    warehouse = warehouse_pipeline(layout.warehouse, warehouse_name, pipelines_dir=pipelines_dir)
    if restored:
        warehouse.drop()
    if bind_local_state(warehouse, identity.sink_id, keep_unbound=had_loads) and not restored:
        notes.append(f"the local state of pipeline {warehouse_name} was made for another warehouse: restored it from "
                     f"{layout.warehouse}")
    _repair_default_schema(warehouse)
    warehouse.sync_destination()
    lake = lake_pipeline(lake_store, lake_name, pipelines_dir=pipelines_dir)
    if bind_local_state(lake, binding.lake_id, keep_unbound=lake_has_data(lake_store)):
        notes.append(f"the local state of pipeline {lake_name} was made for another lake: restored it from "
                     f"{lake_store}")
    _repair_default_schema(lake)
    lake.sync_destination()
    _refuse_a_warehouse_behind_its_lake(layout.warehouse, lake_store, lake, identity)
    return Sinks(warehouse, lake, identity, notes)


def _refuse_a_warehouse_behind_its_lake(warehouse: Path, lake_store: Store, lake: Pipeline,
                                        identity: WarehouseIdentity) -> None:
    """Refuse a warehouse older than the lake that mirrors it (an older copy or backup put in its place, a copy
    whose original went on loading): the lake holds loads the warehouse lacks, whose files it would load again."""
    lake_through, _ = held_through(lake, lake_store)
    if lake_through is None:
        return
    marks = [x for x in (*warehouse_loads(warehouse)[-1:], identity.restored_through) if x is not None]
    newest = max(marks, key=Decimal) if marks else None
    if newest is None or Decimal(lake_through) > Decimal(newest):
        raise SinkMismatch(
            f"the warehouse {warehouse.resolve()} is behind the lake {lake_store} that mirrors it (the lake holds "
            f"loads up to {lake_through}, the warehouse up to {newest or 'none'}: an older copy or backup?): delete "
            f"it, and the next run restores it from the lake; or give it a lake of its own (--lake)")


def _refuse_a_copy(warehouse: Path, lake: Store, binding: LakeBinding, identity: WarehouseIdentity) -> None:
    """Refuse a warehouse whose identity is the one the lake mirrors but at another location, unless the warehouse
    was moved: a copy (the mirrored file still there, or unverifiable on another host) would diverge from it and
    the lake would take the loads of both."""
    host, sep, path = binding.warehouse_location.partition(":") if not lake.is_local else ("", "", "")
    recorded = Path(binding.warehouse_location) if lake.is_local else Path(path) if sep else None
    same_host = lake.is_local or host == socket.gethostname()
    if same_host and recorded is not None and not recorded.exists():
        return  # moved here
    if same_host and recorded is not None:
        try:
            other = read_warehouse_identity(recorded)
        except duckdb.Error:
            other = identity  # open in another process: the file is there, so this one is a copy
        if other is None or other.sink_id != identity.sink_id:
            return  # another warehouse now lives there: this is the one the lake mirrors, moved
    raise SinkMismatch(
        f"the warehouse {warehouse.resolve()} is a copy of {binding.warehouse_location}, which the lake {lake} "
        f"mirrors: run with that warehouse, or give the copy a lake of its own (--lake); if it was moved, delete "
        f"{lake.url_of(*LAKE_BINDING.parts)}")


def _adopt_unbound_lake(warehouse: Path, lake: Store, identity: WarehouseIdentity | None) -> None:
    """Allow a lake that holds data but no binding (written before bindings existed, or its binding file deleted)
    only when every warehouse load it records is this warehouse's."""
    recorded = recorded_imports(lake)
    loads = set(warehouse_loads(warehouse))
    through = identity.restored_through if identity is not None else None
    foreign = {load for load in recorded
               if load not in loads and (through is None or Decimal(load) > Decimal(through))}
    if recorded and not foreign:
        return
    raise SinkMismatch(
        f"the lake {lake} holds data but no record of the warehouse it mirrors ({LAKE_BINDING} is missing)"
        + (f", and {len(foreign)} of its loads are not in the warehouse {warehouse.resolve()}" if recorded else "")
        + ": run with the warehouse it mirrors, or give this warehouse a lake of its own (--lake)")


def _repair_default_schema(pipeline: Pipeline) -> None:
    """Name the pipeline's only schema as its default when its state names none: dlt's own `dlt pipeline ... drop`
    leaves the state so, and dlt then never loads the package that carries the drop."""
    names = list(pipeline.schemas.keys())
    if pipeline.default_schema_name is None and len(names) == 1:
        pipeline.default_schema_name = names[0]  # type: ignore[assignment]
