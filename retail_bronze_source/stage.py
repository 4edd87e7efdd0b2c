"""Staging one file: read, validated, audited and written to local disk before anything of it is emitted, so that a
file failing half way (a corrupt page, a bad byte deep in a CSV) becomes one file-level reject, never a partial load.

A staged file is its valid rows as Arrow IPC files (one per run of chunks with the same columns), its reject records
as one Arrow IPC file, and, for tables with a primary key, a narrow Parquet file of the keys (key and sequence columns,
a row-hash prefix, the row's position) that key resolution reads instead of the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns

from . import reasons
from .audit import add_audit_columns
from .crash_points import crash_point
from .discovery import raw_root_spellings
from .ledger import Decision
from .outputs import REJECT_SCHEMA, ROW_HASH, position_columns
from .raw import FileRejected, RawChunk, RawFile
from .readers import read
from .redact import reject_detail
from .registry import TableSpec
from .validate import Validator

logger = logging.getLogger(__name__)

HASH_PREFIX = "__hash_prefix"
"""Column of the keys file: the first 16 hex digits of the row hash (64 bits, enough to tell versions apart)."""


@dataclass
class StagedFile:
    """One input of a load, as staged (or as a file-level reject, or a changed version that is skipped)."""

    file: RawFile
    fingerprint: str
    replaced_fingerprint: str | None = None
    """Fingerprint of the version of this path loaded before (a re-delivery or a Delta increment)."""
    rows_paths: list[Path] = field(default_factory=list)
    rejects_path: Path | None = None
    keys_path: Path | None = None
    extra_columns: set[str] = field(default_factory=set)
    """Source columns outside the contract (rescued, or added with schema evolution)."""
    row_count: int = 0
    valid_count: int = 0
    reject_count: int = 0
    file_level: tuple[str, str] | None = None
    """(reason code, detail) of a file-level reject."""
    skipped: bool = False
    """A changed file of a table declared with `changed_files="skip"`: recorded, not loaded."""
    transient: bool = False
    """A file that could not be read this time: not recorded in the ledger, read again next run."""
    superseded_count: int = 0
    """Valid rows replaced by a newer version of their key in this load (key resolution)."""
    late_count: int = 0
    """Valid rows older than the version of their key already loaded (key resolution)."""
    conflicts: pa.Table | None = None
    """Position keys (`__key`) and version counts of rows rejected as `DUPLICATE_KEY` (key resolution)."""
    dropped: pa.Array | None = None
    """Position keys of valid rows not loaded: superseded or late (key resolution)."""

    @property
    def loads_rows(self) -> bool:
        return self.file_level is None and not self.skipped

    def discard(self) -> None:
        """Remove what was staged of the file (its rows will not be emitted)."""
        for path in [*self.rows_paths, self.rejects_path, self.keys_path]:
            if path is not None:
                path.unlink(missing_ok=True)
        self.rows_paths = []


def rejected_file(file: RawFile, decision: Decision, rejected: FileRejected) -> StagedFile:
    """A file-level reject of `file`, its detail naming paths relative to the raw root."""
    detail = reject_detail(rejected.reason_detail, raw_root_spellings(file))
    return StagedFile(file=file, fingerprint=decision.fingerprint, replaced_fingerprint=decision.replaced,
                      file_level=(rejected.reason_code, detail), transient=decision.transient)


@dataclass(frozen=True)
class Stager:
    """Stages the files of one table with one validator per thread (`validator`)."""

    spec: TableSpec
    validator: Callable[[], Validator]
    ingestion_ts: datetime
    chunk_size: int

    def stage(self, file: RawFile, decision: Decision, folder: Path) -> StagedFile:
        """Stage `file` under `folder` as `decision` says; a file that fails is a file-level reject."""
        if decision.action == "skip":
            return StagedFile(file=file, fingerprint=decision.fingerprint, replaced_fingerprint=decision.replaced,
                              skipped=True)
        if decision.action == "reject":
            assert decision.rejected is not None
            return rejected_file(file, decision, decision.rejected)
        staged = StagedFile(file=file, fingerprint=decision.fingerprint, replaced_fingerprint=decision.replaced,
                            rejects_path=folder.with_suffix(".rejects.arrow"))
        try:
            try:
                self._write(staged, decision, folder)
            except (FileRejected, MemoryError):
                raise
            except Exception as error:
                raise unexpected_error_reject(error, file.rel_path) from error
            crash_point("file_staged")
        except FileRejected as rejected:
            staged.discard()
            return rejected_file(file, decision, rejected)
        return staged

    def _write(self, staged: StagedFile, decision: Decision, folder: Path) -> None:
        assert staged.rejects_path is not None
        folder.mkdir()
        validator = self.validator()
        rows_out: pa.ipc.RecordBatchFileWriter | None = None
        rows_schema: pa.Schema | None = None
        keys_out: pq.ParquetWriter | None = None
        try:
            with pa.ipc.new_file(staged.rejects_path, REJECT_SCHEMA) as rejects_out:
                chunks = read(decision.fmt, staged.file, self.chunk_size, decision.options)
                for chunk in _reader_errors_as_rejects(chunks):
                    result = validator.validate(chunk, staged.file.rel_path)
                    staged.extra_columns.update(validator.extra_columns(chunk.data))
                    if result.valid.num_rows:
                        audited = add_audit_columns(result.valid, self.spec, ingestion_ts=self.ingestion_ts,
                                                    src_filename=staged.file.rel_path, sheet=chunk.sheet)
                        if rows_out is None or rows_schema is None or not rows_schema.equals(audited.schema):
                            if rows_out is not None:
                                rows_out.close()
                            path = folder / f"{len(staged.rows_paths)}.arrow"
                            staged.rows_paths.append(path)
                            rows_schema = audited.schema
                            rows_out = pa.ipc.new_file(path, rows_schema)
                        rows_out.write_table(audited)
                        if self.spec.primary_key:
                            keys = self._keys_of(audited)
                            if keys_out is None:
                                staged.keys_path = folder / "keys.parquet"
                                keys_out = pq.ParquetWriter(staged.keys_path, keys.schema, compression="none",
                                                            use_dictionary=False, write_statistics=False)
                            keys_out.write_table(keys)
                    if result.rejects.num_rows:
                        rejects_out.write_table(result.rejects)
                    staged.row_count += result.rows_read
                    staged.reject_count += result.rows_rejected
                    staged.valid_count += result.valid.num_rows
        finally:
            if rows_out is not None:
                rows_out.close()
            if keys_out is not None:
                keys_out.close()

    def _keys_of(self, rows: pa.Table) -> pa.Table:
        """What key resolution reads of staged rows: key and sequence columns, the row-hash prefix and the row's
        position."""
        columns = dict.fromkeys([*self.spec.primary_key, *([self.spec.sequence_column] if self.spec.sequence_column
                                                            else []), *position_columns(self.spec)])
        keys = rows.select(list(columns))
        return keys.append_column(HASH_PREFIX, pc.utf8_slice_codeunits(rows[ROW_HASH], 0, 16))


def reject_type_change(staged: StagedFile, types: dict[str, str], column_name: Callable[[str], str],
                       table_name: str) -> StagedFile:
    """`staged`, or a file-level `COLUMN_TYPE_CHANGED` reject if one of its added columns has another dlt data type
    than the table holds, or than an earlier file of this load (or an earlier chunk of this file) gave it.

    Called in file order; `types` collects the types of columns added by the files accepted so far. dlt never changes
    a column's type, and one such file would otherwise fail the whole extract.
    """
    if not staged.loads_rows or not staged.extra_columns:
        return staged
    found: dict[str, str] = {}
    for path in staged.rows_paths:
        with pa.OSFile(str(path)) as source:
            schema = pa.ipc.open_file(source).schema
        added = pa.schema([f for f in schema if f.name in staged.extra_columns and not pa.types.is_null(f.type)])
        for source_name, column in py_arrow_to_table_schema_columns(added).items():
            name, data_type = column_name(source_name), str(column.get("data_type"))
            known = types.get(name) or found.setdefault(name, data_type)
            if known != data_type:
                staged.discard()
                detail = (f"column {name} is {data_type} in this file but {known} in table {table_name}; a column "
                          f"keeps the type it was first loaded with")
                return StagedFile(file=staged.file, fingerprint=staged.fingerprint,
                                  replaced_fingerprint=staged.replaced_fingerprint,
                                  file_level=(reasons.COLUMN_TYPE_CHANGED, detail))
    types.update(found)
    return staged


def unexpected_error_reject(error: Exception, rel_path: str) -> FileRejected:
    """The file-level `VALIDATION_FAILED` reject of an unexpected error raised while one file was validated, hashed
    or staged (never memory exhaustion, which stops the run), naming the error: the file's rows are not loaded and
    the other files go on. The traceback is logged."""
    logger.warning("%s: validating or staging failed, the file is rejected", rel_path, exc_info=error)
    message = " ".join(str(error).split())[:500]
    return FileRejected(reasons.VALIDATION_FAILED, f"{type(error).__name__}: {message}")


def _reader_errors_as_rejects(chunks: Iterator[RawChunk]) -> Iterator[RawChunk]:
    """Pass chunks through, turning any reader failure into `FILE_UNREADABLE` naming the error."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except FileRejected:
            raise
        except Exception as error:
            raise FileRejected(reasons.FILE_UNREADABLE, f"{type(error).__name__}: {error}") from error
        yield chunk
