"""The post-load step mirroring the lake pipeline's loaded packages into Delta tables at `<root>/<table>/`.

Append tables are appended, keyed tables upserted by key (a row never replaces a newer version of its key). Each
commit carries the load id as a Delta application transaction (`app_id` = `retail_bronze_mirror`, version = the load id
in microseconds), written atomically with the data, so a load id is mirrored exactly once even when the step is re-run
or was killed half way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, RemoveAction
from dlt.pipeline.pipeline import Pipeline

from .crash_points import crash_point
from .extract import MANIFEST_TABLE
from .registry import TableSpec
from .sinks import loaded_load_ids, package_files
from .validate import quote_ident, quote_literal

APP_ID = "retail_bronze_mirror"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
SORT_BATCH_ROWS = 128 * 1024
MAX_OPEN_FILES = 32
MAX_ROWS_PER_FILE = 4 * 1024 * 1024
TARGET_FILE_SIZE = 200 * 1024 * 1024
"""Target size of Delta data files written by the mirror and by compaction."""
SMALL_FILES_THRESHOLD = 32
"""A table with at least this many files, averaging under a quarter of the target size, is compacted after a run."""


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


def mirror_to_delta(pipeline: Pipeline, delta_root: Path, specs: Sequence[TableSpec]) -> list[MirroredTable]:
    """Mirror every loaded package of `pipeline` not yet in Delta, oldest first; return what was written."""
    written = []
    for load_id in loaded_load_ids(pipeline):
        files_by_table = package_files(pipeline, load_id, loaded_only=True)
        redelivered = _redelivered_files(files_by_table.get(MANIFEST_TABLE, []))
        for table, files in sorted(files_by_table.items()):
            plan = mirror_plan(table, specs)
            if not plan.keys and table in {s.name for s in specs}:
                plan = dataclasses.replace(plan, replaced_files=tuple(sorted(redelivered.get(table, ()))))
            result = mirror_table(delta_root / table, files, load_id, plan)
            if result is not None:
                written.append(MirroredTable(load_id, table, *result))
                crash_point("delta_table_mirrored")
    return written


def mirror_table(target: Path, files: list[str], load_id: str, plan: MirrorPlan) -> tuple[int, str] | None:
    """Write one package's files of one table to the Delta table `target`; None if this load id is already there."""
    version = load_id_version(load_id)
    commit = CommitProperties(app_transactions=[Transaction(app_id=APP_ID, version=version)],
                              custom_metadata={"retail_bronze.load_id": load_id})
    table = DeltaTable(str(target)) if DeltaTable.is_deltatable(str(target)) else None
    if table is not None and (table.transaction_version(APP_ID) or -1) >= version:
        return None
    source = ds.dataset(files, format="parquet")
    rows = source.count_rows()
    if table is None and plan.hard_delete_marker:
        source = ds.dataset(source.to_table(filter=~ds.field(plan.hard_delete_marker)))
    if table is not None and plan.replaced_files:
        delivered = set(pc.unique(source.to_table(columns=["src_filename"])["src_filename"]).to_pylist())
        replaced = sorted(delivered & set(plan.replaced_files))
        if replaced:
            table.delete(predicate=f"src_filename IN ({', '.join(quote_literal(f) for f in replaced)})")
    if table is None or not plan.keys:
        if plan.partition_by:
            _append_partitioned(target, table, source, plan.partition_by, version, commit)
        else:
            write_deltalake(str(target), source.scanner().to_reader(), mode="append", schema_mode="merge",
                            partition_by=list(plan.partition_by) or None, target_file_size=TARGET_FILE_SIZE,
                            commit_properties=commit)
        return rows, "append"
    predicate = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in plan.keys)
    seq = plan.sequence_column
    newer = f"s.{quote_ident(seq)} >= t.{quote_ident(seq)}" if seq else None
    merger = table.merge(source.scanner().to_reader(), predicate=predicate, source_alias="s", target_alias="t",
                         merge_schema=True, commit_properties=commit)
    if plan.hard_delete_marker:
        marker = f"s.{quote_ident(plan.hard_delete_marker)}"
        deleting = f"{marker} AND ({newer})" if newer else marker
        merger = (merger.when_matched_delete(predicate=deleting)
                  .when_matched_update_all(predicate=f"NOT {marker} AND ({newer})" if newer else f"NOT {marker}")
                  .when_not_matched_insert_all(predicate=f"NOT {marker}"))
    else:
        merger = merger.when_matched_update_all(predicate=newer).when_not_matched_insert_all()
    merger.execute()
    return rows, "upsert"


