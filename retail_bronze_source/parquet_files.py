"""Parquet files the package writes itself: a table's rows handed to dlt ready-made, and the Delta mirror's files.

Both are written with options chosen per column from the first rows (`parquet_options`): pyarrow's default tries a
dictionary for every column and falls back to plain encoding for unique ones (keys, row hashes) after doing the
work, and Snappy gains nothing on row hashes; together that was about half the encoding time of a Bronze table.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import settings


def files_for(rows: int) -> int:
    """How many files `rows` rows are written to, in parallel: one per `settings.MIN_ROWS_PER_PARQUET_FILE` rows, at most
    `settings.parallel_parquet_files()`."""
    return max(1, min(settings.parallel_parquet_files(), rows // settings.MIN_ROWS_PER_PARQUET_FILE))


def parquet_options(sample: pa.Table) -> dict[str, Any]:
    """Writer options for a file whose first rows are `sample`: dictionary encoding for the columns that repeat
    values (at most `settings.PARQUET_MAX_DISTINCT_SHARE` distinct in the first `settings.PARQUET_SAMPLE_ROWS` rows), Snappy compression for the others
    unless their values do not compress. Values that do not compress (row hashes) are random, so they also get no
    min/max statistics: no row group could be skipped by them, and computing them would only cost time. A sample too
    small to tell gets pyarrow's defaults."""
    head = sample.slice(0, settings.PARQUET_SAMPLE_ROWS)
    if head.num_rows < settings.PARQUET_SAMPLE_ROWS // 10:
        return {"use_dictionary": True, "compression": "snappy"}
    limit = head.num_rows * settings.PARQUET_MAX_DISTINCT_SHARE
    dictionary: list[str] = []
    compression: dict[str, str] = {}
    statistics: list[str] = []
    for name, column in zip(head.column_names, head.columns, strict=True):
        compression[name] = "snappy"
        if pa.types.is_nested(column.type):
            statistics.append(name)
            continue
        if pa.types.is_dictionary(column.type) or pc.count_distinct(column, mode="all").as_py() <= limit:
            dictionary.append(name)
        elif not _compresses(column):
            compression[name] = "none"
        if compression[name] != "none":
            statistics.append(name)
    return {"use_dictionary": dictionary, "compression": compression, "write_statistics": statistics}


def _compresses(column: pa.ChunkedArray) -> bool:
    """Whether Snappy shrinks the column's values by at least `settings.PARQUET_MIN_COMPRESSION_GAIN`."""
    values = column.combine_chunks().buffers()[-1]
    if values is None or values.size == 0:
        return True
    probe = values[:settings.PARQUET_COMPRESSION_PROBE_BYTES]
    return pa.compress(probe, codec="snappy", asbytes=False).size <= probe.size * (1 - settings.PARQUET_MIN_COMPRESSION_GAIN)


@dataclass(frozen=True)
class WrittenFile:
    """One Parquet file written by `RowFiles`."""

    path: Path
    rows: int
    schema: pa.Schema


class RowFiles:
    """Writes tables to Parquet files in a folder, encoding on background threads while the caller prepares the next
    table.

    Each table goes to the one of `files` encoders given the fewest rows so far; each encoder writes its own file, so
    that the files are encoded in parallel; a table whose schema differs from its encoder's previous one starts a new
    file. At most `max_pending` tables wait per encoder, which bounds memory. Use as a context manager: leaving it
    stops the encoders, and `close()` returns the files written (after waiting for every write).
    """

    def __init__(self, folder: Path, prefix: str, *, files: int = 1, max_pending: int = 1) -> None:
        self._encoders = [_Encoder(folder, f"{prefix}.{i}", max_pending) for i in range(max(files, 1))]
        self._rows = [0] * len(self._encoders)

    def __enter__(self) -> RowFiles:
        return self

    def __exit__(self, *error: object) -> None:
        for encoder in self._encoders:
            encoder.stop()

    def write(self, table: pa.Table) -> None:
        """Queue `table` for writing; raises an encoder's error if an earlier write failed."""
        if table.num_rows:
            fewest = self._rows.index(min(self._rows))
            self._encoders[fewest].put(table)
            self._rows[fewest] += table.num_rows

    def close(self) -> list[WrittenFile]:
        """Wait for every queued table, close the files and return them."""
        written = []
        for encoder in self._encoders:
            written += encoder.close()
        return written


class _Encoder:
    """One background thread writing the tables it is given to Parquet files `<prefix>.<n>.parquet`, in row groups of
    `settings.PARQUET_ROW_GROUP_ROWS` whatever the size of the tables (the rows of a partial row group wait for the next table); a file
    is closed once it reaches `settings.TARGET_FILE_SIZE`."""

    def __init__(self, folder: Path, prefix: str, max_pending: int) -> None:
        self.folder = folder
        self.prefix = prefix
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=max_pending)
        self._written: list[WrittenFile] = []
        self._error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._current: WrittenFile | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._thread = threading.Thread(target=self._run, name=f"parquet-{prefix}", daemon=True)
        self._thread.start()

    def put(self, table: pa.Table) -> None:
        self._raise_error()
        self._queue.put(table)

    def close(self) -> list[WrittenFile]:
        self.stop()
        self._raise_error()
        return list(self._written)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing Parquet file {self.folder / self.prefix}.*.parquet failed: "
                               f"{self._error}") from self._error

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._write(table)
            except BaseException as error:  # handed to the caller by put() and close()
                self._error = error
        try:
            self._finish_file()
        except BaseException as error:
            self._error = self._error or error

    def _write(self, table: pa.Table) -> None:
        if self._writer is None or self._current is None or not self._current.schema.equals(table.schema):
            self._finish_file()
            path = self.folder / f"{self.prefix}.{len(self._written)}.parquet"
            self._writer = pq.ParquetWriter(path, table.schema, **parquet_options(table))
            self._current = WrittenFile(path, 0, table.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= settings.PARQUET_ROW_GROUP_ROWS:
            rows = pa.concat_tables(self._pending)
            whole = rows.num_rows - rows.num_rows % settings.PARQUET_ROW_GROUP_ROWS
            self._pending, self._pending_rows = [rows.slice(whole)], rows.num_rows - whole
            self._append(rows.slice(0, whole))
            if self._current.path.stat().st_size >= settings.TARGET_FILE_SIZE:
                self._finish_file()

    def _append(self, rows: pa.Table) -> None:
        assert self._writer is not None and self._current is not None
        self._writer.write_table(rows, row_group_size=settings.PARQUET_ROW_GROUP_ROWS)
        self._current = WrittenFile(self._current.path, self._current.rows + rows.num_rows, self._current.schema)

    def _finish_file(self) -> None:
        if self._writer is not None and self._current is not None:
            if self._pending_rows:
                self._append(pa.concat_tables(self._pending))
            self._writer.close()
            self._written.append(self._current)
        self._writer, self._current = None, None
        self._pending, self._pending_rows = [], 0
