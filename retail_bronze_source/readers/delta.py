"""Delta reader: one table directory, read at its latest version or as the rows added after a known version."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from .. import limits
from ..helpers import row_number_array
from ..raw import FileRejected, RawChunk, RawFile, plain_types
from ..reasons import FILE_UNREADABLE, LIMIT_EXCEEDED, OUTSIDE_RAW_ROOT, UNSUPPORTED_FILE

_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
_ADDED_CHANGE_TYPES = pa.array(["insert", "update_postimage"])
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LOG = "_delta_log"


def read_delta(file: RawFile, chunk_size: int, *, starting_version: int | None = None,
               max_columns: int = limits.MAX_COLUMNS) -> Iterator[RawChunk]:
    """Stream the Delta table at `file.path` in chunks of at most `chunk_size` rows, columns in their stored types
    (view types as their plain equivalents) with partition columns included.

    Without `starting_version` the latest version is read whole; deletion vectors and column mapping are honoured.
    With it, only rows added by commits after that version: the change data feed's `insert` and `update_postimage`
    rows when the table enables it, otherwise every row of the data files present now that were not part of the table
    at `starting_version` (rewritten files deliver their unchanged rows again; deletes are not reported). The second
    way needs a table without deletion vectors or column mapping, else the table is rejected as `UNSUPPORTED_FILE`.

    `row_numbers` are 1-based positions in this scan, which follows the table's file order and is deterministic for
    one version; change-feed rows come in the order deltalake returns them, not necessarily commit order. A directory that is not a Delta table, or a table needing reader features deltalake lacks, raises
    `FileRejected(UNSUPPORTED_FILE)`; missing or corrupt data files raise `FileRejected(FILE_UNREADABLE)`, possibly
    after earlier chunks. Call `delta_version` before reading so that a commit landing in between is read again next
    time rather than skipped. Object stores take their credentials from deltalake's environment variables.

    Unless `file.confined` is off, no data is read before every data file of the version read (and, for a change
    feed, every file the commits of the increment add, remove or record as changes) is known to lie inside the table
    directory: a path that is a URL or absolute, one with a `..` segment (percent-encoded ones included), or, on a
    local disk, a link leading outside raises `FileRejected(OUTSIDE_RAW_ROOT)`, as does a log entry that is such a
    link. Deletion vectors stored at absolute paths are checked in the increment's commits only (deltalake does not
    expose them before reading them).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with _delta_errors(file):
        table = _open(file)
        version = table.version()
        if starting_version is not None and starting_version >= version:
            return
        _check_data_files(table, file, version)
        width = len(table.schema().fields)
        if width > max_columns:
            raise FileRejected(LIMIT_EXCEEDED, f"max_columns: the Delta table {file.rel_path} has {width} columns, "
                               f"over the limit of {max_columns} (reader_options['max_columns'] raises it)")
        chunk_size = limits.chunk_rows(chunk_size, width)
        if starting_version is None:
            batches: Iterable[pa.RecordBatch] = _scan(table, chunk_size)
        elif table.metadata().configuration.get("delta.enableChangeDataFeed", "false").lower() == "true":
            _check_commits(file, starting_version + 1, version)
            batches = _added_by_change_feed(table, starting_version, version)
        else:
            batches = _added_files(table, starting_version, chunk_size, file)
        read = 0
        for data in _rebatch(batches, chunk_size):
            chunk = RawChunk(data=plain_types(data), row_numbers=row_number_array(read + 1, data.num_rows))
            read += data.num_rows
            yield chunk


def delta_version(file: RawFile) -> int:
    """Return the latest version of the Delta table at `file.path` (the version a full read returns)."""
    with _delta_errors(file):
        return int(_open(file).version())


@contextmanager
def _delta_errors(file: RawFile) -> Iterator[None]:
    from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

    try:
        yield
    except TableNotFoundError as exc:
        raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} is not a Delta table: {_message(exc)}") from exc
    except DeltaProtocolError as exc:
        raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} needs a Delta feature this reader cannot read: "
                                             f"{_message(exc)}") from exc
    except DeltaError as exc:
        if "Unsupported" in str(exc):
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path} needs a Delta feature this reader cannot read: "
                                                 f"{_message(exc)}") from exc
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: {_message(exc)}") from exc
    except (pa.ArrowException, OSError) as exc:
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: {type(exc).__name__}: {_message(exc)}") from exc


def _message(exc: BaseException) -> str:
    """The error text on one line, without the Rust backtrace deltalake may append."""
    text = re.split(r"\n\s*0: ", str(exc), maxsplit=1)[0]
    return " ".join(text.split())


def _open(file: RawFile) -> Any:
    from deltalake import DeltaTable

    file.check_not_refused()
    local = _local_directory(file)
    if local is not None:
        _check_log(file, local)
    if _is_local(file):
        return DeltaTable(file.path)
    return DeltaTable(file.fs.unstrip_protocol(file.path), storage_options=dict(file.storage_options or {}))


def _is_local(file: RawFile) -> bool:
    protocol = file.fs.protocol if isinstance(file.fs.protocol, str) else file.fs.protocol[0]
    return protocol in _LOCAL_PROTOCOLS


def _local_directory(file: RawFile) -> str | None:
    """The resolved table directory of a confined table on a local disk (None elsewhere: nothing to resolve)."""
    return os.path.realpath(file.path) if file.confined and _is_local(file) else None


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)


def _outside(file: RawFile, what: str) -> FileRejected:
    return FileRejected(OUTSIDE_RAW_ROOT, f"{file.rel_path}: {what}; nothing of the table is read (a table reads "
                                          "such files only when declared with allow_outside_raw_root=True)")


