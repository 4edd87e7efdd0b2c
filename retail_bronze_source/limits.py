"""Limits on what one raw file may cost, each enforced by the readers as a file-level `LIMIT_EXCEEDED` reject.

Every limit is overridable per table through the `reader_options` key named beside it; a file over a limit is
rejected whole, before its rows are validated, and its reject names the limit, the value found and that key.
"""

from __future__ import annotations

from typing import Final

MAX_COLUMNS: Final = 4096
"""`max_columns`: columns of one file (header fields, JSON keys of a chunk, sheet header cells, Parquet/Delta
fields). Validation builds one SQL expression per column and the row hash costs grow with the column count squared:
far wider files ran DuckDB out of memory or hashed for minutes."""

MAX_CSV_RECORD_BYTES: Final = 2 << 20
"""`max_record_bytes` of delimited text: the CSV parser's block size, which is both its longest record and a
thirty-second of what it reads ahead; a longer record is nearly always a quote that is never closed."""

MAX_JSON_RECORD_BYTES: Final = 16 << 20
"""`max_record_bytes` of JSON Lines and JSON arrays: the longest line or array element, parsed whole in memory
(DuckDB's own `read_json` default, `maximum_object_size`, is the same 16 MiB)."""

MAX_UNPACKED_BYTES: Final = 1 << 30
"""`max_unpacked_bytes` of an XLSX workbook: the bytes its zip members inflate to; a zip bomb of a few kilobytes
otherwise inflates without bound (shared strings are held in memory whole)."""
