"""The contract validator: splits each raw chunk into typed valid rows and reason-coded reject records.

Parsing and every check of the contract's scalar columns run as one vectorized DuckDB query over the chunk's contract
columns; nested and binary contract columns are converted by `retail_bronze_source.nested` and checked in the same
query. A row that fails several checks gets one reject record per failed check and counts once as rejected. A value
is never changed to fit: what does not convert exactly is a `TYPE_MISMATCH`.

Only contract columns reach the validation query; the columns outside the contract (`_rescued_data`, or added ones with
schema evolution) are handled column group by column group, so a file's width never makes one query wider. Source
types DuckDB cannot scan are widened exactly first (half floats, decimals of up to 38 digits, extension types) or
else read as text; what still has no exact form is a `TYPE_MISMATCH` of a contract column, text in `_rescued_data`.

`src_row_hash` is computed by `retail_bronze_source.row_hash` from the record as read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.libs.pyarrow import UnsupportedArrowTypeException, get_column_type_from_py_arrow

from . import nested, reasons, settings
from .helpers import as_array, quote_ident, quote_literal, records_as_json, row_number_array
from .outputs import ADDED_COLUMNS, REJECT_SCHEMA, RESCUED, ROW_HASH, ROW_NUMBER, reject_records
from .raw import FileRejected, RawChunk
from .registry import TableSpec, normalized_name
from .row_hash import row_hashes

RESERVED_NAMES = frozenset(ADDED_COLUMNS)
"""Output and audit column names: a source column with one of these names is always kept in `_rescued_data`."""


@dataclass(frozen=True)
class Validated:
    """The outcome of validating one chunk."""

    valid: pa.Table
    """Contract columns in contract types, then `src_row_number`, `src_row_hash`, `_rescued_data`."""
    rejects: pa.Table
    """Reject records in `REJECT_SCHEMA` (parse rejects of the chunk included)."""
    rows_read: int
    rows_rejected: int


def _duck_type(type_: pa.DataType) -> str:
    if nested.is_structured(type_):
        return "BOOLEAN"  # the validation query sees whether such a value converted, not the value
    if pa.types.is_int64(type_):
        return "BIGINT"
    if pa.types.is_int32(type_):
        return "INTEGER"
    if pa.types.is_int16(type_):
        return "SMALLINT"
    if pa.types.is_int8(type_):
        return "TINYINT"
    if pa.types.is_floating(type_):
        return "DOUBLE"
    if pa.types.is_decimal(type_):
        return f"DECIMAL({type_.precision},{type_.scale})"
    if pa.types.is_boolean(type_):
        return "BOOLEAN"
    if pa.types.is_timestamp(type_):
        return "TIMESTAMPTZ" if type_.tz else "TIMESTAMP"
    if pa.types.is_date(type_):
        return "DATE"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "VARCHAR"
    raise TypeError(f"contract type {type_} has no validator mapping")


def _type_label(type_: pa.DataType) -> str:
    return str(type_).replace("timestamp[us, tz=UTC]", "UTC timestamp")


def _parse_text(v: str, type_: pa.DataType, digits: str | None = None) -> str:
    """SQL parsing the text `v` (surrounding white space allowed) into `type_`, NULL where it does not convert exactly.

    `digits` names a boolean column, true where the text is only ASCII digits (`_only_digits`): for an integer type
    those values need no regular expression."""
    duck = _duck_type(type_)
    if pa.types.is_integer(type_):
        number = f"regexp_full_match({v}, '\\s*[+-]?[0-9]+\\s*')"
        if digits is not None:
            number = f"(CASE WHEN {digits} THEN true ELSE {number} END)"
        return f"CASE WHEN {number} THEN TRY_CAST({v} AS {duck}) END"
    if pa.types.is_decimal(type_):
        int_digits = max(type_.precision - type_.scale, 1)
        frac = f"(\\.[0-9]{{1,{type_.scale}}})?" if type_.scale else ""
        return (f"CASE WHEN regexp_full_match({v}, '\\s*[+-]?[0-9]{{1,{int_digits}}}{frac}\\s*') "
                f"THEN TRY_CAST({v} AS {duck}) END")
    if pa.types.is_floating(type_):
        return f"CASE WHEN isfinite(TRY_CAST({v} AS DOUBLE)) THEN TRY_CAST({v} AS DOUBLE) END"
    if pa.types.is_boolean(type_):
        return (f"CASE WHEN lower(trim({v})) IN ('true', 't', '1', 'yes', 'y') THEN true "
                f"WHEN lower(trim({v})) IN ('false', 'f', '0', 'no', 'n') THEN false END")
    if pa.types.is_timestamp(type_):
        # A four-digit year first: DuckDB also reads words ('epoch', 'infinity') as timestamps, and its time zone
        # code fails the whole query on some years beyond 9999. Digits beyond microseconds would be cut off.
        year = _unless_glob(v, "[0-9][0-9][0-9][0-9]-*", "regexp_matches", "^\\s*[0-9]{4}-")
        cut = f"(CASE WHEN contains({v}, '.') THEN regexp_matches({v}, '\\.[0-9]{{6}}0*[1-9]') ELSE false END)"
        return f"CASE WHEN {year} AND NOT {cut} THEN TRY_CAST({v} AS {duck}) END"
    if pa.types.is_date(type_):
        midnight = "([T ]00:00(:00(\\.0+)?)?)?"
        day = _unless_glob(v, "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]", "regexp_full_match",
                           f"\\s*[0-9]{{4}}-[0-9]{{1,2}}-[0-9]{{1,2}}{midnight}\\s*")
        return f"CASE WHEN {day} THEN TRY_CAST({v} AS DATE) END"
    return v


def _unless_glob(v: str, glob: str, function: str, pattern: str) -> str:
    """SQL of `function(v, pattern)` (a regular expression test), true without it where `v` matches `glob`, which
    only values the expression accepts match: DuckDB's GLOB costs a fraction of a regular expression, and the common
    spelling of a value passes it."""
    return f"(CASE WHEN {v} GLOB '{glob}' THEN true ELSE {function}({v}, '{pattern}') END)"


def _parse_typed(r: str, source: pa.DataType, type_: pa.DataType) -> str:
    """SQL converting a typed source value `r` into `type_`, NULL where it does not convert exactly: the converted
    value must convert back to the source value (integers compared as HUGEINT, decimals at their own scale, floats as
    DOUBLE), a date is a midnight. (DuckDB reads nanosecond timestamps as microseconds: see `_nanoseconds_lost`.)"""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return f"CAST({r} AS VARCHAR)"
    cast = f"TRY_CAST({r} AS {_duck_type(type_)})"
    if _widens(source, type_):
        return cast
    if pa.types.is_floating(type_):
        exact = f"isfinite({cast})"
        if pa.types.is_integer(source):
            exact += f" AND TRY_CAST({cast} AS HUGEINT) = {r}"
        elif pa.types.is_decimal(source):
            exact += f" AND TRY_CAST({cast} AS DECIMAL(38,{source.scale})) = CAST({r} AS DECIMAL(38,{source.scale}))"
        return f"CASE WHEN {exact} THEN {cast} END"
    if pa.types.is_integer(source):
        return f"CASE WHEN TRY_CAST({cast} AS HUGEINT) = {r} THEN {cast} END"
    if pa.types.is_decimal(source):
        scale = source.scale
        return f"CASE WHEN TRY_CAST({cast} AS DECIMAL(38,{scale})) = CAST({r} AS DECIMAL(38,{scale})) THEN {cast} END"
    if pa.types.is_floating(source):
        return f"CASE WHEN CAST({cast} AS DOUBLE) = CAST({r} AS DOUBLE) THEN {cast} END"
    if pa.types.is_date(type_) and pa.types.is_timestamp(source):
        return f"CASE WHEN {r} = date_trunc('day', {r}) THEN {cast} END"
    return cast


def _widens(source: pa.DataType, type_: pa.DataType) -> bool:
    """Whether every value of `source` converts into `type_` exactly (the same type or a wider one), so the
    conversion needs no check."""
    if source == type_:
        return not pa.types.is_timestamp(source) or source.unit != "ns"
    if pa.types.is_signed_integer(source) and pa.types.is_signed_integer(type_):
        return bool(type_.bit_width >= source.bit_width)
    if pa.types.is_unsigned_integer(source) and pa.types.is_signed_integer(type_):
        return bool(type_.bit_width > source.bit_width)
    if pa.types.is_decimal(source) and pa.types.is_decimal(type_):
        return bool(type_.scale >= source.scale and type_.precision - type_.scale >= source.precision - source.scale)
    return pa.types.is_float32(source) and pa.types.is_float64(type_)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


class _Check(NamedTuple):
    """One check of a contract column: the SQL condition of a violation and what its reject record says."""

    condition: str
    reason_code: str
    column: int
    """Position of the checked column in the contract."""
    column_name: str
    detail: str
    """`reason_detail`, after the quoted value when `shows_value`."""
    shows_value: bool


def _checks(field: pa.Field, column: int, raw: str, parsed: str, matched: str | None = None) -> list[_Check]:
    """The checks of one contract column; `matched` names a boolean column telling whether the value matches the
    column's pattern, found before the query (`_pattern_matches`)."""
    name = field.name
    label = _type_label(field.type)
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    out = [_Check(f"{raw} IS NOT NULL AND {parsed} IS NULL", reasons.TYPE_MISMATCH, column, name,
                  f" is not a valid {label}", True)]
    if not field.nullable:
        out.append(_Check(f"{raw} IS NULL", reasons.NOT_NULL, column, name, "required value is missing", False))
    if "accepted_values" in meta:
        accepted = json.loads(meta["accepted_values"])
        listed = ", ".join(quote_literal(str(a)) for a in accepted)
        out.append(_Check(f"{parsed} IS NOT NULL AND {parsed} NOT IN ({listed})", reasons.ACCEPTED_VALUES, column,
                          name, f" is not one of {', '.join(map(str, accepted))}", True))
    bounds = []
    duck = _duck_type(field.type)
    if "min" in meta:
        bounds.append(f"{parsed} < CAST({quote_literal(meta['min'])} AS {duck})")
    if "max" in meta:
        bounds.append(f"{parsed} > CAST({quote_literal(meta['max'])} AS {duck})")
    if bounds:
        lo, hi = meta.get("min", "-inf"), meta.get("max", "+inf")
        out.append(_Check(f"{parsed} IS NOT NULL AND ({' OR '.join(bounds)})", reasons.OUT_OF_RANGE, column, name,
                          f" is outside [{lo}, {hi}]", True))
    if "pattern" in meta:
        pattern = meta["pattern"]
        matches = matched or f"regexp_full_match({parsed}, {quote_literal(pattern)})"
        out.append(_Check(f"{parsed} IS NOT NULL AND NOT {matches}", reasons.PATTERN_MISMATCH, column, name,
                          f" does not match {pattern}", True))
    if meta.get("json") == "true":
        out.append(_Check(f"{parsed} IS NOT NULL AND NOT json_valid({parsed})", reasons.TYPE_MISMATCH, column, name,
                          " is not valid JSON", True))
    return out


