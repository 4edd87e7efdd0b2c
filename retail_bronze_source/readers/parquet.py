"""Parquet reader: stored column types, bounded batches, corrupt files rejected whole."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .. import limits
from ..reasons import FILE_UNREADABLE, LIMIT_EXCEEDED, UNSUPPORTED_FILE
from .base import FileRejected, RawChunk, RawFile, open_for_read
from .records import row_number_array


def read_parquet(file: RawFile, chunk_size: int, *, max_columns: int = limits.MAX_COLUMNS) -> Iterator[RawChunk]:
    """Stream a Parquet file in chunks of at most `chunk_size` rows, columns in their stored types.

    `row_numbers` are 1-based row positions in the file. A file that cannot be opened or fully decoded raises
    `FileRejected(FILE_UNREADABLE)` (`UNSUPPORTED_FILE` when it uses an encoding or type pyarrow does not implement);
    corruption found in a later batch raises after earlier chunks were yielded, so callers discard a file's partial
    output on `FileRejected`. Decoded rows must add up to the row count the footer declares. A file of more than
    `max_columns` top-level columns is `LIMIT_EXCEEDED`.
    """
    with open_for_read(file, chunk_size) as handle:
        read = 0
        try:
            parquet_file = pq.ParquetFile(handle, pre_buffer=False)  # pre-buffering holds whole files
            declared = parquet_file.metadata.num_rows
            width = len(parquet_file.schema_arrow)
            if width > max_columns:
                raise FileRejected(LIMIT_EXCEEDED, f"max_columns: {file.rel_path} has {width} columns, over the limit "
                                                   f"of {max_columns} (reader_options['max_columns'] raises it)")
            for batch in parquet_file.iter_batches(batch_size=limits.chunk_rows(chunk_size, width)):
                batch.validate(full=True)
                chunk = RawChunk(data=pa.Table.from_batches([batch]), row_numbers=row_number_array(read + 1, batch.num_rows))
                read += batch.num_rows
                yield chunk
        except pa.ArrowNotImplementedError as exc:
            raise FileRejected(UNSUPPORTED_FILE, f"{file.rel_path}: {exc}") from exc
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: {exc}") from exc
    if read != declared:
        raise FileRejected(FILE_UNREADABLE, f"{file.rel_path}: decoded {read} rows but the footer declares {declared}")
