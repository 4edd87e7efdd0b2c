"""`src_row_hash`: SHA-256 hex of each record's canonical form, computed column-wise in DataFusion.

Canonical form of a record: for each source column with a value, in code-point order of the column names, the field
`<name length>:<name>=<value length>:<value>;`; lengths are UTF-8 byte counts in decimal and missing values (null, or
a JSON Lines key that is absent) are left out. Values are the original text for text formats (empty strings included)
and, for binary formats, the stored value cast to text by Arrow (nested and binary values as JSON). Example:
`{"b": null, "a": "1"}` -> `1:a=1:1;`. The form needs no escaping, so any language rebuilds it in a few lines, and
neither the column order of a file nor the other keys of neighbouring JSON lines change the hash.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext

from .readers.records import records_as_json, row_number_array

HASH_BATCH_ROWS = 16 * 1024
"""Rows per DataFusion partition: partitions are hashed in parallel, and the intermediate arrays of the canonical form
(a few per column) exist for one partition at a time instead of the whole chunk."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def canonical_sql(columns: dict[str, str], nullable: set[str], fixed_lengths: dict[str, int] | None = None) -> str:
    """DataFusion SQL of the canonical form; `columns` maps each source column name to its (string) SQL column,
    `nullable` names the columns that hold nulls (only those need a test) and `fixed_lengths` gives the byte length
    shared by every value of a column, where there is one (it is then written as text once, not per row)."""
    fixed = fixed_lengths or {}
    args: list[str] = []
    text = ""
    for name in sorted(columns):
        ref, prefix = columns[name], f"{len(name.encode())}:{name}="
        if name in nullable:
            field = [_literal(prefix), f"CAST(octet_length({ref}) AS VARCHAR)", "':'", ref, "';'"]
            args += [*([_literal(text)] if text else []),
                     f"CASE WHEN {ref} IS NULL THEN '' ELSE concat({', '.join(field)}) END"]
            text = ""
        elif name in fixed:
            args += [_literal(f"{text}{prefix}{fixed[name]}:"), ref]
            text = ";"
        else:
            args += [_literal(text + prefix), f"CAST(octet_length({ref}) AS VARCHAR)", "':'", ref]
            text = ";"
    args += [_literal(text)] if text else []
    return f"concat({', '.join(args)})" if args else "''"


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        return values.cast(pa.string())
    if pa.types.is_nested(values.type) or pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        return pa.chunked_array([_json_values(values.combine_chunks())])
    return pc.cast(values, pa.string())


def _shared_length(values: pa.ChunkedArray) -> int | None:
    """The UTF-8 byte length of every value of `values` when they all have the same one."""
    bounds = pc.min_max(pc.binary_length(values))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return int(low) if low is not None and low == high else None


def _json_values(values: pa.Array) -> pa.Array:
    """Nested and binary values as JSON text (per-row: such columns are not part of any shipped contract)."""
    wrapped = records_as_json(pa.table({"v": values}))
    return pc.utf8_slice_codeunits(wrapped, 5, -1)


def row_hashes(table: pa.Table) -> pa.Array:
    """`src_row_hash` of every row of `table` (its columns as read from the source), in row order.

    DataFusion hashes the batches in parallel and may return them in any order; a row index puts them back.
    """
    if table.num_rows == 0:
        return pa.array([], pa.string())
    positional = {name: f"c{i}" for i, name in enumerate(table.column_names)}
    text = pa.table([_as_text(table.column(i)) for i in range(table.num_columns)], names=list(positional.values()))
    text = text.append_column("__i", row_number_array(0, len(text)))
    context = SessionContext()
    context.register_record_batches("record", [[b] for b in text.to_batches(max_chunksize=HASH_BATCH_ROWS)])
    nullable = {name for i, name in enumerate(table.column_names) if text.column(i).null_count}
    fixed = {name: length for i, name in enumerate(table.column_names)
             if name not in nullable and (length := _shared_length(text.column(i))) is not None}
    canonical = canonical_sql(positional, nullable, fixed)
    result = context.sql(f"SELECT __i, encode(sha256({canonical}), 'hex') AS h FROM record")
    hashed = result.to_arrow_table()
    return hashed.column("h").take(pc.sort_indices(hashed.column("__i"))).combine_chunks().cast(pa.string())
