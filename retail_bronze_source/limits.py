"""Limits on what one raw file may cost, each enforced by the readers as a file-level `LIMIT_EXCEEDED` reject.

Every limit but `MAX_CHUNK_CELLS` is overridable per table through the `reader_options` key named beside it; a file
over a limit is rejected whole, before its rows are validated, and its reject names the limit, the value found and
that key.
"""

from __future__ import annotations

from typing import Final

MAX_COLUMNS: Final = 2048
"""`max_columns`: columns of one file; validation and the row hash cost grow faster than the column count, and the
widest file that loads within the memory budget sets it."""

MAX_CHUNK_CELLS: Final = 1 << 21
"""Cells (rows x columns) of one chunk: validation, hashing and staging hold copies of a chunk, so a wide file comes
in chunks of fewer rows (the default 131,072-row chunk is cut beyond 16 columns); not an option, it never changes
what loads."""

MAX_CSV_RECORD_BYTES: Final = 2 << 20
"""`max_record_bytes` of delimited text: the CSV parser's block, which must hold a record and of which it reads 32
ahead; a longer record is nearly always a quote that is never closed."""

MAX_JSON_RECORD_BYTES: Final = 16 << 20
"""`max_record_bytes` of JSON Lines and JSON arrays: a line or element is parsed whole in memory (DuckDB's own
`read_json` limit, `maximum_object_size`, has the same default)."""

MAX_UNPACKED_BYTES: Final = 512 << 20
"""`max_unpacked_bytes` of an XLSX workbook: what its zip members inflate to, which a zip bomb makes unbounded; openpyxl
parses sheet XML slowly, so this also bounds the time a workbook takes (1M rows of 15 shared-string cells fit)."""


def chunk_rows(chunk_size: int, columns: int) -> int:
    """Rows per chunk for a file of `columns` columns: `chunk_size`, or fewer so that a chunk holds at most
    `MAX_CHUNK_CELLS` cells."""
    return max(1, min(chunk_size, MAX_CHUNK_CELLS // max(columns, 1)))
