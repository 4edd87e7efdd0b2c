"""The Delta mirror: the change log's loads written into Delta tables at `<lake>/bronze/delta/<table>/`.

Append tables are appended, keyed tables upserted by key (a row never replaces a newer version of its key). The mirror
reads the change log itself, not the pipelines directory, so a lost pipelines directory or a Delta table deleted by
hand is rebuilt from the change log by the next run. Each Delta commit holds the rows of one warehouse load and
carries two application transactions, written atomically with the data: `retail_bronze_mirror` = the warehouse load
id and `retail_bronze_mirror_source` = the change log's load id, both in microseconds. A warehouse load is mirrored
exactly once per table, even when the step is re-run, was killed half way, or the change log holds it twice (a lake
rebuilt from the warehouse).

A `table_resets` row (a table dropped with `dlt pipeline drop`, or reloaded with `--reload`) makes the mirror remove the
table's earlier rows, and its earlier reject and manifest records, before it writes the load that reloads it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, RemoveAction

from .. import settings
from ..crash_points import crash_point
from ..helpers import quote_ident, quote_literal
from ..outputs import (
    LOAD_ID,
    MANIFEST_TABLE,
    REJECTS_TABLE,
    SRC_FILENAME,
    STATUS_EMPTY,
    STATUS_OK,
    STATUS_WITH_REJECTS,
    TABLE_RESETS_TABLE,
)
from ..parquet_files import parquet_options
from ..redact import redact
from ..registry import TableSpec
from ..storage import Store
from ..workdirs import staging_dir
from . import DATASET

logger = logging.getLogger(__name__)

APP_ID = "retail_bronze_mirror"
SOURCE_APP_ID = "retail_bronze_mirror_source"
NOT_MIRRORED = frozenset({"change_log_imports", "init"})
"""Change-log tables that are the lake's own bookkeeping, not warehouse data."""
_CHANGE_LOG_FILE = re.compile(r"^(\d+\.\d+)\.")
"""A change log file name starts with its lake load id (`<load_id>.<file_id>.parquet`)."""
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
"""Colour codes delta-rs puts in its error texts."""
MERGE_WRITER = WriterProperties(max_row_group_size=settings.BATCH_ROWS, compression="SNAPPY")
"""Files an upsert rewrites: row groups of `settings.BATCH_ROWS` (delta-rs buffers a whole row group, and its default
of a million rows costs a partition-wise update hundreds of megabytes)."""


@dataclass(frozen=True)
class MirroredTable:
    """One table of one load package written to Delta."""

    load_id: str
    table_name: str
    rows: int
    mode: str


def load_id_version(load_id: str) -> int:
    """The Delta application-transaction version of a dlt load id (its timestamp in microseconds)."""
    return int(Decimal(load_id) * 1_000_000)


@dataclass(frozen=True)
class MirrorPlan:
    """How one table is written to Delta."""

    keys: tuple[str, ...] = ()
    """Upsert keys; empty for append tables."""
    sequence_column: str | None = None
    partition_by: tuple[str, ...] = ()
    hard_delete_marker: str | None = None
    """A boolean column whose true rows delete their key instead of being upserted."""
    replaced_files: tuple[str, ...] = ()
    """Append tables: source files delivered again with changed content; where this package holds rows of such a
    file, the file's earlier rows are deleted first, as DuckDB's delete-insert on `src_filename` does."""


def mirror_plan(table_name: str, specs: Sequence[TableSpec]) -> MirrorPlan:
    """The plan of a table: registry tables follow their entry, the manifest upserts by `src_path`."""
    if table_name == MANIFEST_TABLE:
        return MirrorPlan(keys=("src_path", "file_fingerprint"), sequence_column="processed_at")
    for spec in specs:
        if spec.name == table_name:
            keys = spec.primary_key if spec.write_disposition == "merge" else ()
            return MirrorPlan(keys=keys, sequence_column=spec.sequence_column if keys else None,
                              partition_by=spec.partition_by,
                              hard_delete_marker=spec.delete_marker if spec.hard_delete else None)
    return MirrorPlan()


@dataclass(frozen=True)
class ChangeLogFile:
    """One Parquet file of the change log (its path as the lake's file system spells it) and its lake load."""

    path: str
    lake_load: str