CHECKS_PER_MASK = 62
"""Failed checks of a bad row come back as the bits of BIGINT masks, this many checks per mask."""
SHOWN_CHARACTERS = 200
"""A reject's `reason_detail` quotes at most this many characters of the value."""


def _failed_check_masks(checks: list[_Check]) -> list[str]:
    """SQL of the `__m<k>` columns: for a bad row, bit `i % CHECKS_PER_MASK` of mask `i // CHECKS_PER_MASK` is set
    when check `i` failed; null for a good row (the checks are evaluated again for bad rows only)."""
    masks = []
    for k in range(0, len(checks), CHECKS_PER_MASK):
        bits = " + ".join(f"CASE WHEN COALESCE({c.condition}, false) THEN CAST({1 << (i - k)} AS BIGINT) ELSE 0 END"
                          for i, c in enumerate(checks[k:k + CHECKS_PER_MASK], start=k))
        masks.append(f"CASE WHEN __bad THEN {bits} END AS __m{k // CHECKS_PER_MASK}")
    return masks


class _Shown(NamedTuple):
    """How a reject's `reason_detail` shows a contract column's value: one of the text as read, the SQL of DuckDB's
    text of a typed value, or the values themselves, shown as JSON (nested, binary and other values DuckDB has no
    text for; rendered for the bad rows only)."""

    text: pa.ChunkedArray | None = None
    sql: str | None = None
    json: pa.ChunkedArray | None = None


