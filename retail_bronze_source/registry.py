"""The table registry: every raw table the source loads, declared as data.

Another project declares its own `TableSpec` entries and passes them to `retail_source(tables=...)`; the retail tables
below are simply the registry that ships.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import pyarrow as pa
from dlt.common.normalizers.naming.snake_case import NamingConvention

from schemas import schemas

from .audits import (
    AcceptedValues,
    Anomaly,
    Audit,
    Completeness,
    Freshness,
    References,
    SchemaAudit,
    ValueRange,
    audit_problems,
)
from .outputs import ADDED_COLUMNS, table_schema
from .readers.formats import DIRECTORY_FORMATS, SHEET_FORMATS, FileFormat
from .readers.options import resolve_reader_options

WriteDisposition = Literal["append", "merge"]


CONTRACT_CHECKS = ("accepted_values", "min", "max", "pattern", "json")
"""Field metadata keys of value checks (`schemas.schemas.col`); nested and binary columns take none of them."""


def normalized_name(name: str) -> str:
    """`name` as dlt's default naming convention (snake_case) stores it in the warehouse and the lake: `"Order ID"`
    and `"order_id"` are one column there. Raises `ValueError` for a name that has no stored form (empty, blank)."""
    return _SNAKE_CASE.normalize_identifier(name)  # type: ignore[no-any-return]


_SNAKE_CASE = NamingConvention()


@dataclass(frozen=True)
class DerivedColumn:
    """A column computed from a row's contract columns (a DuckDB SQL expression), loaded like any other."""

    name: str
    type: pa.DataType
    sql: str


@dataclass(frozen=True)
class TableSpec:
    """One raw table: where its files are, how to read them, its contract and how it loads."""

    name: str
    schema: pa.Schema
    files: str
    """Glob relative to the raw root matching the table's files (or, for `delta`, the table directory)."""
    formats: tuple[FileFormat, ...]
    """Formats accepted for this table; any other file matched by `files` is an `UNSUPPORTED_FILE` reject."""
    primary_key: tuple[str, ...]
    write_disposition: WriteDisposition
    sequence_column: str | None = None
    """Orders versions of one key: the highest value is the latest version."""
    reader_options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the formats' readers, e.g. `delimiter` for CSV or `sheets` for XLSX (`readers/options.py` lists them
    all); checked when the table is declared."""
    source_time_zone: str = "UTC"
    """Time zone assumed for timestamps written without an offset."""
    derived: tuple[DerivedColumn, ...] = ()
    """Columns computed from the contract columns, e.g. a partition date."""
    partition_by: tuple[str, ...] = ()
    """Partition columns of the table's Delta mirror."""
    changed_files: Literal["reload", "skip", "fail"] = "reload"
    """What a file already loaded whose content changed does: load again (append tables: its new rows replace its
    earlier ones), be recorded in the manifest and ignored, or fail the run."""
    delete_marker: str | None = None
    """A boolean column marking tombstones: the row is a deletion of its key."""
    hard_delete: bool = False
    """Tombstones remove their key from DuckDB and Delta; by default they are kept as soft deletes (marker true)."""
    evolve_schema: bool | None = None
    """Columns outside the contract are added to the table (True) or kept in `_rescued_data` (False); None follows
    the source's `evolve_schema` setting."""
    allow_outside_raw_root: bool = False
    """Read files that symbolic links lead to outside the raw root, and Delta data files outside the table directory
    (absolute paths, URLs, `..` paths, as in a shallow clone). Off by default: such files are `OUTSIDE_RAW_ROOT`
    rejects and are never read. Declared per table, in code: no configuration value or environment variable opens
    the boundary."""
    audits: tuple[Audit, ...] = ()
    """What a write-audit-publish run checks on this table's batch before publishing it (`audits`); checked when the
    table is declared. Runs without write-audit-publish ignore them."""

    @property
    def has_sheets(self) -> bool:
        """Whether the table reads a format whose rows live in sheets (`src_sheet` is part of a row's position)."""
        return any(fmt in SHEET_FORMATS for fmt in self.formats)

    @property
    def reads_directory(self) -> bool:
        """Whether the table's input is one table directory (`files` names it), not files matched by a pattern."""
        return any(fmt in DIRECTORY_FORMATS for fmt in self.formats)

    def __post_init__(self) -> None:
        names = set(self.schema.names) | {d.name for d in self.derived}
        missing = [c for c in (*self.primary_key, *([self.sequence_column] if self.sequence_column else [])) if c not in names]
        if missing:
            raise ValueError(f"table {self.name!r}: key or sequence columns {missing} are not in its schema")
        if self.delete_marker is not None and self.delete_marker not in names:
            raise ValueError(f"table {self.name!r}: delete marker {self.delete_marker!r} is not in its schema")
        if self.hard_delete and (self.delete_marker is None or self.write_disposition != "merge"):
            raise ValueError(f"table {self.name!r}: hard deletes need a delete marker on a merge table")
        unknown = [c for c in self.partition_by if c not in names]
        if unknown:
            raise ValueError(f"table {self.name!r}: partition columns {unknown} are not in its schema")
        if not self.formats:
            raise ValueError(f"table {self.name!r}: declare at least one format")
        if self.reads_directory and len(self.formats) > 1:
            raise ValueError(f"table {self.name!r}: a table directory format ({', '.join(self.formats)}) is read alone")
        object.__setattr__(self, "reader_options",
                           resolve_reader_options(self.name, self.formats, self.reader_options, self.schema))
        _check_column_names(self.name, [*self.schema.names, *(d.name for d in self.derived)], normalized_name)
        roles: dict[str, tuple[str, ...]] = {
            "primary key": self.primary_key, "sequence column": (self.sequence_column,) if self.sequence_column else (),
            "partition": self.partition_by, "delete marker": (self.delete_marker,) if self.delete_marker else ()}
        for role, addressed in roles.items():
            for name in addressed:
                if normalized_name(name) != name:
                    raise ValueError(f"table {self.name!r}: {role} column {name!r} is stored as "
                                     f"{normalized_name(name)!r}; merges, late-version checks and Delta partitions "
                                     "address it by its declared name, so declare it as stored")
        for contract_field in self.schema:
            problem = contract_type_problem(contract_field)
            if problem:
                raise ValueError(f"table {self.name!r}: column {contract_field.name!r} {problem}")
        audit_errors = audit_problems(self.audits, {f.name: f.type for f in table_schema(self)})
        if audit_errors:
            raise ValueError(f"table {self.name!r}: {'; '.join(audit_errors)}")