class ChangeLog:
    """The change log of a lake (`<lake>/bronze/parquet`): its files by table, and each file's rows read from a local
    copy (the file itself on a local lake; on object storage, a copy fetched once into `staging`)."""

    def __init__(self, store: Store, staging: Path | None = None) -> None:
        self.store = store
        self.staging = staging
        self._local: dict[str, str] = {}
        self._loads: dict[str, tuple[str, ...]] = {}

    def files(self) -> dict[str, list[ChangeLogFile]]:
        """The files of every table that belong to completed lake loads, by table, oldest load first."""
        fs, root = self.store.fs, self.store.root
        out: dict[str, list[ChangeLogFile]] = {}
        if not fs.isdir(root):
            return out
        listed = sorted(fs.find(root))
        completed = {path.rsplit("/", 1)[-1].split("__")[-1].removesuffix(".jsonl") for path in listed
                     if path.startswith(f"{root}/_dlt_loads/") and path.endswith(".jsonl")}
        for path in listed:
            folder, _, name = path[len(root) + 1:].rpartition("/")
            if "/" in folder or not folder or folder.startswith("_dlt") or folder in NOT_MIRRORED:
                continue
            match = _CHANGE_LOG_FILE.match(name)
            if match is None or not name.endswith(".parquet") or match.group(1) not in completed:
                continue
            out.setdefault(folder, []).append(ChangeLogFile(path, match.group(1)))
        for files in out.values():
            files.sort(key=lambda f: (Decimal(f.lake_load), f.path))
        return out

    def local(self, file: ChangeLogFile) -> str:
        """A local path holding the file's bytes."""
        if self.store.is_local:
            return file.path
        if file.path not in self._local:
            if self.staging is None:
                raise ValueError("a change log on object storage is read through a staging directory")
            target = self.staging / f"{len(self._local)}-{file.path.rsplit('/', 1)[-1]}"
            self.store.fs.get_file(file.path, str(target))
            self._local[file.path] = str(target)
        return self._local[file.path]

    def warehouse_loads(self, file: ChangeLogFile) -> tuple[str, ...]:
        """The warehouse loads the file's rows come from."""
        if file.path not in self._loads:
            self._loads[file.path] = _warehouse_loads(self.local(file))
        return self._loads[file.path]


def change_log_files(change_log: Store) -> dict[str, list[ChangeLogFile]]:
    """The files of every table of the change log `change_log` that belong to completed lake loads (see
    `ChangeLog.files`)."""
    return ChangeLog(change_log).files()


def _warehouse_loads(path: str) -> tuple[str, ...]:
    """The distinct `_dlt_load_id` values of a file: from its statistics when they name one value, else read."""
    metadata = pq.ParquetFile(path).metadata
    names = metadata.schema.names
    if LOAD_ID not in names:
        return ()
    column = names.index(LOAD_ID)
    bounds: set[Any] = set()
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            bounds.clear()
            break
        bounds.update({stats.min, stats.max})
    if len(bounds) == 1:
        value = bounds.pop()
        return (value.decode() if isinstance(value, bytes) else str(value),)
    values = pq.read_table(path, columns=[LOAD_ID]).column(0)
    return tuple(sorted((str(v) for v in pc.unique(values).to_pylist() if v is not None), key=Decimal))


@dataclass(frozen=True)
class DeltaTableFailure:
    """A Delta table that could not be written or compacted; the other tables were."""

    table_name: str
    target: str
    error: str
    transient: bool = False
    """The storage failed (after its retries), not the table: the next run writes it again."""

    def __str__(self) -> str:
        if self.transient:
            return (f"Delta table {self.table_name} at {self.target} could not be written ({self.error}); every "
                    "other table was; the next run writes it")
        return (f"Delta table {self.table_name} could not be written ({self.error}); every other table was. Repair "
                f"it, or remove {self.target} to have the next run rebuild it from the change log")


class DeltaTablesFailed(Exception):
    """Some Delta tables could not be written or compacted (`failures`); every other table was (`done`)."""

    def __init__(self, failures: Sequence[DeltaTableFailure], done: Sequence[Any]) -> None:
        super().__init__("; ".join(str(f) for f in failures))
        self.failures = list(failures)
        self.done = list(done)


def _failure(target: Store, name: str, error: Exception) -> DeltaTableFailure:
    text = " ".join(_TERMINAL_ESCAPE.sub("", re.split(r"\n\s*0: ", str(error), maxsplit=1)[0]).split())
    transient = isinstance(error, OSError) and not target.is_local
    return DeltaTableFailure(name, str(target), redact(f"{type(error).__name__}: {text[:300]}"), transient)


def open_delta(target: Store) -> DeltaTable | None:
    """The Delta table at `target`, None where there is none."""
    uri, options = target.url_of(), target.delta_options()
    if not DeltaTable.is_deltatable(uri, storage_options=options or None):
        return None
    return DeltaTable(uri, storage_options=options or None)


