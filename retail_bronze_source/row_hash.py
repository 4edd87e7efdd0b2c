"""`src_row_hash`: SHA-256 hex of each record's canonical form, computed column-wise in DataFusion.

Canonical form of a record: for each source column with a value, in code-point order of the column names, the field
`<name length>:<name>=<value length>:<value>;`; lengths are UTF-8 byte counts in decimal and missing values (null, or
a JSON Lines key that is absent) are left out. Values are the original text for text formats (empty strings included)
and, for binary formats, the stored value cast to text by Arrow; nested and binary values, and values Arrow cannot
cast to text, are JSON (binary as base64 strings, see `records_as_json`). Extension types are hashed as their storage
type, dictionary-encoded values as their values. Example: `{"b": null, "a": "1"}` -> `1:a=1:1;`. The form needs no
escaping, so any language rebuilds it in a few lines, and neither the column order of a file nor the other keys of
neighbouring JSON lines change the hash. A record with no column that has a value hashes the empty string.

Cost is linear in rows and columns: up to `settings.HASH_FLAT_COLUMNS` columns, one DataFusion expression builds and hashes the form;
wider records are built in Arrow `settings.HASH_GROUP_COLUMNS` columns at a time (DataFusion's planning of one expression grows with
the square of its arguments), in row slices of bounded size, and only the finished form goes to DataFusion.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext

from . import settings
from .helpers import quote_literal, records_as_json, row_number_array

EMPTY_HASH = hashlib.sha256(b"").hexdigest()



def canonical_sql(columns: dict[str, str], nullable: set[str], fixed_lengths: dict[str, int] | None = None) -> str:
    """DataFusion SQL of the canonical form; `columns` maps each source column name to its (string) SQL column,
    `nullable` names the columns that hold nulls (only those need a test) and `fixed_lengths` gives the byte length
    shared by every value of a column, where there is one (it is then written as text once, not per row)."""
    fixed = fixed_lengths or {}
    args: list[str] = []
    text = ""
    for name in sorted(columns):
        ref, prefix = columns[name], _prefix(name)
        if name in nullable:
            field = [quote_literal(prefix), f"CAST(octet_length({ref}) AS VARCHAR)", "':'", ref, "';'"]
            args += [*([quote_literal(text)] if text else []),
                     f"CASE WHEN {ref} IS NULL THEN '' ELSE concat({', '.join(field)}) END"]
            text = ""
        elif name in fixed:
            args += [quote_literal(f"{text}{prefix}{fixed[name]}:"), ref]
            text = ";"
        else:
            args += [quote_literal(text + prefix), f"CAST(octet_length({ref}) AS VARCHAR)", "':'", ref]
            text = ";"
    args += [quote_literal(text)] if text else []
    return f"concat({', '.join(args)})" if args else "''"


def _prefix(name: str) -> str:
    return f"{len(name.encode())}:{name}="


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column's values as they enter the canonical form (see the module docstring)."""
    type_ = values.type
    if pa.types.is_string(type_):
        return values
    if pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return values.cast(pa.string())
    if isinstance(type_, pa.BaseExtensionType):
        return _as_text(pa.chunked_array([c.storage for c in values.chunks], type_.storage_type))
    if pa.types.is_dictionary(type_):
        return _as_text(values.cast(type_.value_type))
    if _is_binary(type_) or pa.types.is_nested(type_) or not _arrow_casts_to_text(type_):
        return pa.chunked_array([_json_values(values.combine_chunks())], pa.string())
    return pc.cast(values, pa.string())


def _is_binary(type_: pa.DataType) -> bool:
    return (pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
            or pa.types.is_binary_view(type_))


@lru_cache(maxsize=256)
def _arrow_casts_to_text(type_: pa.DataType) -> bool:
    """Whether Arrow has a cast of `type_` to text (intervals, unions, run-end encoded values have none)."""
    try:
        pa.array([], type_).cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError):
        return False
    return True


def _shared_length(values: pa.ChunkedArray) -> int | None:
    """The UTF-8 byte length of every value of `values` when they all have the same one."""
    bounds = pc.min_max(pc.binary_length(values))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return int(low) if low is not None and low == high else None


def _json_values(values: pa.Array) -> pa.Array:
    """Nested, binary and other values without an Arrow text cast as JSON text; runs per row in Python (only for such
    columns, which no shipped contract reads from a binary format)."""
    wrapped = records_as_json(pa.table({"v": values}))
    # A null value is missing, not the JSON text `null`.
    return pc.if_else(values.is_valid(), pc.utf8_slice_codeunits(wrapped, 5, -1), pa.scalar(None, pa.string()))


