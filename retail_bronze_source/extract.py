"""Turns one table's raw files into audited valid rows, reject records and manifest rows.

Each file is read, validated and staged on local disk as Arrow IPC before anything of it is emitted, so a file that
fails half way (corrupt page, bad encoding) becomes one file-level reject and never a partial load. After every file
of the table is staged, rows of one key that share a sequence value but differ in content are rejected as
`DUPLICATE_KEY`; then the table's output is emitted file by file (the reject records and manifest rows of several
files together). Merge tables then keep one version per key (highest sequence value, then latest file and row); the
versions it replaces are valid rows counted as `superseded_count`. Per file, `row_count = valid_count + reject_count`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns

from . import reasons
from .audit import add_audit_columns, has_sheets, table_schema
from .crash_points import crash_point
from .discovery import discover_files as discover_files  # re-exported: callers import it from here
from .discovery import raw_root_spellings
from .readers import read
from .readers.base import FileRejected, RawChunk, RawFile
from .readers.delta import delta_version
from .readers.records import records_as_json
from .redact import reject_detail
from .registry import EXTENSION_FORMATS, TableSpec, file_suffix
from .staging import staging_dir
from .validate import REJECT_SCHEMA, ROW_HASH, ROW_NUMBER, Validator, as_array, file_reject, quote_ident, quote_literal

OutputKind = Literal["rows", "rejects", "manifest"]
NewerVersions = Callable[[list[str], str, Any, Callable[[pa.RecordBatchReader], None]], bool]
"""`(columns, sequence_column, oldest, sink) -> found`: hands `sink` the loaded `columns` (key and sequence, by
destination column name) of rows whose sequence value is greater than `oldest`; see `loaded.LoadedVersions`."""
logger = logging.getLogger(__name__)

REJECTS_TABLE = "rejects"
MANIFEST_TABLE = "manifest_processed_files"

UTC_TS = pa.timestamp("us", tz="UTC")
RUN_FIELDS = (pa.field("ingestion_ts", UTC_TS, nullable=False), pa.field("load_id", pa.string()))
REJECTS_OUTPUT_SCHEMA = pa.schema([*REJECT_SCHEMA, *RUN_FIELDS])
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("src_path", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("processed_at", UTC_TS, nullable=False),
        pa.field("file_fingerprint", pa.string(), nullable=False),
        pa.field("file_size", pa.int64()),
        pa.field("row_count", pa.int64(), nullable=False),
        pa.field("valid_count", pa.int64(), nullable=False),
        pa.field("reject_count", pa.int64(), nullable=False),
        pa.field("superseded_count", pa.int64(), nullable=False),
        pa.field("late_count", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("replaced_fingerprint", pa.string()),
        pa.field("extra_columns", pa.string()),
        pa.field("load_id", pa.string()),
    ]
)

STATUS_OK = "ok"
STATUS_WITH_REJECTS = "with_rejects"
STATUS_FILE_REJECTED = "file_rejected"
STATUS_EMPTY = "empty"
STATUS_CHANGED_SKIPPED = "changed_skipped"


class ChangedFileError(Exception):
    """A file already loaded changed, and its table is declared with `changed_files="fail"`."""

_HASH_BLOCK = 8 << 20
HASH_PREFIX = "__hash_prefix"
STAGING_THREADS = min(2, os.cpu_count() or 1)
"""Files read and validated at once: every stage releases the GIL, so two files keep two cores busy."""
REJECTS_BATCH_BYTES = 64 << 20
"""Reject records of consecutive files are handed on together up to this size: dlt computes and validates the table
hints of every item it is given (about 10 ms each), which cost a dirty 2M-row load more than writing its records."""
DELTA_VERSION = "delta-version:"
DELTA_LOG = "delta-log:"
"""Fingerprint prefix of a Delta input; a later version is read as the increment since the recorded one."""


@dataclass
class _StagedFile:
    file: RawFile
    fingerprint: str
    rows_paths: list[Path] = field(default_factory=list)
    """Staged valid rows: one Arrow IPC file per run of chunks with the same columns."""
    stage_dir: Path | None = None
    extra_columns: set[str] = field(default_factory=set)
    rejects_path: Path | None = None
    keys_path: Path | None = None
    """Staged key, sequence, row-hash prefix and position of every valid row (tables with a primary key)."""
    row_count: int = 0
    reject_count: int = 0
    file_level: tuple[str, str] | None = None
    valid_count: int = 0
    superseded_count: int = 0
    replaced_fingerprint: str | None = None
    """Fingerprint of the version of this path loaded before (a re-delivery or a Delta increment)."""
    skipped: bool = False
    """A changed file of a table declared with `changed_files="skip"`: recorded, not loaded."""
    transient: bool = False
    """A file that could not be read this time (permissions, I/O): not recorded in the ledger, read again next run."""
    conflicts: pa.Table | None = None
    """Position keys (`__key`) and version counts of rows rejected as `DUPLICATE_KEY`."""
    late_count: int = 0
    dropped: pa.Array | None = None
    """Position keys of valid rows not loaded: superseded by a newer version of their key in this load, or older
    than the version of their key already loaded (late)."""


def file_format(spec: TableSpec, file: RawFile) -> str:
    """The format `file` is read as; raises `UNSUPPORTED_FILE` when the table does not accept it."""
    if spec.formats == ("delta",):
        return "delta"
    suffix = file_suffix(file.rel_path)
    fmt = EXTENSION_FORMATS.get(suffix)
    if fmt is None or fmt not in spec.formats:
        raise FileRejected(reasons.UNSUPPORTED_FILE,
                           f"'{suffix or file.rel_path}' files are not accepted for table {spec.name} "
                           f"(accepted: {', '.join(spec.formats)})")
    return fmt


def fingerprint(file: RawFile, fmt: str) -> str:
    """A content fingerprint: SHA-256 of the file's bytes, or the version of a Delta table."""
    if fmt == "delta":
        return f"{DELTA_VERSION}{delta_version(file)}"
    digest = hashlib.sha256()
    # One buffer read into again and again: a new block per read would be fresh memory for the kernel to zero.
    block = memoryview(bytearray(_HASH_BLOCK))
    with file.open() as handle:
        # fsspec's file objects are `io.IOBase` files with `readinto`.
        while size := cast(io.BufferedIOBase, handle).readinto(block):
            digest.update(block[:size])
    return f"sha256:{digest.hexdigest()}"