def delta_tables(delta_root: Store) -> list[tuple[str, Store]]:
    """The Delta tables directly under `delta_root`, by name."""
    fs, root = delta_root.fs, delta_root.root
    if not fs.isdir(root):
        return []
    names = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))
    found = []
    for name in names:
        target = delta_root.child(name)
        if DeltaTable.is_deltatable(target.url_of(), storage_options=target.delta_options() or None):
            found.append((name, target))
    return found


def mirror_to_delta(lake: Store, specs: Sequence[TableSpec]) -> list[MirroredTable]:
    """Mirror every warehouse load of the change log of `lake` that Delta does not hold yet, oldest first.

    A table that cannot be written (a broken log, a foreign schema) does not stop the others: its later loads wait,
    since each table takes its loads in order, and once every other table is mirrored `DeltaTablesFailed` names it.
    """
    delta_root = lake.child(DATASET, "delta")
    with staging_dir("mirror") as staging:
        log = ChangeLog(lake.child(DATASET, "parquet"), Path(staging))
        return _mirror(log, delta_root, specs)


def _mirror(log: ChangeLog, delta_root: Store, specs: Sequence[TableSpec]) -> list[MirroredTable]:
    files = log.files()
    failed: dict[str, DeltaTableFailure] = {}
    tables: dict[str, _MirrorTarget] = {}
    for name in files:
        try:
            tables[name] = _MirrorTarget.of(delta_root.child(name))
        except Exception as error:  # a table that cannot even be opened; reported, never swallowed
            failed[name] = _failure(delta_root.child(name), name, error)
    groups: dict[str, dict[str, list[ChangeLogFile]]] = {}
    for name, target in tables.items():
        for file in files[name]:
            if Decimal(file.lake_load) <= target.source_version:
                continue
            for load in log.warehouse_loads(file):
                if Decimal(load) > target.version:
                    groups.setdefault(load, {}).setdefault(name, []).append(file)
    written = []
    names = {s.name for s in specs}
    for load in sorted(groups, key=Decimal):
        by_table = groups[load]
        manifest = [log.local(f) for f in by_table.get(MANIFEST_TABLE, [])] or _files_of(log, files, MANIFEST_TABLE,
                                                                                          load)
        resets = _files_of(log, files, TABLE_RESETS_TABLE, load)
        for name, problem in _apply_resets(delta_root, resets, load, skip=set(failed)):
            failed[name] = _failure(delta_root.child(name), name, problem)
        redelivered, emptied = _redelivered_files(manifest, load)
        for name in sorted(set(emptied) & names - set(failed)):
            if mirror_plan(name, specs).keys or name not in tables or tables[name].version >= Decimal(load):
                continue
            try:
                _delete_files(delta_root.child(name), sorted(emptied[name]))
            except Exception as error:  # one table's failure; reported, never swallowed
                failed[name] = _failure(delta_root.child(name), name, error)
        for name in sorted(by_table):
            if name in failed:
                continue
            plan = mirror_plan(name, specs)
            if not plan.keys and name in names:
                plan = dataclasses.replace(plan, replaced_files=tuple(sorted(redelivered.get(name, ()))))
            table_files = by_table[name]
            lake_load = max((f.lake_load for f in table_files), key=Decimal)
            mixed = any(len(log.warehouse_loads(f)) > 1 for f in table_files)
            source = PackageRows.of([log.local(f) for f in table_files], only_load=load if mixed else None)
            try:
                result = mirror_table(delta_root.child(name), source, load, lake_load, plan)
            except Exception as error:  # any failure of one table's write; reported, never swallowed
                failed[name] = _failure(delta_root.child(name), name, error)
                continue
            if result is not None:
                written.append(MirroredTable(load, name, *result))
                crash_point("delta_table_mirrored")
    if failed:
        raise DeltaTablesFailed(list(failed.values()), written)
    return written


def mirror_and_compact(lake: Store, specs: Sequence[TableSpec]
                       ) -> tuple[list[MirroredTable], list[Compaction], list[DeltaTableFailure]]:
    """`mirror_to_delta`, then `compact_tables` on the tables it did not fail on: what was mirrored, what was
    compacted, and the tables that could not be written (each once)."""
    try:
        mirrored, failures = mirror_to_delta(lake, specs), []
    except DeltaTablesFailed as incomplete:
        mirrored, failures = incomplete.done, incomplete.failures
    try:
        compacted = compact_tables(lake.child(DATASET, "delta"), skip={f.table_name for f in failures})
    except DeltaTablesFailed as incomplete:
        compacted, failures = incomplete.done, [*failures, *incomplete.failures]
    return mirrored, compacted, failures