def row_hashes(table: pa.Table) -> pa.Array:
    """`src_row_hash` of every row of `table` (its columns as read from the source), in row order.

    DataFusion hashes the batches in parallel and may return them in any order; a row index puts them back.
    """
    n = table.num_rows
    if n == 0:
        return pa.array([], pa.string())
    if table.num_columns == 0:
        return pa.repeat(pa.scalar(EMPTY_HASH), n)
    names = table.column_names
    texts = [_as_text(table.column(i)) for i in range(table.num_columns)]
    record_bytes = sum(t.nbytes for t in texts) / n + sum(len(_prefix(name).encode()) + 12 for name in names)
    batch_rows = max(1, min(settings.HASH_BATCH_ROWS, int(settings.HASH_BATCH_BYTES // record_bytes)))
    if len(names) <= settings.HASH_FLAT_COLUMNS:
        return _hash_flat(names, texts, batch_rows)
    return _hash_wide(names, texts, batch_rows)


def _hash_flat(names: list[str], texts: list[pa.ChunkedArray], batch_rows: int) -> pa.Array:
    """Hashes of records of at most `settings.HASH_FLAT_COLUMNS` columns: one DataFusion expression builds the form and hashes it."""
    positional = {name: f"c{i}" for i, name in enumerate(names)}
    text = pa.table(texts, names=list(positional.values()))
    text = text.append_column("__i", row_number_array(0, len(text)))
    context = SessionContext()
    context.register_record_batches("record", [[b] for b in text.to_batches(max_chunksize=batch_rows)])
    nullable = {name for i, name in enumerate(names) if texts[i].null_count}
    fixed = {name: length for i, name in enumerate(names)
             if name not in nullable and (length := _shared_length(texts[i])) is not None}
    canonical = canonical_sql(positional, nullable, fixed)
    hashed = context.sql(f"SELECT __i, encode(sha256({canonical}), 'hex') AS h FROM record").to_arrow_table()
    return hashed.column("h").take(pc.sort_indices(hashed.column("__i"))).combine_chunks().cast(pa.string())


def _hash_wide(names: list[str], texts: list[pa.ChunkedArray], batch_rows: int) -> pa.Array:
    """Hashes of records of any width. Arrow builds the form from all cells of `batch_rows` rows at a time, taken
    row by row from the columns laid end to end, so the number of compute calls does not grow with the columns."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    width, n = len(order), len(texts[0])
    # Large offsets: the chunk's text may pass 2 GB laid end to end.
    cells = pa.chunked_array([chunk for i in order for chunk in texts[i].chunks], pa.string()).cast(
        pa.large_string()).combine_chunks()
    prefixes = pa.array([_prefix(names[i]) for i in order], pa.string())
    hashes = []
    for start in range(0, n, batch_rows):
        rows = min(batch_rows, n - start)
        k = row_number_array(0, rows * width)
        row = pc.divide(k, pa.scalar(width, pa.int64()))
        column = pc.subtract(k, pc.multiply(row, pa.scalar(width, pa.int64())))
        taken = cells.take(pc.add(pc.multiply(column, pa.scalar(n, pa.int64())), pc.add(row, start)))
        values = taken.cast(pa.string())  # a slice holds at most about settings.HASH_BATCH_BYTES
        lengths = pc.cast(pc.binary_length(values), pa.string())
        # A null value makes its field null, and a null field joins as nothing.
        fields = pc.fill_null(pc.binary_join_element_wise(prefixes.take(column), lengths, ":", values, ";", ""), "")
        records = pa.ListArray.from_arrays(pc.multiply(row_number_array(0, rows + 1), pa.scalar(width, pa.int64()))
                                           .cast(pa.int32()), fields)
        hashes.append(_sha256_hex(pc.binary_join(records, "")))
    return pa.concat_arrays(hashes)


def _sha256_hex(canonical: pa.Array) -> pa.Array:
    """SHA-256 hex of each text of `canonical`, in order (one partition: the slice is already bounded)."""
    context = SessionContext()
    batch = pa.RecordBatch.from_arrays([canonical, row_number_array(0, len(canonical))], names=["c", "__i"])
    context.register_record_batches("form", [[batch]])
    hashed = context.sql("SELECT __i, encode(sha256(c), 'hex') AS h FROM form").to_arrow_table()
    return hashed.column("h").take(pc.sort_indices(hashed.column("__i"))).combine_chunks().cast(pa.string())
