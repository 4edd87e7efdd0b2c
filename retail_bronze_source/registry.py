"""The table registry: every raw table the source loads, declared as data.

Another project declares its own `TableSpec` entries and passes them to `retail_source(tables=...)`; the retail tables
below are simply the registry that ships.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import pyarrow as pa

from schemas import schemas

FileFormat = Literal["csv", "parquet", "xlsx", "jsonl", "delta"]
WriteDisposition = Literal["append", "merge"]

EXTENSION_FORMATS: Mapping[str, FileFormat] = MappingProxyType(
    {".csv": "csv", ".parquet": "parquet", ".xlsx": "xlsx", ".jsonl": "jsonl", ".ndjson": "jsonl"}
)
"""File name endings and the format each one is read as."""


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
    """Keyword arguments for the format's reader, e.g. `delimiter` for CSV or `sheets` for XLSX."""
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


def _spec(name: str, schema: pa.Schema, files: str, formats: Sequence[FileFormat], primary_key: Sequence[str],
          write_disposition: WriteDisposition, sequence_column: str | None = "updated_at", **options: Any) -> TableSpec:
    return TableSpec(name=name, schema=schema, files=files, formats=tuple(formats), primary_key=tuple(primary_key),
                     write_disposition=write_disposition, sequence_column=sequence_column, **options)


RETAIL_TABLES: tuple[TableSpec, ...] = (
    _spec("customers", schemas.CUSTOMERS, "customers/*", ["csv"], ["customer_id"], "merge"),
    _spec("products", schemas.PRODUCTS, "products/*", ["parquet"], ["product_id"], "merge"),
    _spec("stores", schemas.STORES, "stores/*", ["csv"], ["store_id"], "merge"),
    _spec("orders", schemas.ORDERS, "orders/*", ["csv"], ["order_id"], "merge", partition_by=("order_dt",)),
    _spec("order_items", schemas.ORDER_ITEMS, "order_items/*", ["parquet"], ["order_id", "line_no"], "merge"),
    _spec("returns", schemas.RETURNS, "returns", ["delta"], ["return_id"], "merge", delete_marker="is_deleted",
          derived=(DerivedColumn("deleted_at", pa.timestamp("us", tz="UTC"),
                                 "CASE WHEN is_deleted THEN updated_at END"),)),
    _spec("exchange_rates", schemas.EXCHANGE_RATES, "exchange_rates/*", ["xlsx"],
          ["rate_date", "base_currency", "quote_currency"], "merge", sequence_column=None),
    _spec("events", schemas.EVENTS, "events/*", ["jsonl"], ["event_id"], "append", sequence_column=None,
          derived=(DerivedColumn("event_date", pa.date32(), "CAST(timezone('UTC', event_ts) AS DATE)"),),
          partition_by=("event_date",)),
    _spec("sensors", schemas.SENSORS, "sensors/*", ["csv", "parquet"], ["sensor_id", "reading_ts"], "append",
          sequence_column=None,
          derived=(DerivedColumn("reading_month", pa.string(), "strftime(timezone('UTC', reading_ts), '%Y-%m')"),),
          partition_by=("store_id", "reading_month")),
)
"""The retail tables that ship with the package."""


def select_tables(tables: Sequence[TableSpec], names: Sequence[str] | None) -> tuple[TableSpec, ...]:
    """Return the entries named in `names` (all when `names` is empty), failing on unknown names."""
    if not names:
        return tuple(tables)
    known = {t.name: t for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)