def _files_of(log: ChangeLog, files: dict[str, list[ChangeLogFile]], table: str, load: str) -> list[str]:
    return [log.local(f) for f in files.get(table, []) if load in log.warehouse_loads(f)]


@dataclass(frozen=True)
class _MirrorTarget:
    """What a Delta table holds: the newest warehouse load and change log load mirrored into it."""

    version: Decimal
    source_version: Decimal

    @classmethod
    def of(cls, target: Store) -> _MirrorTarget:
        table = open_delta(target)
        if table is None:
            return cls(Decimal(-1), Decimal(-1))
        version = Decimal(table.transaction_version(APP_ID) or -1) / 1_000_000
        # Tables mirrored before the source version existed recorded the change log's load id as their version.
        source = table.transaction_version(SOURCE_APP_ID)
        return cls(version, Decimal(source) / 1_000_000 if source is not None else version)


def _apply_resets(delta_root: Store, reset_files: list[str], load: str,
                  skip: set[str]) -> list[tuple[str, Exception]]:
    """Remove the earlier rows of the tables reset by warehouse load `load`, and their earlier reject and manifest
    records (records of `load` itself stay: the step may be redone after a kill); return the tables that failed."""
    if not reset_files:
        return []
    resets = pq.read_table(reset_files, columns=["table_name", LOAD_ID])
    reset = sorted(set(resets.filter(pc.equal(resets[LOAD_ID], load))["table_name"].to_pylist()))
    failed: list[tuple[str, Exception]] = []
    for name in reset:
        deletes = [(name, f"{LOAD_ID} <> {quote_literal(load)}")]
        deletes += [(shared, f"table_name = {quote_literal(name)} AND (load_id IS NULL OR load_id <> "
                             f"{quote_literal(load)})") for shared in (REJECTS_TABLE, MANIFEST_TABLE)]
        for table_name, predicate in deletes:
            if table_name in skip:
                continue
            try:
                table = open_delta(delta_root.child(table_name))
                if table is None:
                    continue
                if table_name != name or (table.transaction_version(APP_ID) or -1) < load_id_version(load):
                    table.delete(predicate=predicate)
            except Exception as error:  # one table's failure; reported by the caller, never swallowed
                failed.append((table_name, error))
    return failed


def mirror_table(target: Store, source: PackageRows, load_id: str, lake_load: str,
                 plan: MirrorPlan) -> tuple[int, str] | None:
    """Write the rows of warehouse load `load_id` (from change log load `lake_load`) of one table to the Delta table
    `target`; None if the table holds this load already."""
    version = load_id_version(load_id)
    commit = CommitProperties(app_transactions=[Transaction(app_id=APP_ID, version=version),
                                                Transaction(app_id=SOURCE_APP_ID, version=load_id_version(lake_load))],
                              custom_metadata={"retail_bronze.load_id": load_id})
    table = open_delta(target)
    if table is not None and (table.transaction_version(APP_ID) or -1) >= version:
        return None
    rows = source.count()
    # A new table gets no rows marked for hard delete: there is nothing for them to delete.
    deleted = plan.hard_delete_marker if table is None else None
    if table is not None and plan.replaced_files:
        delivered = {name for batch in source.batches(columns=["src_filename"])
                     for name in pc.unique(batch.column(0)).to_pylist()}
        replaced = sorted(delivered & set(plan.replaced_files))
        if replaced:
            _delete_files(target, replaced, table)
    if table is None or not plan.keys:
        _append(target, table, source, plan.partition_by, version, commit, deleted)
        return rows, "append"
    if plan.partition_by and _partition_wise(table, source, plan):
        _upsert_by_partition(target, source, plan, load_id, commit)
        return rows, "upsert by partition"
    _upsert(table, source.reader(), plan, commit)
    return rows, "upsert"


def _delete_files(target: Store, files: Sequence[str], table: DeltaTable | None = None) -> None:
    """Delete the rows of the source files `files` from the Delta table `target` (if it exists)."""
    table = table if table is not None else open_delta(target)
    if table is not None:
        table.delete(predicate=f"{SRC_FILENAME} IN ({', '.join(quote_literal(f) for f in files)})")


