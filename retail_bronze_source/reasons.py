"""Stable reason codes of the rejects output. Values never change once released."""

from __future__ import annotations

from typing import Final

FILE_UNREADABLE: Final = "FILE_UNREADABLE"
"""The file is corrupt or truncated and cannot be decoded; none of its rows load."""
FILE_ENCODING: Final = "FILE_ENCODING"
"""The file is not valid UTF-8; none of its rows load."""
MISSING_REQUIRED_COLUMN: Final = "MISSING_REQUIRED_COLUMN"
"""The file lacks a column that the contract requires; none of its rows load."""
UNSUPPORTED_FILE: Final = "UNSUPPORTED_FILE"
"""The file's format is not one the table accepts, or uses features the reader cannot decode."""
COLUMN_TYPE_CHANGED: Final = "COLUMN_TYPE_CHANGED"
"""With schema evolution: a column outside the contract has another type than the table gave it; none of the file's
rows load."""
OUTSIDE_RAW_ROOT: Final = "OUTSIDE_RAW_ROOT"
"""The file is a symbolic link (or lies under one) leading outside the raw root, or a Delta table's version read or
increment has a data file outside its table directory (an absolute path, a URL, a `..` path, a link leading out);
nothing of it is read. A table may allow such files explicitly with `TableSpec(allow_outside_raw_root=True)`."""
LIMIT_EXCEEDED: Final = "LIMIT_EXCEEDED"
"""The file is over one of the readers' stated limits (columns, record length, unpacked size; `limits.py`); none of
its rows load. The detail names the limit, the value found and the `reader_options` key that raises it."""
COLUMN_NAME_CONFLICT: Final = "COLUMN_NAME_CONFLICT"
"""Two columns of the file have one name, or, with schema evolution, a column to be added has the name of a table
column or of another added column once the destination normalizes it (`Order_ID` beside `order_id`, `id`/`Id`); none
of the file's rows load."""
VALIDATION_FAILED: Final = "VALIDATION_FAILED"
"""Validating, hashing or staging the file's rows failed with an unexpected error, named in the detail (a defect of
this package or of a library it uses, met on this file); none of its rows load and the other files go on."""

MALFORMED_ROW: Final = "MALFORMED_ROW"
"""A record that cannot be tokenized (broken quoting, unterminated quoted field)."""
TOO_MANY_COLUMNS: Final = "TOO_MANY_COLUMNS"
"""A record with more fields than the header."""
TOO_FEW_COLUMNS: Final = "TOO_FEW_COLUMNS"
"""A record with fewer fields than the header."""
INVALID_JSON: Final = "INVALID_JSON"
"""A JSON Lines line that is not strict RFC 8259 JSON (NaN, Infinity, invalid UTF-8 included)."""
NOT_AN_OBJECT: Final = "NOT_AN_OBJECT"
"""A JSON Lines line that is valid JSON but not an object."""

TYPE_MISMATCH: Final = "TYPE_MISMATCH"
"""A value that cannot be converted to the contract type without loss."""
NOT_NULL: Final = "NOT_NULL"
"""A required value is missing or empty."""
ACCEPTED_VALUES: Final = "ACCEPTED_VALUES"
"""A value outside the contract's accepted values."""
OUT_OF_RANGE: Final = "OUT_OF_RANGE"
"""A value outside the contract's min/max bounds."""
PATTERN_MISMATCH: Final = "PATTERN_MISMATCH"
"""A text value that does not match the contract's pattern."""
DUPLICATE_KEY: Final = "DUPLICATE_KEY"
"""Rows of one load sharing key and sequence value but differing in content."""

LOAD_FAILED: Final = "LOAD_FAILED"
"""A destination refused a load job; its rows are kept here with the job's error message."""

FILE_LEVEL: Final = frozenset({FILE_UNREADABLE, FILE_ENCODING, MISSING_REQUIRED_COLUMN, UNSUPPORTED_FILE,
                               COLUMN_TYPE_CHANGED, OUTSIDE_RAW_ROOT, LIMIT_EXCEEDED, COLUMN_NAME_CONFLICT,
                               VALIDATION_FAILED})
ROW_PARSE: Final = frozenset({MALFORMED_ROW, TOO_MANY_COLUMNS, TOO_FEW_COLUMNS, INVALID_JSON, NOT_AN_OBJECT})
CONTRACT: Final = frozenset({TYPE_MISMATCH, NOT_NULL, ACCEPTED_VALUES, OUT_OF_RANGE, PATTERN_MISMATCH, DUPLICATE_KEY})
ALL: Final = FILE_LEVEL | ROW_PARSE | CONTRACT | {LOAD_FAILED}