class _Failed(NamedTuple):
    """The bad rows that failed one check, with the `reason_detail` of each."""

    check: int
    """Position of the check."""
    rows: pa.Array
    """Indices into the chunk's bad rows."""
    detail: pa.Array


class _Queried(NamedTuple):
    """The outcome of one group's validation query."""

    result: pa.Table
    """The group's converted columns, `__bad` and the failed-check masks, in row order."""
    checks: list[_Check]
    frame: pa.Table
    """What the query read."""


POSITION = "__pos"
"""Each row's position in its chunk, carried through DuckDB's queries to put their results back in row order."""


class Validator:
    """Validates the chunks of one table against its contract."""

    def __init__(self, spec: TableSpec, con: duckdb.DuckDBPyConnection | None = None, *,
                 evolve: bool = False, column_name: Callable[[str], str] = normalized_name,
                 added: Callable[[str], bool] = lambda name: False) -> None:
        self.spec = spec
        self.evolve = evolve
        self.column_name = column_name
        """The destination's name for a column (dlt's naming convention): added columns must not share one."""
        self.added = added
        """Whether a source column outside the contract is a column the table already has (added by an evolving run
        or promoted from `_rescued_data`): it is loaded into that column even when the run does not evolve."""
        self.con = con or duckdb.connect()
        self.con.execute(f"SET TimeZone = {quote_literal(spec.source_time_zone)}")
        self.contract = spec.schema
        self.contract_names = frozenset(spec.schema.names)
        self.output_schema = pa.schema([
            *spec.schema,
            *(pa.field(d.name, d.type) for d in spec.derived),
            pa.field(ROW_NUMBER, pa.int64(), nullable=False),
            pa.field(ROW_HASH, pa.string(), nullable=False),
            pa.field(RESCUED, pa.string()),
        ])

    def check_columns(self, chunk: RawChunk) -> None:
        """Raise `FileRejected` when the file's columns cannot load: `MISSING_REQUIRED_COLUMN` when it lacks a
        required contract column, `COLUMN_NAME_CONFLICT` when two of its columns share a name (or, with schema
        evolution, would share one in the destination, or with a table column), `UNSUPPORTED_FILE` when a column
        to be added has a type the destination cannot hold."""
        names = chunk.data.column_names
        if not chunk.columns_per_record:
            present = set(names)
            missing = [f.name for f in self.contract if not f.nullable and f.name not in present]
            if missing:
                raise FileRejected(reasons.MISSING_REQUIRED_COLUMN,
                                   f"required column(s) {', '.join(missing)} not in the file's columns "
                                   f"({', '.join(names) or 'none'})")
        if len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise FileRejected(reasons.COLUMN_NAME_CONFLICT,
                               f"the file has several columns named {', '.join(map(repr, repeated))}")
        if self.evolve:
            added = self.extra_columns(chunk.data)
            self._check_added_names(added)
            for name in added:
                _loadable(chunk.data[name], name)

    def _check_added_names(self, added: list[str]) -> None:
        """Refuse columns to be added whose destination name is taken (by a table column or another added column)
        or that have none: dlt would fail the load, and every later one, on them."""
        table_columns = [*self.output_schema.names, *RESERVED_NAMES]
        owners = {self.column_name(name): f"table column {name!r}" for name in table_columns}
        for name in added:
            try:
                stored = self.column_name(name)
            except ValueError:
                raise FileRejected(reasons.COLUMN_NAME_CONFLICT,
                                   f"column {name!r} has no name in the destination (it is empty or blank)") from None
            if stored in owners:
                raise FileRejected(reasons.COLUMN_NAME_CONFLICT,
                                   f"column {name!r} would be added as {stored!r}, the name of {owners[stored]}; "
                                   "rename it in the file or declare it in the contract")
            owners[stored] = f"column {name!r} of the file"

    def validate(self, chunk: RawChunk, src_filename: str) -> Validated:
        """Validate one chunk of the file `src_filename`."""
        self.check_columns(chunk)
        data = chunk.data
        n = data.num_rows
        parse_rejects = self._parse_rejects(chunk, src_filename)
        if not n:
            return Validated(self.output_schema.empty_table(), parse_rejects, len(chunk.rejects), len(chunk.rejects))
        present = set(data.column_names)
        # The queries see the contract columns only, each under its position in the contract (`c<i>`).
        inputs: dict[str, pa.Array | pa.ChunkedArray] = {}
        passthrough: dict[str, pa.Array | pa.ChunkedArray] = {}
        selects: dict[int, str] = {}
        checks: list[_Check] = []
        parsing: dict[int, list[str]] = {}
        shown: dict[int, _Shown] = {}
        matched: dict[int, str] = {}
        text_passthrough: list[str] = []
        for i, field in enumerate(self.contract):
            src = f"c{i}"
            values = data[field.name] if field.name in present else None
            typed = _scannable(values) if values is not None and not _is_text(values.type) else values
            if values is None:
                raw = "CAST(NULL AS VARCHAR)"
                parsed = f"CAST(NULL AS {_duck_type(field.type)})"
                if nested.is_structured(field.type):
                    passthrough[field.name] = pa.nulls(n, field.type)
            elif nested.is_structured(field.type):
                converted, failed = nested.convert(values, field.type, self.spec.source_time_zone)
                inputs[src] = _present(values)
                inputs[f"f{i}"] = failed
                raw, parsed = src, f"CASE WHEN NOT f{i} THEN true END"
                passthrough[field.name] = converted
                shown[i] = _Shown(text=values) if _is_text(values.type) else _Shown(json=values)
            elif typed is not None and _is_text(typed.type):
                inputs[src] = typed
                raw = f"NULLIF({src}, '')"
                digits = None
                if pa.types.is_integer(field.type):
                    inputs[f"d{i}"], digits = _only_digits(typed), f"d{i}"
                pattern = (field.metadata or {}).get(b"pattern")
                if pattern is not None and _is_text(field.type):
                    inputs[f"m{i}"], matched[i] = _pattern_matches(typed, pattern.decode()), f"m{i}"
                parsed = raw if _is_text(field.type) else _parse_text(raw, field.type, digits)
                shown[i] = _Shown(text=typed)
                if _is_text(field.type):
                    passthrough[field.name] = _empty_as_null(typed)
                    text_passthrough.append(field.name)
            elif typed is None or pa.types.is_nested(typed.type) or _is_binary(typed.type):
                # A nested, binary or unscannable value never fits a scalar contract type.
                inputs[src] = _present(values)
                raw, parsed = src, f"CAST(NULL AS {_duck_type(field.type)})"
                shown[i] = _Shown(json=values)
            else:
                inputs[src] = typed
                raw = src
                parsed = _parse_typed(src, typed.type, field.type)
                shown[i] = _Shown(sql=f"CAST({src} AS VARCHAR)")
                lost = _nanoseconds_lost(typed)
                if lost is not None:
                    inputs[src] = typed.cast(pa.timestamp("us", tz=typed.type.tz), safe=False)
                    inputs[f"f{i}"] = lost
                    parsed = f"CASE WHEN NOT f{i} THEN {parsed} END"
                    shown[i] = _Shown(json=values)
            # Each value is parsed once, in an inner query; the checks refer to its results by name.
            parsing[i] = [f"{raw} AS __r{i}", f"{parsed} AS __p{i}"]
            if field.name not in passthrough:
                selects[i] = f"__p{i} AS {quote_ident(field.name)}"
            checks.extend(_checks(field, i, f"__r{i}", f"__p{i}", matched.get(i)))
        by_name = {field.name: f"c{i}" for i, field in enumerate(self.contract)}
        used = [name for name in text_passthrough if any(name in d.sql for d in self.spec.derived)]
        groups = [range(start, min(start + settings.CONTRACT_GROUP_COLUMNS, len(self.contract)))
                  for start in range(0, len(self.contract), settings.CONTRACT_GROUP_COLUMNS)] or [range(0)]
        derived = [f"CAST({d.sql} AS {_duck_type(d.type)}) AS {quote_ident(d.name)}" for d in self.spec.derived]
        queried = [self._query_group(group, inputs, parsing, selects, [c for c in checks if c.column in group],
                                     n, derived=derived if len(groups) == 1 else [],
                                     texts=[f"NULLIF({by_name[name]}, '') AS {quote_ident(name)}" for name in used])
                   for group in groups]
        result = pa.table({name: column for group in queried for name, column in
                           zip(group.result.column_names, group.result.columns, strict=True)
                           if name != "__bad" and not name.startswith("__m")})
        if derived and len(groups) > 1:
            result = self._derive(result, {name: passthrough[name] for name in used}, derived)
        bad_mask = queried[0].result["__bad"]
        for group in queried[1:]:
            bad_mask = pc.or_(bad_mask, group.result["__bad"])

        hashes = row_hashes(data)
        evolved = [name for name in self.extra_columns(data) if self.evolve or self.added(name)]
        kept = set(evolved)
        rescued = [k for k in data.column_names if k not in self.contract_names and k not in kept]
        columns = {
            **{name: result[name] for name in result.column_names},
            **passthrough,
            ROW_NUMBER: chunk.row_numbers.cast(pa.int64()),
            ROW_HASH: hashes,
            RESCUED: self._rescued(data, rescued, n, chunk.absent),
            **{name: _empty_as_null(data[name]) if _is_text(data[name].type) else _loadable(data[name], name)
               for name in evolved},
        }
        schema = pa.schema([*self.output_schema, *(pa.field(name, columns[name].type) for name in evolved)])
        assembled = pa.table({name: columns[name] for name in schema.names})
        n_bad = int(pc.sum(bad_mask).as_py() or 0)
        # Filtering copies every column, so a chunk without bad rows is passed on as it is.
        valid = (assembled.filter(pc.invert(bad_mask)) if n_bad else assembled).cast(schema)
        if not n_bad:
            return Validated(valid, parse_rejects, n + len(chunk.rejects), len(chunk.rejects))
        bad_rows = pc.indices_nonzero(as_array(bad_mask))
        failed = []
        offset = 0  # the groups' checks follow each other in `checks`
        for group in queried:
            group_bad = pc.indices_nonzero(as_array(group.result["__bad"]))
            if len(group_bad):
                position = pc.index_in(group_bad, bad_rows)  # where the group's bad rows are among all bad rows
                failed += [f._replace(check=offset + f.check, rows=position.take(f.rows))
                           for f in self._failed_checks(group.result, group_bad, group.checks, shown, group.frame)]
            offset += len(group.checks)
        contract_rejects = self._contract_rejects(bad_rows, failed, checks, columns[ROW_NUMBER], hashes, chunk,
                                                  src_filename)
        rejects = pa.concat_tables([parse_rejects, contract_rejects]) if parse_rejects.num_rows else contract_rejects
        return Validated(valid, rejects, n + len(chunk.rejects), n_bad + len(chunk.rejects))

    def _query_group(self, group: range, inputs: dict[str, pa.Array | pa.ChunkedArray],
                     parsing: dict[int, list[str]], selects: dict[int, str], checks: list[_Check], n: int, *,
                     derived: list[str], texts: list[str]) -> _Queried:
        """Parse and check the contract columns `group` (positions) in one DuckDB query; with `derived`, the derived
        columns are computed in it too (`texts`: the text columns they read, as text)."""
        columns = {f"{prefix}{i}": inputs[f"{prefix}{i}"] for i in group for prefix in ("c", "f", "d", "m")
                   if f"{prefix}{i}" in inputs}
        table = pa.table({**columns, POSITION: row_number_array(0, n)})
        frame = pa.Table.from_batches(table.to_batches(max_chunksize=settings.PARALLEL_BATCH_ROWS), schema=table.schema)
        parsed = [p for i in group for p in parsing[i]]
        picked = [POSITION, *(selects[i] for i in group if i in selects)]
        parsed_frame = f"(SELECT *, {', '.join(parsed)} FROM frame)" if parsed else "frame"
        any_violation = " OR ".join(f"COALESCE({c.condition}, false)" for c in checks) or "false"
        # A row's failed checks come back with it, as bit masks computed for bad rows only: no second query.
        checked_frame = f"(SELECT *, {any_violation} AS __bad FROM {parsed_frame})"
        flags = ["__bad", *_failed_check_masks(checks)]
        sql = f"SELECT {', '.join([*picked, *flags])} FROM {checked_frame}"
        if derived:
            used = [t.rsplit(" AS ", 1)[1] for t in texts]
            sql = (f"SELECT * EXCLUDE ({', '.join(used)}), {', '.join(derived)} "
                   f"FROM (SELECT {', '.join([*picked, *texts, *flags])} FROM {checked_frame})"
                   if used else f"SELECT *, {', '.join(derived)} FROM ({sql})")
        result = self.con.from_arrow(frame).query("frame", sql).to_arrow_table()
        # DuckDB scans the batches in parallel and may return them in any order; the row position puts them back.
        return _Queried(result.take(pc.sort_indices(result[POSITION])), checks, frame)

    def _derive(self, parsed: pa.Table, texts: dict[str, pa.Array | pa.ChunkedArray], derived: list[str]) -> pa.Table:
        """`parsed` (the contract columns as the group queries converted them, and their row position) with the
        derived columns, which may also read the text columns `texts`."""
        table = pa.table({**{name: parsed[name] for name in parsed.column_names}, **texts})
        found = self.con.from_arrow(table).query("parsed", f"SELECT *, {', '.join(derived)} FROM parsed")
        result = found.to_arrow_table()
        result = result.take(pc.sort_indices(result[POSITION]))
        return result.drop_columns([name for name in texts if name not in parsed.column_names])

    def extra_columns(self, data: pa.Table) -> list[str]:
        """Source columns outside the contract (never one named like an output or audit column)."""
        return [k for k in data.column_names if k not in self.contract_names and k not in RESERVED_NAMES]

    def _rescued(self, data: pa.Table, extra: list[str], n: int, absent: Mapping[str, pa.Array]) -> pa.Array:
        """JSON object of the `extra` columns, per row (null when there are none): text as read, other values as
        DuckDB's text of them (JSON text for values DuckDB cannot read). A key a record lacks (`absent`, JSON Lines)
        is left out of its object. Built `settings.RESCUE_GROUP_COLUMNS` columns at a time, whose objects are then
        joined, so that no query grows with the file's width."""
        if not extra:
            return pa.nulls(n, pa.string())
        members = []
        sparse = any(k in absent for k in extra)
        for start in range(0, len(extra), settings.RESCUE_GROUP_COLUMNS):
            group = extra[start:start + settings.RESCUE_GROUP_COLUMNS]
            values = {f"e{i}": _rescuable(data[k]) for i, k in enumerate(group)}
            gaps = {f"a{i}": absent[k] for i, k in enumerate(group) if k in absent}
            rescued = self.con.from_arrow(pa.table({**values, **gaps, POSITION: row_number_array(0, n)}))
            if sparse:
                # Members of the keys each record has, joined without braces; NULL when it has none of them.
                pair = "substr(CAST(json_object({k}, {v}) AS VARCHAR), 2, length(CAST(json_object({k}, {v}) AS " \
                       "VARCHAR)) - 2)"
                parts = ", ".join(
                    (f"CASE WHEN NOT a{i} THEN {pair} END" if f"a{i}" in gaps else pair).format(
                        k=quote_literal(k), v=self._as_text(f"e{i}", values[f"e{i}"].type))
                    for i, k in enumerate(group))
                select = f"NULLIF(concat_ws(',', {parts}), '')"
            else:
                pairs = ", ".join(f"{quote_literal(k)}, {self._as_text(f'e{i}', values[f'e{i}'].type)}"
                                  for i, k in enumerate(group))
                select = f"json_object({pairs})"
            found = rescued.query("rescued", f"SELECT {POSITION}, {select} AS r FROM rescued").to_arrow_table()
            objects = found["r"].take(pc.sort_indices(found[POSITION])).cast(pa.string())
            if not sparse and len(extra) > settings.RESCUE_GROUP_COLUMNS:
                objects = pc.utf8_slice_codeunits(objects, 1, -1)
            members.append(objects)
        if sparse:
            joined = members[0]
            for member in members[1:]:
                joined = pc.coalesce(pc.binary_join_element_wise(joined, member, ","), joined, member)
            return as_array(pc.binary_join_element_wise("{", joined, "}", ""))
        if len(members) == 1:
            return as_array(members[0])
        return as_array(pc.binary_join_element_wise("{", pc.binary_join_element_wise(*members, ","), "}", ""))

    @staticmethod
    def _as_text(col: str, type_: pa.DataType) -> str:
        return col if _is_text(type_) else f"CAST({col} AS VARCHAR)"

    def _parse_rejects(self, chunk: RawChunk, src_filename: str) -> pa.Table:
        rows = chunk.rejects
        return reject_records(
            self.spec.name, src_filename, pa.array([r.reason_code for r in rows], pa.string()), count=len(rows),
            detail=pa.array([r.reason_detail for r in rows], pa.string()),
            row_number=pa.array([r.row_number for r in rows], pa.int64()), sheet=chunk.sheet,
            raw_record=pa.array([r.raw_record for r in rows], pa.string()))

    def _failed_checks(self, result: pa.Table, bad_rows: pa.Array, checks: list[_Check], shown: dict[int, _Shown],
                       frame: pa.Table) -> list[_Failed]:
        """The failed checks of the bad rows (`bad_rows`: their positions), from the masks of `result`, with the
        `reason_detail` of each failure."""
        masks = [as_array(result[f"__m{k}"]).take(bad_rows) for k in range(-(-len(checks) // CHECKS_PER_MASK))]
        hits = {}
        for i in range(len(checks)):
            bit = pa.scalar(1 << (i % CHECKS_PER_MASK), pa.int64())
            found = pc.indices_nonzero(pc.not_equal(pc.bit_wise_and(masks[i // CHECKS_PER_MASK], bit), 0))
            if len(found):
                hits[i] = found
        covered = pc.count_distinct(pa.chunked_array(list(hits.values()), pa.uint64())).as_py() if hits else 0
        if covered != len(bad_rows):
            raise RuntimeError(f"{len(bad_rows) - covered} bad row(s) with no failed check: the masks disagree with "
                               "the validation query")
        values = self._shown_values({checks[i].column for i in hits if checks[i].shows_value}, shown, bad_rows, frame)
        failed = []
        for i, rows in hits.items():
            check = checks[i]
            detail = (pc.binary_join_element_wise("'", values[check.column].take(rows), f"'{check.detail}", "")
                      if check.shows_value else pa.repeat(pa.scalar(check.detail), len(rows)))
            failed.append(_Failed(i, rows, detail))
        return failed

    def _shown_values(self, columns: set[int], shown: dict[int, _Shown], bad_rows: pa.Array,
                      frame: pa.Table) -> dict[int, pa.Array]:
        """The first `SHOWN_CHARACTERS` characters of the bad rows' values of the contract columns `columns` as
        text: the text as read, DuckDB's text of a typed value, or the JSON of other values."""
        values = {}
        typed = sorted(c for c in columns if shown[c].sql is not None)
        if typed:
            texts = ", ".join(f"{shown[c].sql} AS s{c}" for c in typed)
            bad = self.con.from_arrow(frame.take(bad_rows))
            found = bad.query("bad", f"SELECT {POSITION}, {texts} FROM bad").to_arrow_table()
            found = found.take(pc.sort_indices(found[POSITION]))
            values.update({c: as_array(found[f"s{c}"]) for c in typed})
        for c in columns:
            text, rendered = shown[c].text, shown[c].json
            if text is not None:
                taken = as_array(text.take(bad_rows))
                values[c] = taken if pa.types.is_string(taken.type) else taken.cast(pa.string())
            elif rendered is not None:
                json_text = pc.utf8_slice_codeunits(records_as_json(pa.table({"v": rendered.take(bad_rows)})), 5, -1)
                values[c] = pc.replace_substring_regex(json_text, '^"(.*)"$', "\\1")  # a JSON string without quotes
        return {c: pc.utf8_slice_codeunits(v, 0, SHOWN_CHARACTERS) for c, v in values.items()}

    def _contract_rejects(self, bad_rows: pa.Array, failed: list[_Failed], checks: list[_Check],
                          row_numbers: pa.ChunkedArray, hashes: pa.Array, chunk: RawChunk, src_filename: str) -> pa.Table:
        """Reject records of the rows that failed checks, with each row's original record as the reader gives it."""
        if not failed:
            return REJECT_SCHEMA.empty_table()
        raw = chunk.records_at(bad_rows)
        flat = pa.concat_tables([
            pa.table({"row": f.rows, "check": pa.repeat(pa.scalar(f.check, pa.int32()), len(f.rows)),
                      "detail": f.detail})
            for f in failed
        ]).sort_by([("row", "ascending"), ("check", "ascending")])
        parents, check = flat["row"], flat["check"]
        positions = bad_rows.take(parents)
        return reject_records(
            self.spec.name, src_filename, pa.array([c.reason_code for c in checks], pa.string()).take(check),
            count=flat.num_rows, detail=flat["detail"], row_number=row_numbers.take(positions), sheet=chunk.sheet,
            column_name=pa.array([c.column_name for c in checks], pa.string()).take(check),
            raw_record=as_array(raw).take(parents), row_hash=hashes.take(positions))


def _only_digits(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whether each text is one or more ASCII digits (false for empty text, null for null), in Arrow: a vectorized
    test costing a tenth of DuckDB's regular expression, which the values it accepts would match."""
    return pc.ascii_is_decimal(values)


def _pattern_matches(values: pa.ChunkedArray, pattern: str) -> pa.ChunkedArray:
    """Whether each text fully matches `pattern` (null for null), in Arrow: the same regular expression engine as
    DuckDB's `regexp_full_match` (RE2), at about half its cost per value."""
    return pc.match_substring_regex(values, f"^(?:{pattern})$")



def _empty_as_null(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text values with empty strings read as missing."""
    text = values if pa.types.is_string(values.type) else values.cast(pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _is_binary(type_: pa.DataType) -> bool:
    return (pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
            or pa.types.is_binary_view(type_))


def _present(values: pa.ChunkedArray) -> pa.Array:
    """Per row, true where the source has a value (empty text is missing), else null: the `raw` of a contract value
    that the validation query does not read itself."""
    valid = pc.is_valid(values)
    if _is_text(values.type):
        valid = pc.and_(valid, pc.not_equal(pc.binary_length(values), 0))
    return as_array(pc.if_else(valid, True, pa.scalar(None, pa.bool_())))


@lru_cache(maxsize=256)
def _duckdb_scans(type_: pa.DataType) -> bool:
    """Whether DuckDB reads Arrow values of `type_` (it refuses half floats, 256-bit decimals and unions, among
    others, when a query binds the column)."""
    with duckdb.connect() as con:
        try:
            con.from_arrow(pa.table({"v": pa.nulls(0, type_)})).query("probe", "SELECT * FROM probe").fetchall()
        except duckdb.Error:
            return False
    return True


def _widened(values: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """`values` in a type DuckDB reads, converted exactly: as they are when it reads them, else half floats as
    float32, extension types as their storage, decimals of up to 38 digits as decimal128 and wider ones as their
    text; None when no such form exists."""
    type_ = values.type
    if _duckdb_scans(type_):
        return values
    if isinstance(type_, pa.BaseExtensionType):
        return _widened(pa.chunked_array([c.storage for c in values.chunks], type_.storage_type))
    if pa.types.is_float16(type_):
        return values.cast(pa.float32())
    if pa.types.is_decimal(type_):
        if type_.precision <= 38:
            return values.cast(pa.decimal128(type_.precision, type_.scale))
        return values.cast(pa.string())
    return None


def _nanoseconds_lost(values: pa.ChunkedArray) -> pa.Array | None:
    """For nanosecond timestamps, per row whether a digit below the microsecond is not zero (DuckDB would read the
    value cut to microseconds); None for other types."""
    if not pa.types.is_timestamp(values.type) or values.type.unit != "ns":
        return None
    below = pc.subtract(pc.cast(values, pa.int64()),
                        pc.multiply(pc.divide(pc.cast(values, pa.int64()), 1000), pa.scalar(1000, pa.int64())))
    return as_array(pc.fill_null(pc.not_equal(below, 0), False))


def _scannable(values: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A contract column's typed source values as the validation query reads them (see `_widened`)."""
    return _widened(values)


def _rescuable(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column outside the contract as `_rescued_data` reads it: what DuckDB cannot read, as JSON text."""
    widened = _widened(values)
    if widened is not None:
        return widened
    rendered = records_as_json(pa.table({"v": values}))
    text = pc.if_else(values.is_valid(), pc.utf8_slice_codeunits(rendered, 5, -1), pa.scalar(None, pa.string()))
    return pa.chunked_array([as_array(text)], pa.string())


def _loadable(values: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """A column added by schema evolution in a type dlt maps and DuckDB loads (extension types as their storage,
    other exact widenings as in `_widened`); `FileRejected(UNSUPPORTED_FILE)` when there is none."""
    type_ = values.type
    if isinstance(type_, pa.BaseExtensionType):
        return _loadable(pa.chunked_array([c.storage for c in values.chunks], type_.storage_type), name)
    widened = _widened(values)
    if widened is not None:
        try:
            get_column_type_from_py_arrow(widened.type)
        except UnsupportedArrowTypeException:
            pass
        else:
            if not _has_wide_decimal(widened.type):
                return widened
    raise FileRejected(reasons.UNSUPPORTED_FILE,
                       f"column {name!r} has type {type_}, which the destination cannot hold: declare it in the "
                       "contract or load without schema evolution (it is then kept in _rescued_data)")


def _has_wide_decimal(type_: pa.DataType) -> bool:
    if pa.types.is_decimal(type_):
        return bool(type_.precision > 38)
    return any(_has_wide_decimal(type_.field(i).type) for i in range(type_.num_fields))