def _partition_wise(table: DeltaTable, source: PackageRows, plan: MirrorPlan) -> bool:
    """Whether an upsert may run one partition at a time: partition types it can name in a predicate, and no key of
    the package held in the table under other partition values (each partition's merge would miss it)."""
    types = [source.schema.field(c).type for c in plan.partition_by]
    if not all(pa.types.is_date(t) or pa.types.is_integer(t) or pa.types.is_string(t) for t in types):
        return False
    keys = ", ".join(quote_ident(k) for k in plan.keys)
    moved = " OR ".join(f"t.{quote_ident(c)} IS DISTINCT FROM s.{quote_ident(c)}" for c in plan.partition_by)
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        con.register("target", table.to_pyarrow_dataset())
        found = con.execute(f"SELECT count(*) FROM (SELECT {keys}, {', '.join(map(quote_ident, plan.partition_by))} "
                            f"FROM target) t JOIN {source.duckdb_relation()} s USING ({keys}) WHERE {moved}").fetchone()
    if found and found[0]:
        logger.warning("%s: %d key(s) of this load are stored under other partition values; upserting into the "
                       "whole table at once", table.table_uri, found[0])
        return False
    return True


def _upsert_by_partition(target: Store, source: PackageRows, plan: MirrorPlan, load_id: str,
                         commit: CommitProperties) -> None:
    """Upsert the package one partition at a time, so that delta-rs rewrites (and buffers) one partition's files at
    once; only the last commit carries the load's application transaction, and a partial run is redone whole (an
    upsert of the same rows is idempotent)."""
    with staging_dir("merge") as tmp:
        with _PartitionFiles(Path(tmp), source.schema, plan.partition_by, "source", keep_partitions=True) as split:
            for batch in source.batches():
                split.write(batch)
            written = split.close()
        by_partition: dict[str, list[str]] = {}
        for path, _ in written:
            by_partition.setdefault(str(Path(path).parent), []).append(path)
        partitions = sorted(by_partition)
        for i, folder in enumerate(partitions):
            values = _hive_partition_values(Path(by_partition[folder][0]).relative_to(tmp).as_posix())
            where = " AND ".join(_partition_predicate(c, values[c], source.schema.field(c).type)
                                 for c in plan.partition_by)
            last = i == len(partitions) - 1
            step = commit if last else CommitProperties(custom_metadata={"retail_bronze.load_id": load_id,
                                                                        "retail_bronze.partition": folder})
            table = open_delta(target)
            if table is None:
                raise FileNotFoundError(f"the Delta table {target} is gone")
            _upsert(table, PackageRows.of(by_partition[folder]).reader(), plan, step, where)


def _partition_predicate(column: str, value: str | None, type_: pa.DataType) -> str:
    name = f"t.{quote_ident(column)}"
    if value is None:
        return f"{name} IS NULL"
    if pa.types.is_integer(type_):
        return f"{name} = {int(value)}"
    if pa.types.is_date(type_):
        return f"{name} = CAST({quote_literal(value)} AS DATE)"
    return f"{name} = {quote_literal(value)}"


def _upsert(table: DeltaTable, rows: pa.RecordBatchReader, plan: MirrorPlan, commit: CommitProperties,
            partition: str | None = None) -> None:
    """Merge `rows` into `table` by key (in one partition when `partition` is a target predicate); a row never
    replaces a newer version of its key, and rows marked for hard delete remove their key.

    The rows are merged without their fields' metadata (the contract's checks, see `schemas.schemas`): delta-rs merges
    the source's field metadata into the table's, fails on a changed value and, when the source has a key the table
    lacks, writes the column as null.
    """
    plain = pa.schema([f.remove_metadata() for f in rows.schema])
    rows = pa.RecordBatchReader.from_batches(plain, (pa.record_batch(b.columns, schema=plain) for b in rows))
    predicate = " AND ".join([*([partition] if partition else []),
                              *(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in plan.keys)])
    seq = plan.sequence_column
    newer = f"s.{quote_ident(seq)} >= t.{quote_ident(seq)}" if seq else None
    merger = table.merge(rows, predicate=predicate, source_alias="s", target_alias="t", merge_schema=True,
                         writer_properties=MERGE_WRITER, commit_properties=commit)
    if plan.hard_delete_marker:
        marker = f"s.{quote_ident(plan.hard_delete_marker)}"
        deleting = f"{marker} AND ({newer})" if newer else marker
        merger = (merger.when_matched_delete(predicate=deleting)
                  .when_matched_update_all(predicate=f"NOT {marker} AND ({newer})" if newer else f"NOT {marker}")
                  .when_not_matched_insert_all(predicate=f"NOT {marker}"))
    else:
        merger = merger.when_matched_update_all(predicate=newer).when_not_matched_insert_all()
    merger.execute()


def _kept(deleted: str | None) -> pc.Expression | None:
    """Rows not marked for hard delete by the column `deleted` (a null marker keeps the row)."""
    return ~pc.field(deleted) | pc.field(deleted).is_null() if deleted else None