def _check_log(file: RawFile, table_dir: str) -> None:
    """Refuse a local table whose log, or an entry of it, is a link leading outside the table directory."""
    log = os.path.join(file.path, _LOG)
    if not os.path.isdir(log):
        return  # not a Delta table: deltalake says so
    if not _inside(os.path.realpath(log), table_dir):
        raise _outside(file, f"{_LOG} is a symbolic link leading outside the table directory")
    with os.scandir(log) as entries:
        for entry in entries:
            if entry.is_symlink() and not _inside(os.path.realpath(entry.path), table_dir):
                raise _outside(file, f"the log entry {entry.name} is a symbolic link leading outside the table "
                                     "directory")


def _check_data_files(table: Any, file: RawFile, version: int) -> None:
    """Refuse the table if a data file of `version` lies outside its directory (per file: each needs a path check,
    and a local one a `realpath`)."""
    if not file.confined:
        return
    table_dir = _local_directory(file)
    for path in pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist():
        problem = _path_problem(path, table_dir)
        if problem:
            raise _outside(file, f"a data file of version {version} {problem}")


def _check_commits(file: RawFile, first: int, last: int) -> None:
    """Refuse the table if a commit from `first` to `last` adds, removes or records as changed a file outside its
    directory, or has a deletion vector stored at an absolute path (a change feed reads all of them)."""
    if not file.confined:
        return
    table_dir = _local_directory(file)
    for version in range(first, last + 1):
        with file.fs.open(f"{file.path}/{_LOG}/{version:020d}.json", "rb") as commit:
            for line in commit:
                if not line.strip():
                    continue
                entry = json.loads(line)
                for kind in ("add", "remove", "cdc"):
                    action = entry.get(kind) if isinstance(entry, dict) else None
                    if not isinstance(action, dict):
                        continue
                    problem = _path_problem(str(action.get("path", "")), table_dir)
                    vector = action.get("deletionVector")
                    if not problem and isinstance(vector, dict) and vector.get("storageType") == "p":
                        problem = "has a deletion vector stored at an absolute path"
                    if problem:
                        raise _outside(file, f"a file of the {kind} action{'s' if kind != 'cdc' else ''} of version "
                                             f"{version} {problem}")


def _path_problem(path: str, table_dir: str | None) -> str | None:
    """Why a data file path of the log lies outside the table directory, or None. The path itself is not quoted:
    it is file content and may spell a host path."""
    decoded = path
    while (once := unquote(decoded)) != decoded:  # each round shortens the text, so this ends
        decoded = once
    if _URL_SCHEME.match(decoded):
        return "is given as a URL"
    if decoded.startswith(("/", "\\")):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", decoded):
        return "has a path leaving the table directory (..)"
    if table_dir is not None and any(not _inside(os.path.realpath(os.path.join(table_dir, p)), table_dir)
                                     for p in {path, unquote(path)}):
        return "is a symbolic link, or lies under one, leading outside the table directory"
    return None


def _scan(table: Any, chunk_size: int) -> Iterator[pa.RecordBatch]:
    from deltalake import QueryBuilder

    # one partition keeps the engine reading files in the table's order, so row positions are reproducible
    config = {"datafusion.execution.target_partitions": "1", "datafusion.execution.batch_size": str(chunk_size)}
    reader = QueryBuilder(config).register("bronze_source", table).execute('SELECT * FROM "bronze_source"')
    yield from pa.RecordBatchReader.from_stream(reader)


def _added_by_change_feed(table: Any, starting_version: int, version: int) -> Iterator[pa.RecordBatch]:
    reader = pa.RecordBatchReader.from_stream(table.load_cdf(starting_version=starting_version + 1,
                                                             ending_version=version))
    for batch in reader:
        batch = plain_types(batch)
        kept = batch.filter(pc.is_in(batch.column("_change_type"), _ADDED_CHANGE_TYPES))
        yield kept.drop_columns(list(_CDF_COLUMNS))


def _added_files(table: Any, starting_version: int, chunk_size: int, file: RawFile) -> Iterator[pa.RecordBatch]:
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    configuration = table.metadata().configuration
    if configuration.get("delta.columnMapping.mode", "none") != "none" or _has_deletion_vectors(table):
        raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path}: reading rows added after version {starting_version} "
                                             "of a table with column mapping or deletion vectors needs its change "
                                             "data feed (delta.enableChangeDataFeed = true)")
    before = DeltaTable(table.table_uri, version=starting_version,
                        storage_options=None if _is_local(file) else dict(file.storage_options or {})
                        ).to_pyarrow_dataset()
    known = {fragment.path for fragment in before.get_fragments()}
    dataset = table.to_pyarrow_dataset()
    # INT96 timestamps (Spark's default) read as nanoseconds wrap beyond 1677-2262; Delta timestamps are microseconds.
    parquet = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us"))
    fragments = [parquet.make_fragment(fragment.path, dataset.filesystem, fragment.partition_expression)
                 for fragment in dataset.get_fragments() if fragment.path not in known]
    added = ds.FileSystemDataset(fragments, dataset.schema, parquet, dataset.filesystem)
    yield from added.to_batches(batch_size=chunk_size)


def _has_deletion_vectors(table: Any) -> bool:
    features = table.protocol().reader_features or []
    return "deletionVectors" in features


def _rebatch(batches: Iterable[pa.RecordBatch], chunk_size: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            piece = batch.slice(offset, min(chunk_size - size, batch.num_rows - offset))
            pending.append(piece)
            size += piece.num_rows
            offset += piece.num_rows
            if size == chunk_size:
                yield pa.Table.from_batches(pending)
                pending, size = [], 0
    if size:
        yield pa.Table.from_batches(pending)
