"""Key resolution across the staged files of one load, reading only their narrow keys files (DuckDB spills to disk
beyond its memory limit):

- conflicting versions: rows of one key and one sequence value whose content differs (their row hashes differ in the
  first 64 bits) are all `DUPLICATE_KEY` rejects, since nothing tells which is right;
- superseded versions (merge tables): of the other rows of a key, only the newest is loaded (highest sequence value,
  then latest file and row); the others are valid rows counted as superseded;
- late versions (merge tables with a sequence column): a row older than the version of its key the destination
  already holds is a valid row counted as late, and not loaded (`NewerVersions` reads the destination).

The results are written into each `StagedFile` (`conflicts`, `dropped` and the counts); the rows themselves are
filtered batch by batch when the file is emitted (`position_key` names a row's position in its file as one value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .helpers import as_array, quote_ident, quote_literal
from .outputs import ROW_NUMBER, SRC_SHEET, position_columns
from .registry import TableSpec
from .stage import HASH_PREFIX, StagedFile

NewerVersions = Callable[[list[str], str, Any, Callable[[pa.RecordBatchReader], None]], bool]
"""`(columns, sequence_column, oldest, sink) -> found`: hands `sink` the loaded `columns` (key and sequence, by
destination column name) of rows whose sequence value is greater than `oldest`; see `loaded.LoadedVersions`."""


def position_key(spec: TableSpec, rows: pa.Table) -> pa.Array:
    """A row's position in its file as one value: the row number, or sheet and row number for sheet tables."""
    numbers = as_array(rows[ROW_NUMBER])
    if not spec.has_sheets:
        return numbers
    sheets = pc.fill_null(as_array(rows[SRC_SHEET]), "")
    return pc.binary_join_element_wise(sheets, pc.cast(numbers, pa.string()), "\x1f")


def resolve_keys(con: duckdb.DuckDBPyConnection, spec: TableSpec, staged: list[StagedFile], *,
                 newer_versions: NewerVersions | None, column_name: Callable[[str], str]) -> None:
    """Find the conflicting, superseded and late rows of the staged files (see the module docstring)."""
    pk = list(spec.primary_key)
    paths = [str(s.keys_path) for s in staged if s.loads_rows and s.valid_count and s.keys_path]
    if not pk or not paths:
        return
    seq = spec.sequence_column
    version = [*pk, *([seq] if seq else [])]
    position = position_columns(spec)
    pk_sql, version_sql, position_sql = (", ".join(quote_ident(c) for c in cols) for cols in (pk, version, position))
    keys = f"read_parquet([{', '.join(quote_literal(p) for p in paths)}])"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE candidates AS SELECT * FROM {keys} "
        f"SEMI JOIN (SELECT {pk_sql} FROM {keys} GROUP BY {pk_sql} HAVING count(*) > 1) USING ({pk_sql})"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE conflicting AS SELECT c.*, g.versions FROM candidates c JOIN ("
        f"SELECT {version_sql}, count(*) AS versions FROM candidates GROUP BY {version_sql} "
        f"HAVING min({HASH_PREFIX}) <> max({HASH_PREFIX})) g USING ({version_sql})"
    )
    order = ", ".join([*([f"{quote_ident(seq)} DESC"] if seq else []), *(f"{quote_ident(c)} DESC" for c in position)])
    superseded_sql = (
        f"SELECT {position_sql} FROM (SELECT * FROM candidates ANTI JOIN conflicting USING ({position_sql})) "
        f"QUALIFY row_number() OVER (PARTITION BY {pk_sql} ORDER BY {order}) > 1"
        if spec.write_disposition == "merge" else f"SELECT {position_sql} FROM candidates WHERE false"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE superseded AS {superseded_sql}")
    _late_versions(con, spec, keys, newer_versions, column_name)
    for item in staged:
        if not item.loads_rows or not item.valid_count:
            continue
        name = quote_literal(item.file.rel_path)
        conflicts = con.execute(f"SELECT * FROM conflicting WHERE src_filename = {name}").to_arrow_table()
        superseded = con.execute(f"SELECT * FROM superseded WHERE src_filename = {name}").to_arrow_table()
        older = con.execute(f"SELECT * FROM late WHERE src_filename = {name}").to_arrow_table()
        if conflicts.num_rows:
            item.conflicts = conflicts.append_column("__key", position_key(spec, conflicts))
        if superseded.num_rows or older.num_rows:
            item.dropped = pa.concat_arrays([position_key(spec, superseded), position_key(spec, older)])
        item.valid_count -= conflicts.num_rows
        item.reject_count += conflicts.num_rows
        item.superseded_count = superseded.num_rows
        item.late_count = older.num_rows
    # Each file holds its own results now; the tables would occupy DuckDB's memory while the rows are emitted.
    con.execute("DROP TABLE candidates; DROP TABLE conflicting; DROP TABLE superseded; DROP TABLE late")
    pa.default_memory_pool().release_unused()


def _late_versions(con: duckdb.DuckDBPyConnection, spec: TableSpec, keys: str, newer_versions: NewerVersions | None,
                   column_name: Callable[[str], str]) -> None:
    """Create the temp table `late` of the positions of rows to load whose key already holds a newer version in the
    destination (never for append tables or tables without a sequence column)."""
    pk, seq = list(spec.primary_key), spec.sequence_column
    position_sql = ", ".join(quote_ident(c) for c in position_columns(spec))
    con.execute(f"CREATE OR REPLACE TEMP TABLE late AS SELECT {position_sql} FROM {keys} WHERE false")
    if newer_versions is None or seq is None or spec.write_disposition != "merge":
        return
    found = con.execute(f"SELECT min({quote_ident(seq)}) FROM {keys}").fetchone()
    oldest = found[0] if found else None
    if oldest is None:
        return
    loaded_names = [column_name(c) for c in (*pk, seq)]
    created: list[bool] = []

    def keep(reader: pa.RecordBatchReader) -> None:
        renamed = pa.RecordBatchReader.from_batches(
            pa.schema([f.with_name(f"__l{i}") for i, f in enumerate(reader.schema)]),
            (pa.record_batch(b.columns, names=[f"__l{i}" for i in range(b.num_columns)]) for b in reader))
        con.register("loaded_versions", renamed)
        try:
            key_of = ", ".join(f"__l{i} AS {quote_ident(c)}" for i, c in enumerate(pk))
            con.execute(f"CREATE OR REPLACE TEMP TABLE newest AS SELECT {key_of}, max(__l{len(pk)}) AS __newest "
                        f"FROM loaded_versions GROUP BY ALL")
            created.append(True)
        finally:
            con.unregister("loaded_versions")

    if not newer_versions(loaded_names, loaded_names[-1], oldest, keep) or not created:
        return
    pk_sql = ", ".join(quote_ident(c) for c in pk)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE late AS SELECT {position_sql} FROM (SELECT * FROM {keys} JOIN newest "
        f"USING ({pk_sql}) WHERE newest.__newest > {quote_ident(seq)}) "
        f"ANTI JOIN conflicting USING ({position_sql}) ANTI JOIN superseded USING ({position_sql})"
    )
    con.execute("DROP TABLE newest")