@dataclass(frozen=True)
class PackageRows:
    """One table's Parquet files of one warehouse load, read a batch at a time in one schema (the union of the
    files'); `only_load` keeps the rows of that load only, for files that hold several."""

    files: tuple[str, ...]
    schema: pa.Schema
    only_load: str | None = None

    @classmethod
    def of(cls, files: Sequence[str], only_load: str | None = None) -> PackageRows:
        """The rows of `files`; dictionary-encoded columns (dlt writes `_dlt_load_id` so) are read as their values."""
        schemas = [pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                              for f in pq.read_schema(path)]) for path in files]
        return cls(tuple(files), pa.unify_schemas(schemas, promote_options="permissive"), only_load)

    def count(self) -> int:
        if self.only_load is None:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        with duckdb.connect() as con:
            found = con.execute(f"SELECT count(*) FROM {self.duckdb_relation()}").fetchone()
        return int(found[0]) if found else 0

    def batches(self, columns: Sequence[str] | None = None, kept: pc.Expression | None = None,
                batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows (only `columns`, only rows where `kept` holds), each batch cast to the union schema.

        Files are read without pyarrow's pre-buffering, which would hold whole row groups of every column at once.
        """
        schema = pa.schema([self.schema.field(c) for c in columns]) if columns is not None else self.schema
        read = list(dict.fromkeys([*schema.names, *([LOAD_ID] if self.only_load is not None else [])]))
        for path in self.files:
            file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            present = [c for c in read if c in file.schema_arrow.names]
            for batch in file.iter_batches(batch_size=batch_size or settings.BATCH_ROWS, columns=present):
                if self.only_load is not None:
                    load_ids = batch.column(LOAD_ID)
                    batch = batch.filter(pc.equal(load_ids.cast(pa.string()) if pa.types.is_dictionary(
                        load_ids.type) else load_ids, self.only_load))
                n = batch.num_rows
                aligned = pa.record_batch([batch.column(c).cast(f.type) if c in present else pa.nulls(n, f.type)
                                           for c, f in zip(schema.names, schema, strict=True)], schema=schema)
                yield aligned.filter(kept) if kept is not None else aligned

    def reader(self, kept: pc.Expression | None = None) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.schema, self.batches(kept=kept))

    def duckdb_relation(self) -> str:
        """DuckDB relation reading the files by column name (the rows of `only_load` only, when set)."""
        scan = f"read_parquet([{', '.join(quote_literal(f) for f in self.files)}], union_by_name = true)"
        if self.only_load is None:
            return scan
        return f"(SELECT * FROM {scan} WHERE {LOAD_ID} = {quote_literal(self.only_load)})"


def _append(target: Store, table: DeltaTable | None, source: PackageRows, partition_by: tuple[str, ...],
            version: int, commit: CommitProperties, deleted: str | None) -> None:
    """Append to a table (partitioned or not) with bounded memory, then commit all files as one transaction.

    The package is read a batch at a time and split by partition into Parquet files (`_PartitionFiles`); a package
    with more partitions than `settings.DELTA_MAX_OPEN_FILES` is first sorted by partition (DuckDB spills to disk) so
    that each partition is written once. On a local lake the files are written in the table's directory; on object
    storage they are written locally, then uploaded. Files of a killed attempt carry the same names and are
    overwritten by the next one; unreferenced files never become part of the table (vacuum removes them). Rows whose
    `deleted` column is true are left out."""
    if table is None:
        table = DeltaTable.create(target.url_of(), schema=source.schema, partition_by=list(partition_by),
                                  storage_options=target.delta_options() or None)
    known = set(table.schema().to_arrow().names)
    added = [f for f in DeltaSchema.from_arrow(source.schema).fields if f.name not in known]
    if added:
        table.alter.add_columns(added)
    order = ", ".join(quote_ident(c) for c in partition_by)
    with ExitStack() as stack:
        base = target.local_path if target.is_local else Path(stack.enter_context(staging_dir("delta-append")))
        con = stack.enter_context(duckdb.connect())
        files = stack.enter_context(_PartitionFiles(base, source.schema, partition_by, f"part-{version}"))
        con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        found = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {order} FROM {source.duckdb_relation()})"
                            ).fetchone() if partition_by else None
        if found and found[0] > settings.DELTA_MAX_OPEN_FILES:
            where = f"WHERE {quote_ident(deleted)} IS NOT TRUE" if deleted else ""
            batches: Iterable[pa.RecordBatch] = con.execute(
                f"SELECT * FROM {source.duckdb_relation()} {where} ORDER BY {order}").to_arrow_reader(settings.BATCH_ROWS)
        else:
            batches = source.batches(kept=_kept(deleted))
        for batch in batches:
            files.write(batch)
        written = [(Path(path).relative_to(base).as_posix(), Path(path).stat().st_size, rows)
                   for path, rows in files.close()]
        if not target.is_local:
            for rel, _, _ in written:
                target.fs.put_file(str(base / rel), target.path_of(rel))
    pa.default_memory_pool().release_unused()
    now = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = [
        AddAction(path=rel, size=size, partition_values=_hive_partition_values(rel), modification_time=now,
                  data_change=True, stats=json.dumps({"numRecords": n}))
        for rel, size, n in written
    ]
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=list(partition_by),
                                   commit_properties=commit)


Partition = tuple[str | None, ...]
"""One partition's values, as text (None for a null value)."""


@dataclass
class _OpenFile:
    writer: pq.ParquetWriter
    path: str
    rows: int = 0
    writes: list[Future[None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _PartitionFiles:
    """Parquet data files of one append, under hive-style partition directories (`col=value/`).

    Rows wait per partition until a partition has `settings.BATCH_ROWS` of them (one row group) or all partitions hold
    `settings.DELTA_MAX_PENDING_ROWS` together. Row groups are encoded by `settings.DELTA_WRITER_THREADS` threads while the next batches are read,
    with at most `settings.DELTA_WRITER_THREADS` * 2 row groups in flight; at most `settings.DELTA_MAX_OPEN_FILES` files are open, and a file holds
    at most `settings.DELTA_MAX_ROWS_PER_FILE` rows. Partition columns are not stored in the files (Delta keeps them in the log)."""

    def __init__(self, target: Path, schema: pa.Schema, partition_by: tuple[str, ...], prefix: str, *,
                 keep_partitions: bool = False) -> None:
        """`keep_partitions`: store the partition columns in the files too (files to read back, not Delta's)."""
        self.target = target
        self.partition_by = list(partition_by)
        self.data_schema = schema if keep_partitions else pa.schema([f for f in schema if f.name not in partition_by])
        self.prefix = prefix
        self.pending: dict[Partition, list[pa.Table]] = {}
        self.pending_rows = 0
        self.open: OrderedDict[Partition, _OpenFile] = OrderedDict()
        self.in_flight: deque[Future[None]] = deque()
        self.written: list[tuple[str, int]] = []
        self.files = 0
        self.pool = ThreadPoolExecutor(max_workers=settings.DELTA_WRITER_THREADS, thread_name_prefix="delta-write")

    def __enter__(self) -> _PartitionFiles:
        return self

    def __exit__(self, *error: object) -> None:
        """Stop the encoding threads, also when writing failed (files not closed are never part of a table)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def write(self, batch: pa.RecordBatch) -> None:
        rows = pa.Table.from_batches([batch])
        if not self.partition_by:
            self._add((), rows.select(self.data_schema.names))
            return
        distinct = rows.select(self.partition_by).group_by(self.partition_by).aggregate([])
        labels = zip(*(pc.cast(distinct[c], pa.string()).to_pylist() for c in self.partition_by), strict=True)
        if distinct.num_rows == 1:
            self._add(next(labels), rows.select(self.data_schema.names))
            return
        for i, key in enumerate(labels):
            mask = functools.reduce(pc.and_kleene, [
                pc.is_null(rows[c]) if value is None else pc.fill_null(pc.equal(rows[c], distinct[c][i]), False)
                for c, value in zip(self.partition_by, key, strict=True)
            ])
            self._add(key, rows.filter(mask).select(self.data_schema.names))

    def _add(self, key: Partition, part: pa.Table) -> None:
        self.pending.setdefault(key, []).append(part)
        self.pending_rows += part.num_rows
        if sum(t.num_rows for t in self.pending[key]) >= settings.BATCH_ROWS:
            self._flush(key)
        if self.pending_rows >= settings.DELTA_MAX_PENDING_ROWS:
            for key in list(self.pending):
                self._flush(key)

    def close(self) -> list[tuple[str, int]]:
        """Write what is pending and close every file; return (path, rows) of each file written."""
        for key in list(self.pending):
            self._flush(key)
        for key in list(self.open):
            self._close(key)
        return self.written

    def _flush(self, key: Partition) -> None:
        rows = pa.concat_tables(self.pending.pop(key)).cast(self.data_schema)
        self.pending_rows -= rows.num_rows
        offset = 0
        while offset < rows.num_rows:
            file = self._file(key, rows)
            take = min(rows.num_rows - offset, settings.DELTA_MAX_ROWS_PER_FILE - file.rows)
            self._submit(file, rows.slice(offset, take))
            file.rows += take
            offset += take
            if file.rows >= settings.DELTA_MAX_ROWS_PER_FILE:
                self._close(key)

    def _submit(self, file: _OpenFile, rows: pa.Table) -> None:
        while len(self.in_flight) >= 2 * settings.DELTA_WRITER_THREADS:
            self.in_flight.popleft().result()

        def write() -> None:
            with file.lock:
                file.writer.write_table(rows, row_group_size=settings.BATCH_ROWS)

        future = self.pool.submit(write)
        file.writes.append(future)
        self.in_flight.append(future)

    def _file(self, key: Partition, sample: pa.Table) -> _OpenFile:
        if key in self.open:
            self.open.move_to_end(key)
            return self.open[key]
        if len(self.open) >= settings.DELTA_MAX_OPEN_FILES:
            self._close(next(iter(self.open)))
        folder = self.target.joinpath(*(f"{quote(c, safe='')}={HIVE_NULL if v is None else quote(v, safe='')}"
                                        for c, v in zip(self.partition_by, key, strict=True)))
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / f"{self.prefix}-{self.files}.parquet")
        self.files += 1
        writer = pq.ParquetWriter(path, self.data_schema, **parquet_options(sample))
        self.open[key] = _OpenFile(writer, path)
        return self.open[key]

    def _close(self, key: Partition) -> None:
        file = self.open.pop(key)
        for future in file.writes:
            future.result()
        file.writer.close()
        self.written.append((file.path, file.rows))


def _redelivered_files(manifest_files: list[str], load_id: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Source files of each table that warehouse load `load_id` loads again with changed content, and those of them
    whose new version has no valid row (their earlier rows go, as `sinks.warehouse.drop_emptied_files` does)."""
    if not manifest_files:
        return {}, {}
    manifest = ds.dataset(manifest_files, format="parquet").to_table(
        columns=["table_name", "src_path", "replaced_fingerprint", "status", "valid_count", "load_id"])
    redelivered: dict[str, set[str]] = {}
    emptied: dict[str, set[str]] = {}
    for row in manifest.to_pylist():
        if row["load_id"] != load_id or row["replaced_fingerprint"] is None:
            continue
        if row["status"] in (STATUS_OK, STATUS_WITH_REJECTS, STATUS_EMPTY):
            redelivered.setdefault(row["table_name"], set()).add(row["src_path"])
            if row["valid_count"] == 0:
                emptied.setdefault(row["table_name"], set()).add(row["src_path"])
    return redelivered, emptied


def _hive_partition_values(relative_path: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in relative_path.split("/")[:-1]:
        name, _, value = segment.partition("=")
        values[unquote(name)] = None if value == HIVE_NULL else unquote(value)
    return values


@dataclass(frozen=True)
class Compaction:
    """One table's compaction: files before and after."""

    table_name: str
    files_before: int
    files_after: int


def compact_tables(delta_root: Store, *, min_files: int | None = None, force: bool = False,
                   skip: Iterable[str] = ()) -> list[Compaction]:
    """Rewrite small files of every Delta table under `delta_root` (but those named in `skip`) into files of about
    `settings.TARGET_FILE_SIZE`.

    A table is compacted when it has at least `min_files` files averaging under a quarter of the target size (or
    always with `force`). Vacuum then removes only files unreferenced for longer than the default retention (7 days),
    so readers of older versions are never broken. A table that cannot be read or compacted does not stop the
    others: `DeltaTablesFailed` names it at the end.
    """
    done = []
    failed = []
    skipped = set(skip)
    for name, target in delta_tables(delta_root):
        if name in skipped:
            continue
        try:
            compaction = _compact(name, target, min_files=min_files or settings.DELTA_SMALL_FILES_THRESHOLD,
                                  force=force)
        except Exception as error:  # any failure of one table; reported, never swallowed
            failed.append(_failure(target, name, error))
            continue
        if compaction is not None:
            done.append(compaction)
    if failed:
        raise DeltaTablesFailed(failed, done)
    return done


def _compact(name: str, target: Store, *, min_files: int, force: bool) -> Compaction | None:
    table = open_delta(target)
    if table is None:
        return None
    sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
    small = len(sizes) >= min_files and sum(sizes) / max(len(sizes), 1) < settings.TARGET_FILE_SIZE / 4
    if not sizes or not (force or small):
        return None
    table.optimize.compact(target_size=settings.TARGET_FILE_SIZE)
    table.vacuum(dry_run=False)
    reopened = open_delta(target)
    return Compaction(name, len(sizes), len(reopened.file_uris()) if reopened is not None else 0)
