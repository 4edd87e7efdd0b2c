"""Turns one table's raw files into audited valid rows, reject records and manifest rows.

A load of a table goes in two steps with an explicit value between them:
1. `TableExtractor.stage(files)` decides which files are new or changed (`ledger`), reads, validates and stages them
   two at a time (`stage`), then resolves keys across them (`keys`), and gives a `StagedLoad`: the staged files and
   what the load will do (whether its rows may replace loaded rows, how many rows it emits);
2. `TableExtractor.outputs(load)` emits the load file by file: valid rows batch by batch, reject records of several
   files together (up to `settings.REJECTS_BATCH_BYTES`), then one manifest table with a row per file, recording each
   file in the ledger as it goes.

Per file, `row_count = valid_count + reject_count`; superseded and late rows are valid rows that are not loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from . import reasons, settings
from .helpers import quote_literal, records_as_json
from .keys import NewerVersions, position_key, resolve_keys
from .ledger import Ledger, decide, record
from .outputs import (
    MANIFEST_TABLE,
    REJECTS_TABLE,
    ROW_HASH,
    ROW_NUMBER,
    SRC_SHEET,
    STATUS_CHANGED_SKIPPED,
    STATUS_EMPTY,
    STATUS_FILE_REJECTED,
    STATUS_OK,
    STATUS_WITH_REJECTS,
    file_reject,
    manifest_row,
    reject_records,
    table_schema,
    with_run_fields,
)
from .raw import RawFile
from .registry import TableSpec
from .stage import StagedFile, Stager, reject_type_change
from .validate import Validator
from .workdirs import staging_dir

OutputKind = Literal["rows", "rejects", "manifest"]


@dataclass(frozen=True)
class StagedLoad:
    """The files of one load of a table, staged and resolved, and what emitting them will do."""

    files: list[StagedFile]
    replaces_loaded_rows: bool
    """Whether the load's rows may replace rows loaded before: any load of a merge table after its first, or a file
    of an append table delivered again."""
    rows_to_emit: int
    """Valid rows the load emits (superseded and late versions left out)."""


class TableExtractor:
    """Reads, validates and stages the files of one table, then emits its output."""

    def __init__(self, spec: TableSpec, *, ingestion_ts: datetime, load_id: str | None, chunk_size: int,
                 ledger: Ledger, evolve_schema: bool = False, column_types: Mapping[str, str] | None = None,
                 column_name: Callable[[str], str] = str, newer_versions: NewerVersions | None = None) -> None:
        self.spec = spec
        self.ingestion_ts = ingestion_ts
        self.load_id = load_id
        self.chunk_size = chunk_size
        self.ledger = ledger
        self.evolve_schema = evolve_schema
        self.column_types = dict(column_types or {})
        """dlt data types of the table's columns loaded before, by dlt column name (`column_name` of a source name):
        an added column keeps its type, and is filled even without `evolve_schema`."""
        self.column_name = column_name
        self.newer_versions = newer_versions
        """Reads the destination's versions of keys newer than a given sequence value (the late-version guard)."""
        self.schema = table_schema(spec)
        self.con = duckdb.connect()
        self.con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        self._local = threading.local()

    def _validator(self) -> Validator:
        """The calling thread's validator (each stages files on its own DuckDB connection)."""
        validator: Validator | None = getattr(self._local, "validator", None)
        if validator is None:
            validator = self._local.validator = Validator(self.spec, self.con.cursor(), evolve=self.evolve_schema,
                                                          added=self._is_added_column, column_name=self.column_name)
        return validator

    def _is_added_column(self, source_name: str) -> bool:
        """Whether a source column outside the contract is already a column of the loaded table (added by an
        evolving run or promoted from `_rescued_data`)."""
        try:
            name = self.column_name(source_name)
        except ValueError:  # a name dlt cannot normalize (blank) is never a column of the table
            return False
        return name in self.column_types and name not in self.schema.names and not name.startswith("_dlt")

    @contextmanager
    def stage(self, files: list[RawFile]) -> Iterator[StagedLoad]:
        """Stage the new and changed files of `files` (`settings.staging_threads()` at a time, kept in the order of
        `files`) for as long as the block runs."""
        loaded_before = bool(self.ledger)
        stager = Stager(self.spec, self._validator, self.ingestion_ts, self.chunk_size)
        with staging_dir(self.spec.name) as tmp:
            self.con.execute(f"SET temp_directory = {quote_literal(f'{tmp}/duckdb')}")

            def one(index: int) -> StagedFile | None:
                decision = decide(self.spec, files[index], self.ledger)
                if decision.action == "unchanged":
                    return None
                return stager.stage(files[index], decision, Path(tmp) / str(index))

            with ThreadPoolExecutor(max_workers=settings.staging_threads(), thread_name_prefix="stage") as pool:
                found = list(pool.map(one, range(len(files))))
            types = dict(self.column_types)  # grows with the columns each accepted file adds
            staged = [reject_type_change(s, types, self.column_name, self.spec.name) for s in found if s is not None]
            resolve_keys(self.con, self.spec, staged, newer_versions=self.newer_versions, column_name=self.column_name)
            replaces = loaded_before if self.spec.write_disposition == "merge" else any(
                s.replaced_fingerprint is not None and s.loads_rows for s in staged)
            emitted = sum(s.valid_count - s.superseded_count - s.late_count for s in staged if s.loads_rows)
            yield StagedLoad(staged, replaces, emitted)

    def outputs(self, load: StagedLoad) -> Iterator[tuple[OutputKind, pa.Table]]:
        """Yield ("rows" | "rejects" | "manifest", table) for the files of `load`, recording each in the ledger."""
        rejects: list[pa.Table] = []
        rejects_bytes = 0
        manifest: list[pa.Table] = []
        for item in load.files:
            for kind, table in self._emit(item):
                if kind == "rows":
                    yield kind, table
                elif kind == "manifest":
                    manifest.append(table)
                else:
                    rejects.append(table)
                    rejects_bytes += table.nbytes
                    if rejects_bytes >= settings.REJECTS_BATCH_BYTES:
                        yield "rejects", pa.concat_tables(rejects)
                        rejects, rejects_bytes = [], 0
            if not item.transient:
                record(self.ledger, item.file, item.fingerprint)
        if rejects:
            yield "rejects", pa.concat_tables(rejects)
        if manifest:
            yield "manifest", pa.concat_tables(manifest)
        pa.default_memory_pool().release_unused()

    def run(self, files: list[RawFile]) -> Iterator[tuple[OutputKind, pa.Table]]:
        """`stage` then `outputs`, for callers that need nothing in between."""
        with self.stage(files) as load:
            yield from self.outputs(load)

    def _emit(self, item: StagedFile) -> Iterator[tuple[OutputKind, pa.Table]]:
        rel = item.file.rel_path
        if item.skipped:
            yield "manifest", self._manifest(item, STATUS_CHANGED_SKIPPED)
            return
        if item.file_level is not None:
            code, detail = item.file_level
            yield "rejects", with_run_fields(file_reject(self.spec.name, rel, code, detail), self.ingestion_ts,
                                             self.load_id)
            yield "manifest", self._manifest(item, STATUS_FILE_REJECTED)
            return
        duplicates: list[pa.Table] = []
        for path in item.rows_paths:
            # Read, not memory-mapped: pages of a mapping stay resident while any batch of the file is referenced.
            with pa.OSFile(str(path)) as source:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    batch = pa.Table.from_batches([reader.get_batch(i)])
                    if item.conflicts is not None or item.dropped is not None:
                        batch, conflicting = self._drop_resolved(batch, item)
                        if conflicting.num_rows:
                            duplicates.append(self._duplicate_rejects(conflicting, item))
                    if batch.num_rows:
                        yield "rows", batch
        rejects = [t for t in _staged_rejects(item) if t.num_rows] + duplicates
        if rejects:
            yield "rejects", with_run_fields(pa.concat_tables(rejects), self.ingestion_ts, self.load_id)
        status = STATUS_EMPTY if item.row_count == 0 else STATUS_WITH_REJECTS if item.reject_count else STATUS_OK
        yield "manifest", self._manifest(item, status)

    def _drop_resolved(self, batch: pa.Table, item: StagedFile) -> tuple[pa.Table, pa.Table]:
        """Split a staged batch into the rows to load and the rows of conflicting keys (with their version count)."""
        key = position_key(self.spec, batch)
        drop = pc.is_in(key, item.dropped) if item.dropped is not None else pa.repeat(pa.scalar(False), len(key))
        conflicting = batch.slice(0, 0).append_column("versions", pa.array([], pa.int64()))
        if item.conflicts is not None:
            in_conflict = pc.is_in(key, item.conflicts["__key"])
            drop = pc.or_(drop, in_conflict)
            found = batch.filter(in_conflict)
            versions = pc.index_in(position_key(self.spec, found), item.conflicts["__key"])
            conflicting = found.append_column("versions", item.conflicts["versions"].take(versions))
        return batch.filter(pc.invert(drop)), conflicting

    def _duplicate_rejects(self, dup: pa.Table, item: StagedFile) -> pa.Table:
        """Reject records for rows of conflicting keys (per-row formatting: these rows are few by nature)."""
        keys = [*self.spec.primary_key, *([self.spec.sequence_column] if self.spec.sequence_column else [])]
        detail = [
            f"{dict(zip(keys, map(str, values), strict=True))} has {n} versions with different content in this load"
            for *values, n in zip(*(dup[k].to_pylist() for k in keys), dup["versions"].to_pylist(), strict=True)
        ]
        return reject_records(
            self.spec.name, item.file.rel_path, reasons.DUPLICATE_KEY, count=dup.num_rows,
            detail=pa.array(detail, pa.string()), row_number=dup[ROW_NUMBER],
            sheet=dup[SRC_SHEET] if SRC_SHEET in dup.column_names else None,
            column_name=",".join(self.spec.primary_key), raw_record=records_as_json(dup.select(self.spec.schema.names)),
            row_hash=dup[ROW_HASH])

    def _manifest(self, item: StagedFile, status: str) -> pa.Table:
        counts = (0, 0, 0, 0, 0) if item.file_level is not None else (
            item.row_count, item.valid_count, item.reject_count, item.superseded_count, item.late_count)
        return manifest_row(src_path=item.file.rel_path, table_name=self.spec.name, processed_at=self.ingestion_ts,
                            fingerprint=item.fingerprint, file_size=item.file.size, counts=counts, status=status,
                            replaced_fingerprint=item.replaced_fingerprint, extra_columns=sorted(item.extra_columns),
                            load_id=self.load_id)


def _staged_rejects(item: StagedFile) -> list[pa.Table]:
    if item.rejects_path is None or not item.rejects_path.exists():
        return []
    with pa.memory_map(str(item.rejects_path)) as source:
        return [pa.ipc.open_file(source).read_all()]


__all__ = ["MANIFEST_TABLE", "REJECTS_TABLE", "StagedLoad", "TableExtractor"]