def _check_column_names(table: str, names: Sequence[str], normalize: Callable[[str], str]) -> None:
    """Refuse contract and derived column names that cannot be loaded: blank names, and names that are one column
    once the destination normalizes them (between themselves or with a column the package or dlt adds)."""
    owners = {normalize(added): f"{added!r}, a column the package or dlt adds" for added in ADDED_COLUMNS}
    for name in names:
        try:
            stored = normalize(name)
        except ValueError:
            raise ValueError(f"table {table!r}: column name {name!r} cannot be loaded (it is empty or blank)") from None
        if stored in owners:
            raise ValueError(f"table {table!r}: column {name!r} is stored as {stored!r}, like {owners[stored]}; "
                             f"rename one of them")
        owners[stored] = repr(name)


_SCALAR_CONTRACT_TYPES = "int8/16/32/64, float32/64, decimal128, bool, string, date32, timestamp('us')"


def contract_type_problem(contract_field: pa.Field) -> str | None:
    """Why a contract column cannot be validated or loaded as declared, or None.

    Accepted: the scalar types the validator parses exactly (integers of 8 to 64 bits, float32/64, decimal128, bool,
    string, date32, microsecond timestamps), binary, and lists, structs and maps of accepted types, whose inner
    fields are nullable (only a column's own value is checked for `NOT_NULL`) and whose map keys are text or
    integers. Value checks (accepted values, bounds, pattern, json) apply to scalar columns only.
    """
    type_ = contract_field.type
    meta = {k.decode() for k in (contract_field.metadata or {})}
    structured = (pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_struct(type_)
                  or pa.types.is_map(type_) or pa.types.is_binary(type_) or pa.types.is_large_binary(type_))
    if structured and meta & set(CONTRACT_CHECKS):
        return f"has value checks ({', '.join(sorted(meta & set(CONTRACT_CHECKS)))}) that a {type_} value cannot take"
    if schemas.MOSTLY_DISTINCT in meta and not (pa.types.is_string(type_) or pa.types.is_large_string(type_)):
        return f"is declared mostly_distinct, which applies to text only, not to {type_}"
    return _type_problem(type_, top=True)


def _type_problem(type_: pa.DataType, *, top: bool) -> str | None:
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _inner_problem(type_.value_field)
    if pa.types.is_struct(type_):
        names = [type_.field(i).name for i in range(type_.num_fields)]
        if len(set(names)) != len(names) or "" in names:
            return f"has a struct type with blank or repeated field names ({type_})"
        return next((p for p in (_inner_problem(type_.field(i)) for i in range(type_.num_fields)) if p), None)
    if pa.types.is_map(type_):
        key = type_.key_type
        if not (pa.types.is_string(key) or pa.types.is_large_string(key) or key in (pa.int8(), pa.int16(),
                                                                                      pa.int32(), pa.int64())):
            return f"has a map type with {key} keys (map keys are text or integers)"
        return _inner_problem(type_.item_field)
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return None
    if pa.types.is_timestamp(type_):
        return None if type_.unit == "us" else (f"has type {type_}: contract timestamps have microsecond precision "
                                                 f"(pa.timestamp('us', tz='UTC'))")
    if (type_ in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.bool_(), pa.string(),
                  pa.large_string(), pa.date32())
            or pa.types.is_decimal128(type_)):
        return None
    return f"has type {type_}, which a contract cannot declare (types: {_SCALAR_CONTRACT_TYPES}, binary, list, " \
           f"struct, map){'' if top else ' inside a nested type'}"


def _inner_problem(inner: pa.Field) -> str | None:
    if not inner.nullable:
        return (f"declares the inner field {inner.name!r} not nullable: only a column's own value is checked for "
                f"NOT_NULL, so fields inside nested types must be nullable")
    return _type_problem(inner.type, top=False)