def delta_log_fingerprint(file: RawFile) -> str:
    """A fingerprint of a Delta table that deltalake cannot open: the names and sizes of its log entries."""
    digest = hashlib.sha256()
    try:
        entries = file.fs.ls(f"{file.path.rstrip('/')}/_delta_log", detail=True)
    except OSError as error:
        return f"{DELTA_LOG}unlisted:{type(error).__name__}"
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        digest.update(f"{Path(str(entry['name'])).name}:{entry.get('size')};".encode())
    return f"{DELTA_LOG}{digest.hexdigest()}"


class TableExtractor:
    """Reads, validates and stages the files of one table, then emits its output."""

    def __init__(self, spec: TableSpec, *, ingestion_ts: datetime, load_id: str | None, chunk_size: int,
                 ledger: MutableMapping[str, Any], evolve_schema: bool = False,
                 column_types: Mapping[str, str] | None = None, column_name: Callable[[str], str] = str,
                 newer_versions: NewerVersions | None = None) -> None:
        self.spec = spec
        self.newer_versions = newer_versions
        """Reads the destination's versions of keys newer than a given sequence value (the late-version guard)."""
        self.ingestion_ts = ingestion_ts
        self.load_id = load_id
        self.chunk_size = chunk_size
        self.ledger = ledger
        self._loaded_before = bool(ledger)
        self._replaces_loaded_rows: bool | None = None
        self._rows_to_emit: int | None = None
        self.schema = table_schema(spec)
        self.evolve_schema = evolve_schema
        self.column_types = dict(column_types or {})
        """dlt data types of the table's columns loaded before, by dlt column name (`column_name` of a source name):
        with `evolve_schema`, an added column keeps its type."""
        self.column_name = column_name
        self.con = duckdb.connect()
        self.con.execute("SET memory_limit = '256MB'")
        self._local = threading.local()

    @property
    def replaces_loaded_rows(self) -> bool:
        """Whether this load's rows may replace rows loaded before: any load of a merge table after its first, or a
        file of an append table delivered again. Known once `run` has yielded its first output."""
        if self._replaces_loaded_rows is None:
            raise RuntimeError("replaces_loaded_rows is known only after the files are staged")
        return self._replaces_loaded_rows

    @property
    def rows_to_emit(self) -> int:
        """Valid rows this load emits (superseded versions left out). Known once `run` has yielded its first output."""
        if self._rows_to_emit is None:
            raise RuntimeError("rows_to_emit is known only after the files are staged")
        return self._rows_to_emit

    @property
    def validator(self) -> Validator:
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

    def run(self, files: list[RawFile]) -> Iterator[tuple[OutputKind, pa.Table]]:
        """Yield ("rows" | "rejects" | "manifest", table) for the new and changed files of `files`: their valid rows
        batch by batch, their reject records in tables of several files (up to `REJECTS_BATCH_BYTES`), then one
        manifest table with a row per file.

        Files are staged by `STAGING_THREADS` threads at a time and emitted in the order of `files`.
        """
        with staging_dir(self.spec.name) as tmp:
            self.con.execute(f"SET temp_directory = {quote_literal(f'{tmp}/duckdb')}")
            with ThreadPoolExecutor(max_workers=STAGING_THREADS, thread_name_prefix="stage") as pool:
                found = list(pool.map(lambda i: self._stage_if_new(files[i], Path(tmp), i), range(len(files))))
            staged = [s for s in found if s is not None]
            types = dict(self.column_types)  # grows with the columns each accepted file adds
            staged = [self._reject_type_change(s, types) for s in staged]
            self._replaces_loaded_rows = self._loaded_before if self.spec.write_disposition == "merge" else any(
                s.replaced_fingerprint is not None and not s.skipped and s.file_level is None for s in staged)
            self._resolve_keys(staged)
            self._rows_to_emit = sum(s.valid_count - s.superseded_count - s.late_count for s in staged
                                     if s.file_level is None and not s.skipped)
            rejects: list[pa.Table] = []
            rejects_bytes = 0
            manifest: list[pa.Table] = []
            for item in staged:
                for kind, table in self._emit(item):
                    if kind == "rows":
                        yield kind, table
                    elif kind == "manifest":
                        manifest.append(table)
                    else:
                        rejects.append(table)
                        rejects_bytes += table.nbytes
                        if rejects_bytes >= REJECTS_BATCH_BYTES:
                            yield "rejects", pa.concat_tables(rejects)
                            rejects, rejects_bytes = [], 0
                if not item.transient:
                    self.ledger[item.file.rel_path] = {"fingerprint": item.fingerprint,
                                                       "signature": item.file.signature}
            if rejects:
                yield "rejects", pa.concat_tables(rejects)
            if manifest:
                yield "manifest", pa.concat_tables(manifest)
            pa.default_memory_pool().release_unused()

    def _stage_if_new(self, file: RawFile, tmp: Path, index: int) -> _StagedFile | None:
        seen = self.ledger.get(file.rel_path)
        is_delta = self.spec.formats == ("delta",)
        if seen and not is_delta and file.signature is not None and seen.get("signature") == file.signature:
            return None  # the file was not written since its fingerprint was taken (see `RawFile.signature`)
        if file.refused is not None:
            # Refused by discovery without being opened (a link out of the raw root, a FIFO...): recorded once.
            print_ = f"refused:{file.refused[0]}:size={file.size}"
            if seen and seen.get("fingerprint") == print_:
                return None
            return self._file_rejected(file, print_, FileRejected(*file.refused), str(seen["fingerprint"]) if seen
                                       else None)
        fmt: str | None = None
        unsupported: FileRejected | None = None
        try:
            fmt = file_format(self.spec, file)
        except FileRejected as rejected:
            unsupported = rejected
        try:
            print_ = fingerprint(file, fmt or "file")
        except OSError as error:
            # A transient failure (permissions, I/O): recorded in the manifest, never in the ledger, so the file is
            # read again by the next run.
            detail = FileRejected(reasons.FILE_UNREADABLE, f"cannot read {file.rel_path}: {type(error).__name__}: "
                                                           f"{error.strerror or error}")
            rejected_ = self._file_rejected(file, f"unreadable:size={file.size}:signature={file.signature}", detail)
            rejected_.transient = True
            return rejected_
        except FileRejected as rejected:
            # A Delta table deltalake cannot open: known by its log, so an unchanged log is not examined again.
            print_ = delta_log_fingerprint(file) if is_delta else f"unreadable:size={file.size}"
            if seen and seen.get("fingerprint") == print_:
                return None
            return self._file_rejected(file, print_, rejected, str(seen["fingerprint"]) if seen else None)
        if seen and seen.get("fingerprint") == print_:
            seen["signature"] = file.signature
            return None
        replaced = str(seen["fingerprint"]) if seen else None
        if replaced is not None and not is_delta and self.spec.changed_files != "reload":
            if self.spec.changed_files == "fail":
                raise ChangedFileError(f"{file.rel_path} changed after it was loaded ({replaced} -> {print_}) and "
                                       f"table {self.spec.name} is declared with changed_files='fail'")
            return _StagedFile(file=file, fingerprint=print_, replaced_fingerprint=replaced, skipped=True)
        if unsupported is not None or fmt is None:
            return self._file_rejected(file, print_, unsupported or FileRejected(reasons.UNSUPPORTED_FILE, "unknown"),
                                       replaced)
        staged = _StagedFile(file=file, fingerprint=print_, stage_dir=tmp / str(index),
                             rejects_path=tmp / f"{index}.rejects.arrow", replaced_fingerprint=replaced)
        options = dict(self.spec.reader_options)
        if fmt == "delta" and seen and str(seen.get("fingerprint", "")).startswith(DELTA_VERSION):
            options["starting_version"] = int(str(seen["fingerprint"])[len(DELTA_VERSION):])
        try:
            try:
                self._stage(staged, fmt, options)
            except (FileRejected, MemoryError):
                raise
            except Exception as error:
                raise unexpected_error_reject(error, file.rel_path) from error
            crash_point("file_staged")
        except FileRejected as rejected:
            for path in [*staged.rows_paths, staged.rejects_path, staged.keys_path]:
                if path is not None:
                    path.unlink(missing_ok=True)
            return self._file_rejected(file, print_, rejected, replaced)
        return staged

    def _reject_type_change(self, staged: _StagedFile, types: dict[str, str]) -> _StagedFile:
        """`staged`, or a file-level `COLUMN_TYPE_CHANGED` reject if one of its added columns has another dlt data type
        than the table holds, or than an earlier file of this load (or an earlier chunk of this file) gave it.

        Called in file order; `types` collects the types of columns added by the files accepted so far. dlt never
        changes a column's type, and one such file would otherwise fail the whole extract.
        """
        if staged.file_level is not None or staged.skipped or not staged.extra_columns:
            return staged
        found: dict[str, str] = {}
        for path in staged.rows_paths:
            with pa.OSFile(str(path)) as source:
                schema = pa.ipc.open_file(source).schema
            added = pa.schema([f for f in schema if f.name in staged.extra_columns and not pa.types.is_null(f.type)])
            for source_name, column in py_arrow_to_table_schema_columns(added).items():
                name, data_type = self.column_name(source_name), str(column.get("data_type"))
                known = types.get(name) or found.setdefault(name, data_type)
                if known != data_type:
                    for staged_path in [*staged.rows_paths, staged.rejects_path, staged.keys_path]:
                        if staged_path is not None:
                            staged_path.unlink(missing_ok=True)
                    detail = (f"column {name} is {data_type} in this file but {known} in table {self.spec.name}; "
                              f"a column keeps the type it was first loaded with")
                    return self._file_rejected(staged.file, staged.fingerprint,
                                               FileRejected(reasons.COLUMN_TYPE_CHANGED, detail),
                                               staged.replaced_fingerprint)
        types.update(found)
        return staged

    def _file_rejected(self, file: RawFile, print_: str, rejected: FileRejected,
                       replaced: str | None = None) -> _StagedFile:
        detail = reject_detail(rejected.reason_detail, raw_root_spellings(file))
        return _StagedFile(file=file, fingerprint=print_, file_level=(rejected.reason_code, detail),
                           replaced_fingerprint=replaced)

    def _stage(self, staged: _StagedFile, fmt: str, options: Mapping[str, Any]) -> None:
        assert staged.stage_dir is not None and staged.rejects_path is not None
        staged.stage_dir.mkdir()
        rows_out: pa.ipc.RecordBatchFileWriter | None = None
        rows_schema: pa.Schema | None = None
        keys_out: pq.ParquetWriter | None = None
        try:
            with pa.ipc.new_file(staged.rejects_path, REJECT_SCHEMA) as rejects_out:
                for chunk in _reader_errors_as_rejects(read(fmt, staged.file, self.chunk_size, options)):
                    result = self.validator.validate(chunk, staged.file.rel_path, fmt=fmt)
                    staged.extra_columns.update(self.validator.extra_columns(chunk.data))
                    if result.valid.num_rows:
                        audited = add_audit_columns(result.valid, self.spec, ingestion_ts=self.ingestion_ts,
                                                    src_filename=staged.file.rel_path, sheet=chunk.sheet)
                        if rows_out is None or rows_schema is None or not rows_schema.equals(audited.schema):
                            if rows_out is not None:
                                rows_out.close()
                            path = staged.stage_dir / f"{len(staged.rows_paths)}.arrow"
                            staged.rows_paths.append(path)
                            rows_schema = audited.schema
                            rows_out = pa.ipc.new_file(path, rows_schema)
                        rows_out.write_table(audited)
                        if self.spec.primary_key:
                            keys = self._keys_of(audited)
                            if keys_out is None:
                                staged.keys_path = staged.stage_dir / "keys.parquet"
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
        """What key resolution reads of staged rows: key and sequence columns, the first 16 hex digits of the row
        hash (64 bits, enough to tell versions apart) and the row's position."""
        columns = dict.fromkeys([*self.spec.primary_key, *([self.spec.sequence_column] if self.spec.sequence_column
                                                            else []), *self._position_columns])
        keys = rows.select(list(columns))
        return keys.append_column(HASH_PREFIX, pc.utf8_slice_codeunits(rows[ROW_HASH], 0, 16))

    @property
    def _position_columns(self) -> list[str]:
        return ["src_filename", *(["src_sheet"] if has_sheets(self.spec) else []), ROW_NUMBER]

    def _position_key(self, rows: pa.Table) -> pa.Array:
        """A row's position in its file as one value: the row number, or sheet and row number for sheet tables."""
        numbers = as_array(rows[ROW_NUMBER])
        if not has_sheets(self.spec):
            return numbers
        sheets = pc.fill_null(as_array(rows["src_sheet"]), "")
        return pc.binary_join_element_wise(sheets, pc.cast(numbers, pa.string()), "\x1f")

    def _resolve_keys(self, staged: list[_StagedFile]) -> None:
        """Find rows of conflicting versions (`DUPLICATE_KEY`) and, for merge tables, superseded versions of a key.

        Only the staged keys files are read (DuckDB spills to disk beyond its memory limit); the rows themselves are
        dropped or turned into rejects batch by batch when the file is emitted. Two versions with one key and one
        sequence value conflict when their row hashes differ in the first 64 bits.
        """
        pk = list(self.spec.primary_key)
        paths = [str(s.keys_path) for s in staged if s.file_level is None and s.valid_count and s.keys_path]
        if not pk or not paths:
            return
        seq = self.spec.sequence_column
        version = [*pk, *([seq] if seq else [])]
        position = self._position_columns
        pk_sql, version_sql, position_sql = (", ".join(quote_ident(c) for c in cols) for cols in (pk, version, position))
        keys = f"read_parquet([{', '.join(quote_literal(p) for p in paths)}])"
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE candidates AS SELECT * FROM {keys} "
            f"SEMI JOIN (SELECT {pk_sql} FROM {keys} GROUP BY {pk_sql} HAVING count(*) > 1) USING ({pk_sql})"
        )
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE conflicting AS SELECT c.*, g.versions FROM candidates c JOIN ("
            f"SELECT {version_sql}, count(*) AS versions FROM candidates GROUP BY {version_sql} "
            f"HAVING min({HASH_PREFIX}) <> max({HASH_PREFIX})) g USING ({version_sql})"
        )
        order = ", ".join([*([f"{quote_ident(seq)} DESC"] if seq else []), *(f"{quote_ident(c)} DESC" for c in position)])
        superseded_sql = (
            f"SELECT {position_sql} FROM (SELECT * FROM candidates ANTI JOIN conflicting USING ({position_sql})) "
            f"QUALIFY row_number() OVER (PARTITION BY {pk_sql} ORDER BY {order}) > 1"
            if self.spec.write_disposition == "merge" else f"SELECT {position_sql} FROM candidates WHERE false"
        )
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE superseded AS {superseded_sql}")
        late = self._late_versions(keys, pk, position)
        for item in staged:
            if item.file_level is not None or not item.valid_count:
                continue
            name = quote_literal(item.file.rel_path)
            conflicts = self.con.execute(f"SELECT * FROM conflicting WHERE src_filename = {name}").to_arrow_table()
            superseded = self.con.execute(f"SELECT * FROM superseded WHERE src_filename = {name}").to_arrow_table()
            older = self.con.execute(f"SELECT * FROM {late} WHERE src_filename = {name}").to_arrow_table()
            if conflicts.num_rows:
                item.conflicts = conflicts.append_column("__key", self._position_key(conflicts))
            if superseded.num_rows or older.num_rows:
                item.dropped = pa.concat_arrays([self._position_key(superseded), self._position_key(older)])
            item.valid_count -= conflicts.num_rows
            item.reject_count += conflicts.num_rows
            item.superseded_count = superseded.num_rows
            item.late_count = older.num_rows
        # Each file holds its own results now; the tables would occupy DuckDB's memory while the rows are emitted.
        self.con.execute(f"DROP TABLE candidates; DROP TABLE conflicting; DROP TABLE superseded; DROP TABLE {late}")
        pa.default_memory_pool().release_unused()

    def _late_versions(self, keys: str, pk: list[str], position: list[str]) -> str:
        """Create the temp table `late` of the positions of rows to load whose key already holds a newer version in
        the destination (never for append tables or tables without a sequence column); return its name."""
        seq = self.spec.sequence_column
        position_sql = ", ".join(quote_ident(c) for c in position)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE late AS SELECT {position_sql} FROM {keys} WHERE false")
        if self.newer_versions is None or seq is None or self.spec.write_disposition != "merge":
            return "late"
        found = self.con.execute(f"SELECT min({quote_ident(seq)}) FROM {keys}").fetchone()
        oldest = found[0] if found else None
        if oldest is None:
            return "late"
        loaded_names = [self.column_name(c) for c in (*pk, seq)]

        def keep(reader: pa.RecordBatchReader) -> None:
            renamed = pa.RecordBatchReader.from_batches(
                pa.schema([f.with_name(f"__l{i}") for i, f in enumerate(reader.schema)]),
                (pa.record_batch(b.columns, names=[f"__l{i}" for i in range(b.num_columns)]) for b in reader))
            self.con.register("loaded_versions", renamed)
            try:
                key_of = ", ".join(f"__l{i} AS {quote_ident(c)}" for i, c in enumerate(pk))
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE newest AS SELECT {key_of}, max(__l{len(pk)}) AS "
                                 f"__newest FROM loaded_versions GROUP BY ALL")
            finally:
                self.con.unregister("loaded_versions")

        self.con.execute("DROP TABLE IF EXISTS newest")
        if not self.newer_versions(loaded_names, loaded_names[-1], oldest, keep):
            return "late"
        exists = self.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'newest' AND temporary"
                                  ).fetchone()
        if not exists or not exists[0]:
            return "late"
        pk_sql = ", ".join(quote_ident(c) for c in pk)
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE late AS SELECT {position_sql} FROM (SELECT * FROM {keys} JOIN newest "
            f"USING ({pk_sql}) WHERE newest.__newest > {quote_ident(seq)}) "
            f"ANTI JOIN conflicting USING ({position_sql}) ANTI JOIN superseded USING ({position_sql})"
        )
        self.con.execute("DROP TABLE newest")
        return "late"

    def _drop_resolved(self, batch: pa.Table, item: _StagedFile) -> tuple[pa.Table, pa.Table]:
        """Split a staged batch into the rows to load and the rows of conflicting keys (with their version count)."""
        key = self._position_key(batch)
        drop = pc.is_in(key, item.dropped) if item.dropped is not None else pa.repeat(pa.scalar(False), len(key))
        conflicting = batch.slice(0, 0).append_column("versions", pa.array([], pa.int64()))
        if item.conflicts is not None:
            in_conflict = pc.is_in(key, item.conflicts["__key"])
            drop = pc.or_(drop, in_conflict)
            found = batch.filter(in_conflict)
            versions = pc.index_in(self._position_key(found), item.conflicts["__key"])
            conflicting = found.append_column("versions", item.conflicts["versions"].take(versions))
        return batch.filter(pc.invert(drop)), conflicting

    def _duplicate_rejects(self, dup: pa.Table, item: _StagedFile) -> pa.Table:
        """Reject records for rows of conflicting keys (per-row formatting: these rows are few by nature)."""
        src_filename = item.file.rel_path
        keys = [*self.spec.primary_key, *([self.spec.sequence_column] if self.spec.sequence_column else [])]
        detail = [
            f"{dict(zip(keys, map(str, values), strict=True))} has {n} versions with different content in this load"
            for *values, n in zip(*(dup[k].to_pylist() for k in keys), dup["versions"].to_pylist(), strict=True)
        ]
        n = dup.num_rows
        return pa.table(
            {
                "table_name": pa.repeat(pa.scalar(self.spec.name), n),
                "src_filename": pa.repeat(pa.scalar(src_filename), n),
                "src_row_number": dup[ROW_NUMBER],
                "src_sheet": dup["src_sheet"] if "src_sheet" in dup.column_names else pa.nulls(n, pa.string()),
                "reason_code": pa.repeat(pa.scalar(reasons.DUPLICATE_KEY), n),
                "column_name": pa.repeat(pa.scalar(",".join(self.spec.primary_key)), n),
                "reason_detail": pa.array(detail, pa.string()),
                "raw_record": records_as_json(dup.select(self.spec.schema.names)),
                "src_row_hash": dup[ROW_HASH],
            },
            schema=REJECT_SCHEMA,
        )

    def _emit(self, item: _StagedFile) -> Iterator[tuple[OutputKind, pa.Table]]:
        rel = item.file.rel_path
        if item.skipped:
            yield "manifest", self._manifest(item, STATUS_CHANGED_SKIPPED)
            return
        if item.file_level is not None:
            code, detail = item.file_level
            yield "rejects", self._with_run_fields(file_reject(self.spec, rel, code, detail))
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
        rejects = [t for t in self._staged_rejects(item) if t.num_rows] + duplicates
        if rejects:
            yield "rejects", self._with_run_fields(pa.concat_tables(rejects))
        status = STATUS_EMPTY if item.row_count == 0 else STATUS_WITH_REJECTS if item.reject_count else STATUS_OK
        yield "manifest", self._manifest(item, status)

    @staticmethod
    def _staged_rejects(item: _StagedFile) -> list[pa.Table]:
        if item.rejects_path is None or not item.rejects_path.exists():
            return []
        with pa.memory_map(str(item.rejects_path)) as source:
            return [pa.ipc.open_file(source).read_all()]

    def _with_run_fields(self, rejects: pa.Table) -> pa.Table:
        n = rejects.num_rows
        return (rejects.append_column(RUN_FIELDS[0], pa.repeat(pa.scalar(self.ingestion_ts, UTC_TS), n))
                .append_column(RUN_FIELDS[1], pa.repeat(pa.scalar(self.load_id, pa.string()), n)))

    def _manifest(self, item: _StagedFile, status: str) -> pa.Table:
        row = {
            "src_path": item.file.rel_path, "table_name": self.spec.name, "processed_at": self.ingestion_ts,
            "file_fingerprint": item.fingerprint, "file_size": item.file.size, "row_count": item.row_count,
            "valid_count": item.valid_count, "reject_count": item.reject_count,
            "superseded_count": item.superseded_count, "late_count": item.late_count, "status": status,
            "replaced_fingerprint": item.replaced_fingerprint,
            "extra_columns": ",".join(sorted(item.extra_columns)) or None,
            "load_id": self.load_id,
        }
        if item.file_level is not None:
            row.update(row_count=0, valid_count=0, reject_count=0)
        return pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA)


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
