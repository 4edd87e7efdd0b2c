"""The table registry: every raw table the source loads, declared as data.

Another project declares its own `TableSpec` entries and passes them to `retail_source(tables=...)`; the retail tables
below are simply the registry that ships.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

import pyarrow as pa

from schemas import schemas

from .readers.options import resolve_reader_options

FileFormat = Literal["csv", "tsv", "txt", "parquet", "xlsx", "jsonl", "json", "delta"]
WriteDisposition = Literal["append", "merge"]

_TEXT_EXTENSIONS: Mapping[str, FileFormat] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
}
COMPRESSED_EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
)
"""Endings of compressed text files (`orders.csv.gz`) and their codec; the file is read decompressed as it streams."""

EXTENSION_FORMATS: Mapping[str, FileFormat] = MappingProxyType({
    **_TEXT_EXTENSIONS,
    **{ext + packed: fmt for ext, fmt in _TEXT_EXTENSIONS.items() for packed in COMPRESSED_EXTENSIONS},
    ".parquet": "parquet", ".xlsx": "xlsx", ".xlsm": "xlsx", ".xls": "xlsx",
})
"""File name endings (see `file_suffix`) and the format each one is read as. `.xls` goes to the Excel reader, which
reads a workbook that is really XLSX and rejects a legacy BIFF one as `UNSUPPORTED_FILE` saying what to do."""


def file_suffix(name: str) -> str:
    """The lower-case ending of `name` that `EXTENSION_FORMATS` is keyed by: `.csv`, or `.csv.gz` for a compressed
    file (the last two suffixes when the last one is a compression)."""
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED_EXTENSIONS:
        return suffixes[-2] + suffixes[-1]
    return suffixes[-1] if suffixes else ""


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
        object.__setattr__(self, "reader_options",
                           resolve_reader_options(self.name, self.formats, self.reader_options, self.schema))


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
