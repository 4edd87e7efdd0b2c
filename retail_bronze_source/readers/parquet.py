"""Parquet reader: stored column types, bounded batches, corrupt files rejected whole."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import limits
from ..helpers import records_as_json, row_number_array
from ..raw import FileRejected, ParseReject, RawChunk, RawFile, open_for_read, plain_types
from ..reasons import FILE_UNREADABLE, LIMIT_EXCEEDED, TYPE_MISMATCH, UNSUPPORTED_FILE


def read_parquet(file: RawFile, chunk_size: int, *, max_columns: int = limits.MAX_COLUMNS) -> Iterator[RawChunk]:
    """Stream a Parquet file in chunks of at most `chunk_size` rows, columns in their stored types.

    `row_numbers` are 1-based row positions in the file. A file that cannot be opened or fully decoded raises
    `FileRejected(FILE_UNREADABLE)` (`UNSUPPORTED_FILE` when it uses an encoding or type pyarrow does not implement);
    corruption found in a later batch raises after earlier chunks were yielded, so callers discard a file's partial
    output on `FileRejected`. Decoded rows must add up to the row count the footer declares. A file of more than
    `max_columns` top-level columns is `LIMIT_EXCEEDED`.

    Legacy INT96 timestamps are read as microsecond timestamps, as Spark and DuckDB read them: read as nanoseconds
    (pyarrow's default) they wrap around outside 1677-2262 (9999-12-31 read as 1816). A row whose top-level INT96
    value has a non-zero digit below the microsecond is a `TYPE_MISMATCH` parse reject naming it, found by reading
    those columns a second time as nanoseconds; INT96 values inside nested columns are read at microseconds unchecked.
    """
    with open_for_read(file, chunk_size) as handle, ExitStack() as stack:
        read = 0
        try:
            parquet_file = pq.ParquetFile(handle, pre_buffer=False,  # pre-buffering holds whole files
                                          coerce_int96_timestamp_unit="us")
            declared = parquet_file.metadata.num_rows
            width = len(parquet_file.schema_arrow)
            if width > max_columns:
                raise FileRejected(LIMIT_EXCEEDED, f"max_columns: {file.rel_path} has {width} columns, over the limit "
                                                   f"of {max_columns} (reader_options['max_columns'] raises it)")
            chunk_size = limits.chunk_rows(chunk_size, width)
            int96 = _int96_columns(parquet_file)
            nanoseconds = _NanosecondReader(stack.enter_context(file.open()), chunk_size, int96) if int96 else None
            for batch in parquet_file.iter_batches(batch_size=chunk_size):
                batch.validate(full=True)
                chunk = RawChunk(data=plain_types(pa.Table.from_batches([batch])),
                                 row_numbers=row_number_array(read + 1, batch.num_rows))
                if nanoseconds is not None:
                    chunk = _reject_lost_nanoseconds(chunk, nanoseconds.take(batch.num_rows), int96)
                read += batch.num_rows
                yield chunk
        except pa.ArrowNotImplementedError as exc:
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path}: {exc}") from exc
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: {exc}") from exc
    if read != declared:
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: decoded {read} rows but the footer declares {declared}")


def _int96_columns(parquet_file: pq.ParquetFile) -> list[str]:
    """Top-level columns stored as INT96."""
    top_level = set(parquet_file.schema_arrow.names)
    schema = parquet_file.schema
    return [schema.column(i).path for i in range(len(schema))
            if schema.column(i).physical_type == "INT96" and schema.column(i).path in top_level]


class _NanosecondReader:
    """The INT96 columns of a file read again as nanoseconds, handed out by row count alongside the main reader."""

    def __init__(self, handle: IO[bytes], chunk_size: int, columns: list[str]) -> None:
        self._batches = pq.ParquetFile(handle, pre_buffer=False).iter_batches(batch_size=chunk_size, columns=columns)
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def take(self, rows: int) -> pa.Table:
        while self._rows < rows:
            batch = next(self._batches)
            self._pending.append(batch)
            self._rows += batch.num_rows
        table = pa.Table.from_batches(self._pending)
        taken, rest = table.slice(0, rows), table.slice(rows)
        self._pending, self._rows = rest.to_batches(), rest.num_rows
        return taken


def _reject_lost_nanoseconds(chunk: RawChunk, nanoseconds: pa.Table, columns: list[str]) -> RawChunk:
    """Move the rows whose INT96 values have nanoseconds below the microsecond from `chunk.data` to its rejects.

    The difference between the value read as nanoseconds and the value read as microseconds times 1000, in wrapping
    64-bit arithmetic, is exactly the digits below the microsecond, even where the nanosecond read wrapped around.
    """
    lost: dict[str, pa.Array] = {}
    for name in columns:
        micro = pc.cast(chunk.data[name], pa.int64())
        nano = pc.cast(nanoseconds[name], pa.int64())
        lost[name] = pc.subtract(nano, pc.multiply(micro, pa.scalar(1000, pa.int64()))).combine_chunks()
    bad = None
    for rest in lost.values():
        nonzero = pc.fill_null(pc.not_equal(rest, 0), False)
        bad = nonzero if bad is None else pc.or_(bad, nonzero)
    if bad is None or not pc.any(bad).as_py():
        return chunk
    rows = pc.indices_nonzero(bad)
    originals = records_as_json(chunk.data.take(rows))
    numbers = chunk.row_numbers.take(rows).to_pylist()
    rejects = []
    for k, row in enumerate(rows.to_pylist()):  # rejected rows only
        names = [name for name, rest in lost.items() if rest[row].as_py()]
        shown = ", ".join(f"{name} = {chunk.data[name][row]} and {lost[name][row]} ns" for name in names)
        rejects.append(ParseReject(row_number=numbers[k], reason_code=TYPE_MISMATCH,
                                   reason_detail=f"INT96 timestamp with nanoseconds below the microsecond ({shown}): "
                                                 "read at microsecond precision, it would change",
                                   raw_record=originals[k].as_py()))
    keep = pc.invert(bad)
    return RawChunk(data=chunk.data.filter(keep), row_numbers=chunk.row_numbers.filter(keep),
                    rejects=[*chunk.rejects, *rejects], sheet=chunk.sheet, raw_records=chunk.raw_records)