def _spec(name: str, schema: pa.Schema, files: str, formats: Sequence[FileFormat], primary_key: Sequence[str],
          write_disposition: WriteDisposition, sequence_column: str | None = "updated_at", **options: Any) -> TableSpec:
    return TableSpec(name=name, schema=schema, files=files, formats=tuple(formats), primary_key=tuple(primary_key),
                     write_disposition=write_disposition, sequence_column=sequence_column, **options)


_STEADY = (SchemaAudit(), Anomaly(metric="row_count"), Anomaly(metric="reject_rate"))
"""Audits of every shipped table: the contract's schema, no column added unasked, row counts and reject rates in line
with the table's history (judged from 5 published runs on)."""
_DAILY = Completeness(min_rows_ratio=0.2, runs=10, min_runs=3)
"""Transactional tables deliver every day: a batch with under a fifth of the usual rows is incomplete."""
_ORPHANS = 0.05
"""Share of a batch's rows whose key may be missing upstream: the sample's own deliveries lose a few referenced rows
to rejects (about 1% of orders name a rejected customer)."""
_RECENT = timedelta(days=30)
"""How much older than the newest published value a batch's newest timestamp may be (a stale file sent again)."""

RETAIL_TABLES: tuple[TableSpec, ...] = (
    _spec("customers", schemas.CUSTOMERS, "customers/*", ["csv"], ["customer_id"], "merge", audits=_STEADY),
    _spec("products", schemas.PRODUCTS, "products/*", ["parquet"], ["product_id"], "merge", audits=(
        *_STEADY, AcceptedValues(column="currency", values=schemas.CURRENCIES))),
    _spec("stores", schemas.STORES, "stores/*", ["csv"], ["store_id"], "merge", audits=(
        *_STEADY, Completeness(min_rows_ratio=None, required_files=("stores/*.csv",)))),
    _spec("orders", schemas.ORDERS, "orders/*", ["csv"], ["order_id"], "merge", partition_by=("order_dt",), audits=(
        *_STEADY, _DAILY, AcceptedValues(column="currency", values=schemas.CURRENCIES),
        ValueRange(column="total_amount", min="0.01", max_failing_share=0.01),
        References(columns=("customer_id",), table="customers", max_orphan_share=_ORPHANS),
        References(columns=("store_id",), table="stores", max_orphan_share=_ORPHANS),
        Freshness(column="order_ts", max_lag=_RECENT))),
    _spec("order_items", schemas.ORDER_ITEMS, "order_items/*", ["parquet"], ["order_id", "line_no"], "merge", audits=(
        *_STEADY, _DAILY, References(columns=("order_id",), table="orders", max_orphan_share=_ORPHANS))),
    _spec("returns", schemas.RETURNS, "returns", ["delta"], ["return_id"], "merge", delete_marker="is_deleted",
          derived=(DerivedColumn("deleted_at", pa.timestamp("us", tz="UTC"),
                                 "CASE WHEN is_deleted THEN updated_at END"),), audits=(
              *_STEADY, AcceptedValues(column="currency", values=schemas.CURRENCIES),
              References(columns=("order_id",), table="orders", max_orphan_share=_ORPHANS))),
    _spec("exchange_rates", schemas.EXCHANGE_RATES, "exchange_rates/*", ["xlsx"],
          ["rate_date", "base_currency", "quote_currency"], "merge", sequence_column=None, audits=(
              *_STEADY, ValueRange(column="rate", min="0.0001", max="10000"))),
    _spec("events", schemas.EVENTS, "events/*", ["jsonl"], ["event_id"], "append", sequence_column=None,
          derived=(DerivedColumn("event_date", pa.date32(), "CAST(timezone('UTC', event_ts) AS DATE)"),),
          partition_by=("event_date",), audits=(*_STEADY, _DAILY, Freshness(column="event_ts", max_lag=_RECENT))),
    _spec("sensors", schemas.SENSORS, "sensors/*", ["csv", "parquet"], ["sensor_id", "reading_ts"], "append",
          sequence_column=None,
          derived=(DerivedColumn("reading_month", pa.string(), "strftime(timezone('UTC', reading_ts), '%Y-%m')"),),
          partition_by=("store_id", "reading_month"), audits=(
              *_STEADY, _DAILY, References(columns=("store_id",), table="stores", max_orphan_share=_ORPHANS),
              ValueRange(name="power_not_all_zero", column="value", min="0.001", where="metric = 'power_kw'",
                         max_failing_share=0.5),
              ValueRange(name="temperature_plausible", column="value", min="-50", max="60",
                         where="metric = 'temperature_c'", max_failing_share=0.01),
              Freshness(column="reading_ts", max_lag=_RECENT))),
)
"""The retail tables that ship with the package, with the audits a write-audit-publish run checks on them."""


def select_tables(tables: Sequence[TableSpec], names: Sequence[str] | None) -> tuple[TableSpec, ...]:
    """Return the entries named in `names` (all when `names` is empty), failing on unknown names."""
    if not names:
        return tuple(tables)
    known = {t.name: t for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)