def _partition_count(source: ds.Dataset, partition_by: tuple[str, ...]) -> int:
    """Distinct partition values in a package (only the partition columns are read)."""
    with duckdb.connect() as con:
        con.register("package", source)
        found = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(quote_ident(c) for c in partition_by)} "
                            f"FROM package)").fetchone()
    return int(found[0]) if found else 0


def _append_partitioned(target: Path, table: DeltaTable | None, source: ds.Dataset, partition_by: tuple[str, ...],
                        version: int, commit: CommitProperties) -> None:
    """Append to a partitioned table with bounded memory, then commit all files as one transaction.

    pyarrow streams the package to Parquet files, a row group at a time, with at most `MAX_OPEN_FILES` files open;
    a package with more partitions than that is first sorted by partition (DuckDB spills to disk) so that each
    partition is written once. Files of a killed attempt carry the same names and are overwritten by the next one;
    unreferenced files never become part of the table."""
    if table is None:
        table = DeltaTable.create(str(target), schema=source.schema, partition_by=list(partition_by))
    known = set(table.schema().to_arrow().names)
    added = [f for f in DeltaSchema.from_arrow(source.schema).fields if f.name not in known]
    if added:
        table.alter.add_columns(added)
    written: list[tuple[str, int, int]] = []
    order = ", ".join(quote_ident(c) for c in partition_by)
    with duckdb.connect() as con:
        con.execute("SET memory_limit = '512MB'")
        con.register("package", source)
        sort = _partition_count(source, partition_by) > MAX_OPEN_FILES
        reader = (con.execute(f"SELECT * FROM package ORDER BY {order}").to_arrow_reader(SORT_BATCH_ROWS) if sort
                  else source.scanner(batch_size=SORT_BATCH_ROWS, batch_readahead=2, fragment_readahead=1).to_reader())
        ds.write_dataset(reader, str(target), format="parquet", partitioning=list(partition_by),
                         partitioning_flavor="hive", basename_template=f"part-{version}-{{i}}.parquet",
                         existing_data_behavior="overwrite_or_ignore", max_open_files=MAX_OPEN_FILES,
                         max_rows_per_file=MAX_ROWS_PER_FILE, min_rows_per_group=SORT_BATCH_ROWS // 2,
                         max_rows_per_group=SORT_BATCH_ROWS,
                         file_visitor=lambda f: written.append((f.path, f.size, f.metadata.num_rows)))
    now = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = [
        AddAction(path=(rel := Path(path).relative_to(target).as_posix()), size=size,
                  partition_values=_hive_partition_values(rel), modification_time=now, data_change=True,
                  stats=json.dumps({"numRecords": n}))
        for path, size, n in written
    ]
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=list(partition_by),
                                   commit_properties=commit)


def _redelivered_files(manifest_files: list[str]) -> dict[str, set[str]]:
    """Source files of each table that this package loads again with changed content."""
    if not manifest_files:
        return {}
    manifest = ds.dataset(manifest_files, format="parquet").to_table(
        columns=["table_name", "src_path", "replaced_fingerprint", "status"])
    out: dict[str, set[str]] = {}
    for row in manifest.to_pylist():
        if row["replaced_fingerprint"] is not None and row["status"] != "changed_skipped":
            out.setdefault(row["table_name"], set()).add(row["src_path"])
    return out


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


def compact_tables(delta_root: Path, *, min_files: int = SMALL_FILES_THRESHOLD, force: bool = False) -> list[Compaction]:
    """Rewrite small files of every Delta table under `delta_root` into files of about `TARGET_FILE_SIZE`.

    A table is compacted when it has at least `min_files` files averaging under a quarter of the target size (or
    always with `force`). Vacuum then removes only files unreferenced for longer than the default retention (7 days),
    so readers of older versions are never broken.
    """
    done = []
    for target in sorted(p for p in delta_root.iterdir() if DeltaTable.is_deltatable(str(p))) if delta_root.is_dir() else []:
        table = DeltaTable(str(target))
        sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
        small = len(sizes) >= min_files and sum(sizes) / max(len(sizes), 1) < TARGET_FILE_SIZE / 4
        if not sizes or not (force or small):
            continue
        table.optimize.compact(target_size=TARGET_FILE_SIZE)
        table.vacuum(dry_run=False)
        after = len(DeltaTable(str(target)).file_uris())
        done.append(Compaction(target.name, len(sizes), after))
    return done
