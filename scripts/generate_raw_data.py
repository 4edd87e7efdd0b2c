"""Generate the raw retail sample: every registry table in its delivery format, deliberately dirty, with ground truth;
or, with `--deliveries N`, N rounds of hostile deliveries and what every sink must hold after each round.

`python scripts/generate_raw_data.py [--out DIR] [--seed N] [--scale X] [--dirty-fraction F] [--tables a,b] [--clean]`

The output is a pure function of seed, scale, dirty fraction, clean flag and table selection, byte for byte (the
Delta table and the workbook carry fixed ids and times, not those of the moment they are written). Besides the data,
the output root holds `_generated_by.txt` (the marker that allows a later run to replace the directory) and
`_expected.json`: per file the records read, valid and rejected, every planted reject, the rows per table and the
distinct keys each merge table keeps after the merge.

`python scripts/generate_raw_data.py --deliveries N [--out DIR] [--seed N] [--scale X] [--tables a,b] [knobs] [--fast]`

writes, per round, `round_NNN/plan.json` (files to add, to replace with other content, or to deliver again unchanged),
`round_NNN/files/` (their bytes) and `round_NNN/truth/` (`tables/<table>.parquet`: the rows DuckDB and Delta hold;
`changelog/<table>.parquet`: the rows of the Parquet change log; `rejects.parquet`; `manifest.parquet`,
`manifest_log.parquet` and `schema_history.parquet`; `--evolve-schema` gives the truth of runs with that flag), plus
`_chaos.json` (knobs and per-round counts by table and reason code). The tables are orders (CSV), order_items
(Parquet), events (JSON Lines) and sensors (CSV and Parquet). The truth follows the README's semantics and is computed
without the package (see `GroundTruth`). Knobs: `--duplicate-rate`, `--out-of-order`, `--update-rate`, `--late-rate`,
`--redeliver-rate`, `--change-rate`, `--keep-mtime-rate`, `--drift-rate`, `--sparse-keys`, `--dirty CODE=RATE,...` or
`--dirty-rate R`, `--rows`; `--random-knobs` draws them all from the seed. `--fast` writes the files only, for volume:
each table in a process of its own, CSV by Arrow's writer (text quoted, timestamps in UTC without offset, unparseable
records last), CSV and JSON Lines files a chunk of records at a time (the same bytes whatever the chunk).
`--apply-round R --raw DIR` delivers round R of the output in `--out` into a raw root.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from retail_bronze_source import reasons
from retail_bronze_source.registry import RETAIL_TABLES, TableSpec
from schemas.schemas import EVENTS, MONEY, ORDER_ITEMS, ORDERS, SENSORS

MARKER = "_generated_by.txt"
EXPECTED = "_expected.json"
SPECS: Mapping[str, TableSpec] = {spec.name: spec for spec in RETAIL_TABLES}

START = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp())
"""First order day (UTC midnight); orders cover `ORDER_DAYS` days from here, one more file is header-only."""
DAY = 86_400
ORDER_DAYS = 7
BASE_ROWS: Mapping[str, int] = {
    "customers": 300, "products": 200, "stores": 25, "orders_per_day": 286, "returns": 100, "events": 1500,
    "sensors_csv": 800, "sensors_parquet": 400,
}
"""Rows at scale 1; `--scale` multiplies them up to `MAX_ROWS` (exchange rates are a fixed calendar and do not scale)."""
MIN_ROWS = 30
"""Floor for every scaled count, so the planted rows always have a home."""
MAX_ROWS: Mapping[str, int] = {"stores": 200}
"""Ceilings that `--scale` does not lift: a retailer's store fleet does not grow with its transaction volume."""
SENSORS_PER_STORE = 4
"""Every store has one sensor per metric; with at most `MAX_ROWS["stores"]` stores the ids fit `SN-[0-9]{5}`."""
SENSOR_METRICS = ("temperature_c", "humidity_pct", "power_kw", "footfall")

OFFSETS = (("Z", 0), ("+00:00", 0), ("+02:00", 120), ("-05:00", -300))
"""UTC offsets used in text timestamps: the text shows local time, the instant is what the offset says."""
FIRST_NAMES = (("Anna", "anna"), ("Zoë", "zoe"), ("José", "jose"), ("Liam", "liam"), ("Søren", "soren"),
               ("Maja", "maja"), ("Chloé", "chloe"), ("Ömer", "omer"), ("Aiko", "aiko"), ("Noah", "noah"))
LAST_NAMES = (("Müller", "mueller"), ("García", "garcia"), ("O'Brien", "obrien"), ("Nowak", "nowak"),
              ("Smith", "smith"), ("Dubois", "dubois"), ("Lindqvist", "lindqvist"), ("Rossi", "rossi"))
COUNTRIES = ("DE", "FR", "CH", "GB", "US", "SE", "PL", "NL", "ES", "IT")
CITIES = (("Zürich", "CH"), ("München", "DE"), ("Paris", "FR"), ("Kraków", "PL"), ("Malmö", "SE"),
          ("London", "GB"), ("New York", "US"), ("Genève", "CH"), ("Köln", "DE"), ("Barcelona", "ES"))
NOTES = (
    "gift wrap, please",
    'customer said "leave it at the door"',
    "deliver after 6pm\nring twice",
    'fragile: "glass", handle with care\r\nthanks!',
    "call before delivery",
    "Zoë's order: ünïcödé ✓",
)
ORDER_CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP", "CHF")
RATE_PAIRS = (("EUR", "USD", 1.08), ("EUR", "GBP", 0.86), ("EUR", "CHF", 0.95), ("USD", "JPY", 148.0),
              ("EUR", "SEK", 11.2), ("EUR", "PLN", 4.3))
RATE_MONTHS = ((2024, 1), (2024, 2), (2024, 3))


@dataclass(frozen=True)
class Options:
    """What to generate."""

    seed: int = 42
    scale: float = 1.0
    dirty_fraction: float = 0.0
    clean: bool = False

    def rows(self, name: str) -> int:
        """Scaled row count of one base count."""
        scaled = max(MIN_ROWS, round(BASE_ROWS[name] * self.scale))
        return min(scaled, MAX_ROWS.get(name, scaled))


@dataclass(frozen=True)
class Bad:
    """One expected reject of one record."""

    row: int | None
    reason_code: str
    column: str | None = None
    sheet: str | None = None


@dataclass
class Ledger:
    """The ground truth collected while writing: files, rejects and the keys of valid rows."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    valid_rows: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[pa.Table]] = field(default_factory=dict)

    def file_rejected(self, rel: str, table: str, reason_code: str) -> None:
        """Record a file that is rejected as a whole."""
        self.files[rel] = {"table": table, "rows": 0, "valid": 0, "rejected": 0, "file_reject": reason_code}
        self.rejects.append(_reject(table, rel, Bad(None, reason_code)))
        self.valid_rows.setdefault(table, 0)

    def add_file(self, rel: str, table: str, rows: int, bad: Iterable[Bad], valid_keys: pa.Table | None = None) -> None:
        """Record a readable file with `rows` records of which those in `bad` are rejected."""
        bad = sorted(bad, key=lambda b: (b.sheet or "", b.row or 0, b.reason_code, b.column or ""))
        rejected = len({(b.sheet, b.row) for b in bad})
        self.files[rel] = {"table": table, "rows": rows, "valid": rows - rejected, "rejected": rejected,
                           "file_reject": None}
        self.rejects.extend(_reject(table, rel, b) for b in bad)
        self.valid_rows[table] = self.valid_rows.get(table, 0) + rows - rejected
        if valid_keys is not None:
            if valid_keys.num_rows != rows - rejected:
                raise AssertionError(f"{rel}: {valid_keys.num_rows} valid keys for {rows - rejected} valid rows")
            self.keys.setdefault(table, []).append(valid_keys)

    def latest(self) -> dict[str, int]:
        """Distinct keys per merge table after the merge, checking that no valid rows of any table share key and sequence."""
        result: dict[str, int] = {}
        for table, parts in sorted(self.keys.items()):
            spec = SPECS[table]
            keys = pa.concat_tables(parts)
            versions = list(spec.primary_key) + ([spec.sequence_column] if spec.sequence_column else [])
            if keys.group_by(versions).aggregate([]).num_rows != keys.num_rows:
                raise AssertionError(f"{table}: valid rows share key and sequence value")
            if spec.write_disposition == "merge":
                result[table] = keys.group_by(list(spec.primary_key)).aggregate([]).num_rows
        return result

    def document(self, opts: Options, tables: Sequence[str]) -> dict[str, Any]:
        """The `_expected.json` document."""
        return {
            "generator": {"seed": opts.seed, "scale": opts.scale, "dirty_fraction": opts.dirty_fraction,
                          "clean": opts.clean, "tables": list(tables)},
            "files": dict(sorted(self.files.items())),
            "rejects": sorted(self.rejects, key=lambda r: (r["src_filename"], r["src_sheet"] or "",
                                                           r["src_row_number"] or 0, r["reason_code"],
                                                           r["column_name"] or "")),
            "valid_rows": dict(sorted(self.valid_rows.items())),
            "latest": self.latest(),
        }


def _reject(table: str, rel: str, bad: Bad) -> dict[str, Any]:
    return {"table_name": table, "src_filename": rel, "src_row_number": bad.row, "src_sheet": bad.sheet,
            "reason_code": bad.reason_code, "column_name": bad.column}


class Rng:
    """Deterministic vectorized random numbers: one independent stream per (seed, name)."""

    def __init__(self, seed: int, name: str) -> None:
        self._seed = seed
        self._name = name
        self._calls = 0

    def uniform(self, n: int) -> pa.DoubleArray:
        """`n` floats in [0, 1)."""
        self._calls += 1
        digest = hashlib.blake2b(f"{self._seed}/{self._name}/{self._calls}".encode(), digest_size=8).digest()
        return pc.random(n, initializer=int.from_bytes(digest, "little"))

    def integers(self, n: int, low: int, high: int) -> pa.Int64Array:
        """`n` integers in [low, high)."""
        return pc.add(pc.cast(pc.floor(pc.multiply(self.uniform(n), high - low)), pa.int64()), low)

    def choice(self, n: int, values: Sequence[Any], type_: pa.DataType | None = None) -> pa.Array:
        """`n` values drawn uniformly from `values`."""
        return pc.take(pa.array(values, type_), self.integers(n, 0, len(values)))

    def mask(self, n: int, p: float) -> pa.BooleanArray:
        """`n` booleans, each true with probability `p`."""
        return pc.less(self.uniform(n), p)

    def python(self) -> random.Random:
        """A scalar generator for the few values written cell by cell."""
        self._calls += 1
        return random.Random(f"{self._seed}/{self._name}/{self._calls}")


def arange(n: int, start: int = 0) -> pa.Int64Array:
    """The integers start, start + 1, ..., start + n - 1."""
    return pc.add(pc.cumulative_sum(pc.fill_null(pa.nulls(n, pa.int64()), 1)), start - 1)


def positions_mask(n: int, positions: Iterable[int]) -> pa.BooleanArray:
    """A mask of length `n` that is true at the 0-based `positions`."""
    return pc.is_in(arange(n), pa.array(sorted(set(positions)), pa.int64()))


def utc_us(seconds: pa.Array) -> pa.Array:
    """Epoch seconds as UTC-aware microsecond timestamps."""
    return pc.multiply(seconds, 1_000_000).cast(pa.timestamp("us", tz="UTC"))


def iso_text(rng: Rng, seconds: pa.Array, millis: pa.Array | None = None) -> pa.StringArray:
    """ISO 8601 text of epoch seconds in a random mix of UTC offsets, optionally with milliseconds."""
    n = len(seconds)
    which = rng.integers(n, 0, len(OFFSETS))
    local = pc.add(seconds, pc.take(pa.array([m * 60 for _, m in OFFSETS], pa.int64()), which))
    if millis is None:
        stamp = pc.cast(local, pa.timestamp("s"))
    else:
        stamp = pc.cast(pc.add(pc.multiply(local, 1000), millis), pa.timestamp("ms"))
    text = pc.replace_substring(pc.cast(stamp, pa.string()), " ", "T")
    return pc.binary_join_element_wise(text, pc.take(pa.array([s for s, _ in OFFSETS]), which), "")


def date_text(seconds: pa.Array) -> pa.StringArray:
    """The UTC date of epoch seconds as `YYYY-MM-DD`."""
    return pc.cast(pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.date32()), pa.string())


def money_text(cents: pa.Array) -> pa.StringArray:
    """Non-negative integer cents as a decimal with two places."""
    units = pc.divide(cents, 100)
    rest = pc.subtract(cents, pc.multiply(units, 100))
    return pc.binary_join_element_wise(pc.cast(units, pa.string()), pc.utf8_lpad(pc.cast(rest, pa.string()), 2, "0"), ".")


def money(cents: pa.Array) -> pa.Array:
    """Non-negative integer cents as the contract's money type."""
    return pc.cast(money_text(cents), MONEY)


def text(values: pa.Array) -> pa.StringArray:
    """Any array as text (booleans as `true`/`false`), nulls kept."""
    return pc.cast(values, pa.string())


def with_nulls(values: pa.Array, nulls: pa.BooleanArray) -> pa.Array:
    """`values` with nulls where `nulls` is true."""
    return pc.if_else(nulls, pa.scalar(None, values.type), values)


def set_at(values: pa.Array, replacements: Mapping[int, Any]) -> pa.Array:
    """`values` with the given 0-based positions replaced (None makes a null)."""
    if not replacements:
        return values
    ordered = sorted(replacements.items())
    mask = positions_mask(len(values), [p for p, _ in ordered])
    return pc.replace_with_mask(values, mask, pa.array([v for _, v in ordered], values.type))


def free_text(spec: TableSpec) -> set[str]:
    """String columns without pattern or accepted values: the only ones whose values may need CSV quoting."""
    return {f.name for f in spec.schema if pa.types.is_string(f.type) and not f.metadata}


def csv_field(values: pa.Array, free: bool = True) -> pa.StringArray:
    """Values as CSV fields: null as empty, quoted (with doubled quotes) where needed.

    With `free=False` the caller promises no value holds a quote, comma or line break (numbers, timestamps, codes).
    """
    values = pc.fill_null(text(values), "")
    if not free:
        return values
    needs_quotes = pc.match_substring_regex(values, '[",\r\n]')
    if not pc.any(needs_quotes).as_py():
        return values
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(needs_quotes, quoted, values)


def csv_fields(spec: TableSpec, columns: Mapping[str, pa.Array], names: Sequence[str] | None = None) -> list[pa.Array]:
    """The CSV fields of the `names` columns (default: the contract's columns, in contract order)."""
    free = free_text(spec)
    return [csv_field(columns[c], c in free) for c in names or spec.schema.names]


def csv_lines(fields: Sequence[pa.Array]) -> pa.StringArray:
    """CSV records without line ends, one per row of `fields`."""
    return pc.binary_join_element_wise(*fields, ",")


def concat_bytes(lines: pa.Array) -> bytes:
    """All strings of `lines` (no nulls) concatenated, taken straight from the Arrow value buffer."""
    lines = pc.cast(lines, pa.large_string())
    if len(lines) == 0:
        return b""
    _, offsets_buffer, data = lines.buffers()
    offsets = pa.Array.from_buffers(pa.int64(), len(lines) + 1, [None, offsets_buffer], offset=lines.offset)
    return memoryview(data)[offsets[0].as_py():offsets[-1].as_py()].tobytes()


def write_csv(path: Path, header: Sequence[str], lines: pa.Array, eol: str = "\n", bom: bool = False,
              tail: str = "") -> None:
    """Write a header and records (each given without its line end), then `tail` verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = concat_bytes(pc.binary_join_element_wise(lines, eol, "")) if len(lines) else b""
    head = ("\ufeff" if bom else "") + ",".join(header) + eol
    path.write_bytes(head.encode() + body + tail.encode())


def file_schema(spec: TableSpec) -> pa.Schema:
    """The contract's columns as a plain, all-nullable file schema (so planted nulls can be written)."""
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in spec.schema])


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`values` as one contiguous array (a single chunk as it is: `combine_chunks` would copy it)."""
    if not isinstance(values, pa.ChunkedArray):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


def valid_keys(spec: TableSpec, table: pa.Table, bad_rows: Iterable[int]) -> pa.Table:
    """Key and sequence columns of the rows of `table` that are not in `bad_rows` (1-based)."""
    cols = list(spec.primary_key) + ([spec.sequence_column] if spec.sequence_column else [])
    keep = pc.invert(positions_mask(table.num_rows, [r - 1 for r in bad_rows]))
    return table.select(cols).filter(keep)


def customers(out: Path, opts: Options, ledger: Ledger) -> None:
    """Two customer files (the second with newer and one older version of some keys) and an empty file."""
    spec, rng = SPECS["customers"], Rng(opts.seed, "customers")
    n = opts.rows("customers")
    first, last = rng.integers(n, 0, len(FIRST_NAMES)), rng.integers(n, 0, len(LAST_NAMES))
    ids = arange(n, 1)
    created = rng.integers(n, START - 420 * DAY, START - 60 * DAY)
    base = pa.table({
        "customer_id": ids,
        "email": pc.binary_join_element_wise(pc.take(pa.array([a for _, a in FIRST_NAMES]), first), ".",
                                             pc.take(pa.array([a for _, a in LAST_NAMES]), last), text(ids),
                                             "@example.com", ""),
        "first_name": pc.take(pa.array([f for f, _ in FIRST_NAMES]), first),
        "last_name": pc.take(pa.array([f for f, _ in LAST_NAMES]), last),
        "country_code": rng.choice(n, COUNTRIES),
        "loyalty_tier": with_nulls(rng.choice(n, ("bronze", "silver", "gold", "platinum")), rng.mask(n, 0.15)),
        "is_active": pc.invert(rng.mask(n, 0.1)),
        "created_at": created,
        "updated_at": pc.add(created, rng.integers(n, 0, 50 * DAY)),
    })
    planted: dict[int, tuple[str, str, str]] = {} if opts.clean else {
        4: ("email", "", reasons.NOT_NULL),
        8: ("email", "not-an-email", reasons.PATTERN_MISMATCH),
        12: ("created_at", "not-a-date", reasons.TYPE_MISMATCH),
    }
    newer = pc.and_(rng.mask(n, 0.1), pc.invert(positions_mask(n, planted)))
    older_pos = next(i for i in range(n) if i not in planted and not newer[i].as_py())
    updates = base.filter(newer)
    m = updates.num_rows
    updates = updates.set_column(5, "loyalty_tier", rng.choice(m, ("silver", "gold", "platinum")))
    updates = updates.set_column(8, "updated_at", rng.integers(m, START, START + ORDER_DAYS * DAY))
    older = base.slice(older_pos, 1)
    older = older.set_column(5, "loyalty_tier", pa.array(["bronze"]))
    older = older.set_column(8, "updated_at", pc.subtract(older["updated_at"], DAY))
    second = pa.concat_tables([updates, older])
    for number, table in ((1, base), (2, second)):
        rel = f"customers/customers_{number}.csv"
        cols = {c: text(table[c].combine_chunks()) if c not in ("created_at", "updated_at")
                else iso_text(rng, table[c].combine_chunks()) for c in spec.schema.names}
        bad = []
        if number == 1:
            for pos, (col, value, code) in planted.items():
                cols[col] = set_at(cols[col], {pos: value})
                bad.append(Bad(pos + 1, code, col))
        write_csv(out / rel, spec.schema.names, csv_lines(csv_fields(spec, cols)))
        ledger.add_file(rel, "customers", table.num_rows, bad, valid_keys(spec, table, [b.row or 0 for b in bad]))
    if not opts.clean:
        (out / "customers/customers_empty.csv").write_bytes(b"")
        ledger.add_file("customers/customers_empty.csv", "customers", 0, [], pa.table({
            "customer_id": pa.array([], pa.int64()), "updated_at": pa.array([], pa.int64())}))


def stores(out: Path, opts: Options, ledger: Ledger) -> None:
    """The store list as UTF-8 with BOM and CRLF, plus a Latin-1 legacy file."""
    spec, rng = SPECS["stores"], Rng(opts.seed, "stores")
    n = opts.rows("stores")
    ids = arange(n, 1)
    city = rng.integers(n, 0, len(CITIES))
    city_name = pc.take(pa.array([c for c, _ in CITIES]), city)
    opened = pc.add(rng.integers(n, 0, 3000), START - 3500 * DAY)
    updated = rng.integers(n, START - 30 * DAY, START)
    cols = {
        "store_id": text(ids),
        "store_name": pc.binary_join_element_wise("Store", text(ids), city_name, " "),
        "country_code": pc.take(pa.array([c for _, c in CITIES]), city),
        "city": city_name,
        "store_format": rng.choice(n, ("hypermarket", "supermarket", "express", "online")),
        "opened_on": with_nulls(date_text(opened), rng.mask(n, 0.2)),
        "updated_at": iso_text(rng, updated),
    }
    write_csv(out / "stores/stores.csv", spec.schema.names, csv_lines(csv_fields(spec, cols)), eol="\r\n", bom=True)
    ledger.add_file("stores/stores.csv", "stores", n, [],
                    pa.table({"store_id": ids, "updated_at": updated}))
    if not opts.clean:
        legacy = ",".join(spec.schema.names) + "\r\n" + "".join(
            f"{n + i},Filiale {city},CH,{city},express,2019-05-0{i},2024-02-01T08:00:00+02:00\r\n"
            for i, city in enumerate(("Zürich", "Genève", "Bülach"), start=1))
        (out / "stores/stores_legacy.csv").write_bytes(legacy.encode("latin-1"))
        ledger.file_rejected("stores/stores_legacy.csv", "stores", reasons.FILE_ENCODING)


def order_base(opts: Options) -> pa.Table:
    """The orders as first placed: one row per order, `day` = index of its UTC order date."""
    rng = Rng(opts.seed, "orders")
    per_day = opts.rows("orders_per_day")
    n = per_day * ORDER_DAYS
    day = pc.divide(arange(n), per_day)
    seconds = pc.add(pc.add(pc.multiply(day, DAY), rng.integers(n, 0, DAY)), START)
    seconds = pc.take(seconds, pc.sort_indices(seconds))
    customer_ids = rng.integers(n, 1, opts.rows("customers") + 1)
    return pa.table({
        "order_id": arange(n, 100_001),
        "customer_id": customer_ids,
        "store_id": rng.integers(n, 1, opts.rows("stores") + 1),
        "order_ts": seconds,
        "status": rng.choice(n, ("placed", "paid", "shipped", "delivered", "cancelled")),
        "channel": rng.choice(n, ("web", "app", "store")),
        "currency": rng.choice(n, ORDER_CURRENCIES),
        "total_cents": rng.integers(n, 100, 50_000),
        "customer_email": with_nulls(pc.binary_join_element_wise("customer", text(customer_ids), "@example.com", ""),
                                     rng.mask(n, 0.1)),
        "note": with_nulls(rng.choice(n, NOTES), rng.mask(n, 0.9)),
        "updated_at": pc.add(seconds, rng.integers(n, 0, 3600)),
        "day": day,
    })


ORDER_PLANTS: Mapping[int, Mapping[int, Mapping[str, tuple[str, str]]]] = {
    0: {
        4: {"total_amount": ("12.3.4", reasons.TYPE_MISMATCH)},
        8: {"status": ("lost", reasons.ACCEPTED_VALUES)},
        12: {"status": ("lost", reasons.ACCEPTED_VALUES), "currency": ("eur", reasons.PATTERN_MISMATCH)},
        16: {"customer_email": ("not-an-email", reasons.PATTERN_MISMATCH)},
        20: {"customer_id": ("", reasons.NOT_NULL)},
        24: {"total_amount": ("1000000.01", reasons.OUT_OF_RANGE)},
    },
}
"""Planted contract violations: day index -> 0-based row in that day's file -> column -> (text, reason)."""
ORDER_RAGGED = {(0, 6): reasons.TOO_MANY_COLUMNS, (0, 10): reasons.TOO_FEW_COLUMNS, (2, 3): reasons.TOO_FEW_COLUMNS}
"""Planted ragged records: (day index, 0-based row) -> reason."""
ORDER_NOTES = {(0, 1): NOTES[1], (0, 2): NOTES[2], (0, 3): NOTES[3]}
"""Valid rows that always carry a quoted note (quotes, commas, newlines)."""
DUPLICATE_DAYS = (1, 3)
"""The first row of this day's file and a conflicting copy (same key and updated_at) in the second day's file."""
DUPLICATE_POS = 5
MALFORMED_DAY = 4
DIRTY_KINDS = (
    ("total_amount", "12.3.4", reasons.TYPE_MISMATCH),
    ("customer_id", "", reasons.NOT_NULL),
    ("status", "lost", reasons.ACCEPTED_VALUES),
    ("total_amount", "-5.00", reasons.OUT_OF_RANGE),
    ("currency", "eur", reasons.PATTERN_MISMATCH),
    (None, "", reasons.TOO_MANY_COLUMNS),
    (None, "", reasons.TOO_FEW_COLUMNS),
)
"""Corruptions spread over `--dirty-fraction` of the orders rows: column (None: the record), text, reason."""


def orders(out: Path, opts: Options, ledger: Ledger) -> None:
    """One CSV per UTC order day with status updates in later files, planted bad rows and a header-only day."""
    spec, rng = SPECS["orders"], Rng(opts.seed, "orders-files")
    names = spec.schema.names
    base = order_base(opts)
    per_day = opts.rows("orders_per_day")
    plants = {} if opts.clean else ORDER_PLANTS
    ragged = {} if opts.clean else ORDER_RAGGED
    reserved = {d: set(plants.get(d, {})) | {p for (dd, p) in [*ragged, *ORDER_NOTES] if dd == d}
                for d in range(ORDER_DAYS + 1)}
    if not opts.clean:
        reserved[DUPLICATE_DAYS[0]].add(DUPLICATE_POS)

    updates = []
    for d in range(ORDER_DAYS - 1):
        day_rows = base.slice(d * per_day, per_day)
        chosen = day_rows.filter(pc.and_(rng.mask(per_day, 0.04), pc.invert(positions_mask(per_day, reserved[d]))))
        m = chosen.num_rows
        target = pc.min_element_wise(rng.integers(m, d + 1, d + 3), ORDER_DAYS - 1)
        chosen = chosen.set_column(chosen.schema.get_field_index("day"), "day", target)
        chosen = chosen.set_column(chosen.schema.get_field_index("status"), "status",
                                   rng.choice(m, ("shipped", "delivered", "cancelled")))
        chosen = chosen.set_column(chosen.schema.get_field_index("updated_at"), "updated_at",
                                   pc.add(pc.add(pc.multiply(target, DAY), START + DAY // 2), rng.integers(m, 0, 40_000)))
        updates.append(chosen)
    versions = pa.concat_tables(updates)
    duplicate = base.slice(DUPLICATE_DAYS[0] * per_day + DUPLICATE_POS, 1)

    for d in range(ORDER_DAYS + 1):
        rel = f"orders/orders_{date_text(pa.array([START + d * DAY])).to_pylist()[0]}.csv"
        day_versions = versions.filter(pc.equal(versions["day"], d))
        day_versions = day_versions.take(pc.sort_indices(day_versions["updated_at"]))
        table = pa.concat_tables([base.slice(d * per_day, per_day), day_versions]) if d < ORDER_DAYS else base.slice(0, 0)
        if d == DUPLICATE_DAYS[1] and not opts.clean:
            conflict = duplicate.set_column(duplicate.schema.get_field_index("total_cents"), "total_cents",
                                            pc.add(duplicate["total_cents"], 100))
            table = pa.concat_tables([table, conflict])
            reserved[d].add(table.num_rows - 1)
        lines, bad = order_lines(rng, table, d, opts, plants.get(d, {}), ragged, reserved[d])
        if not opts.clean and d in DUPLICATE_DAYS:
            row = DUPLICATE_POS + 1 if d == DUPLICATE_DAYS[0] else table.num_rows
            bad.append(Bad(row, reasons.DUPLICATE_KEY, "order_id"))
        tail, rows = "", table.num_rows
        if d == MALFORMED_DAY and not opts.clean:
            tail = (f"{base['order_id'][-1].as_py() + 1},1,1,2024-03-05T23:59:00Z,2024-03-05,placed,web,EUR,10.00,,"
                    '"this note never ends, its closing quote is missing\nand the file ends here\n')
            rows += 1
            bad.append(Bad(rows, reasons.MALFORMED_ROW))
        write_csv(out / rel, names, lines, tail=tail)
        keys = table.select(["order_id", "updated_at"])
        ledger.add_file(rel, "orders", rows, bad, valid_keys(spec, keys, [b.row for b in bad if b.row and b.row <= keys.num_rows]))
    if not opts.clean:
        (out / "orders/orders_export.xls").write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 504)
        ledger.file_rejected("orders/orders_export.xls", "orders", reasons.UNSUPPORTED_FILE)


def order_lines(rng: Rng, table: pa.Table, day: int, opts: Options,
                plants: Mapping[int, Mapping[str, tuple[str, str]]],
                ragged: Mapping[tuple[int, int], str], reserved: set[int]) -> tuple[pa.Array, list[Bad]]:
    """The CSV records of one orders file and the rejects planted in them."""
    spec = SPECS["orders"]
    n = table.num_rows
    cols: dict[str, pa.Array] = {
        "order_id": text(table["order_id"].combine_chunks()),
        "customer_id": text(table["customer_id"].combine_chunks()),
        "store_id": text(table["store_id"].combine_chunks()),
        "order_ts": iso_text(rng, table["order_ts"].combine_chunks()),
        "order_dt": date_text(table["order_ts"].combine_chunks()),
        "status": table["status"].combine_chunks(),
        "channel": table["channel"].combine_chunks(),
        "currency": table["currency"].combine_chunks(),
        "total_amount": money_text(table["total_cents"].combine_chunks()),
        "customer_email": table["customer_email"].combine_chunks(),
        "note": set_at(table["note"].combine_chunks(), {p: v for (d, p), v in ORDER_NOTES.items() if d == day and p < n}),
        "updated_at": iso_text(rng, table["updated_at"].combine_chunks()),
    }
    bad: list[Bad] = []
    for pos, cells in plants.items():
        for col, (value, code) in cells.items():
            cols[col] = set_at(cols[col], {pos: value})
            bad.append(Bad(pos + 1, code, col))
    kinds = pa.nulls(n, pa.int64())
    if opts.dirty_fraction > 0 and n:
        hit = pc.and_(rng.mask(n, opts.dirty_fraction), pc.invert(positions_mask(n, reserved)))
        kinds = with_nulls(rng.integers(n, 0, len(DIRTY_KINDS)), pc.invert(hit))
        for k, (dirty_col, value, _) in enumerate(DIRTY_KINDS):
            if dirty_col is not None:
                cols[dirty_col] = pc.if_else(pc.fill_null(pc.equal(kinds, k), False), value, cols[dirty_col])
    fields = csv_fields(spec, cols)
    lines = csv_lines(fields)
    ragged_here = {p: code for (d, p), code in ragged.items() if d == day}
    for ragged_code in (reasons.TOO_MANY_COLUMNS, reasons.TOO_FEW_COLUMNS):
        k = next(i for i, kind in enumerate(DIRTY_KINDS) if kind[2] == ragged_code)
        ragged_mask = pc.or_(positions_mask(n, [p for p, c in ragged_here.items() if c == ragged_code]),
                             pc.fill_null(pc.equal(kinds, k), False))
        if not pc.any(ragged_mask).as_py():
            continue
        alternative = (pc.binary_join_element_wise(lines, "EXTRA", ",") if ragged_code == reasons.TOO_MANY_COLUMNS
                       else csv_lines(fields[:-1]))
        lines = pc.if_else(ragged_mask, alternative, lines)
    bad.extend(Bad(p + 1, code) for p, code in ragged_here.items())
    # Per-row Python only over the rows just corrupted, to list their expected rejects.
    for pos, kind in zip(pc.indices_nonzero(pc.is_valid(kinds)).to_pylist(), pc.drop_null(kinds).to_pylist(), strict=True):
        dirty_col, _, dirty_code = DIRTY_KINDS[kind]
        bad.append(Bad(pos + 1, dirty_code, dirty_col))
    return lines, bad


def products(out: Path, opts: Options, ledger: Ledger) -> None:
    """The product catalogue as one Parquet file."""
    spec, rng = SPECS["products"], Rng(opts.seed, "products")
    n = opts.rows("products")
    ids = arange(n, 1)
    category = rng.choice(n, ("grocery", "apparel", "electronics", "home", "toys", "beauty"))
    cents = rng.integers(n, 50, 200_000)
    price = money(cents)
    bad = [] if opts.clean else [Bad(8, reasons.OUT_OF_RANGE, "unit_price")]
    if bad:
        price = set_at(price, {7: Decimal("-1.00")})
    table = pa.table({
        "product_id": ids,
        "sku": pc.binary_join_element_wise("SKU-", pc.utf8_lpad(text(ids), 6, "0"), ""),
        "product_name": pc.binary_join_element_wise(pc.utf8_capitalize(category), "item", text(ids), " "),
        "category": category,
        "unit_price": price,
        "currency": pa.nulls(n, pa.string()).fill_null("EUR"),
        "is_active": pc.invert(rng.mask(n, 0.05)),
        "updated_at": utc_us(rng.integers(n, START - 90 * DAY, START)),
    }, schema=file_schema(spec))
    (out / "products").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "products/products.parquet")
    ledger.add_file("products/products.parquet", "products", n, bad, valid_keys(spec, table, [b.row or 0 for b in bad]))


def order_items(out: Path, opts: Options, ledger: Ledger) -> None:
    """Order lines in two Parquet files (the second with updated lines) and a truncated file."""
    spec, rng = SPECS["order_items"], Rng(opts.seed, "order_items")
    base = order_base(opts)
    n_orders, max_lines = base.num_rows, 4
    slot = arange(n_orders * max_lines)
    order = pc.divide(slot, max_lines)
    line_no = pc.add(pc.subtract(slot, pc.multiply(order, max_lines)), 1)
    keep = pc.less_equal(line_no, pc.take(rng.integers(n_orders, 1, max_lines + 1), order))
    order, line_no = pc.filter(order, keep), pc.filter(line_no, keep)
    n = len(order)
    items = pa.table({
        "order_id": pc.take(base["order_id"], order),
        "line_no": pc.cast(line_no, pa.int32()),
        "product_id": rng.integers(n, 1, opts.rows("products") + 1),
        "quantity": pc.cast(rng.integers(n, 1, 6), pa.int32()),
        "unit_price": money(rng.integers(n, 50, 20_000)),
        "discount_pct": with_nulls(rng.choice(n, ("5.00", "10.00", "15.00", "25.00")).cast(pa.decimal128(5, 2)),
                                   rng.mask(n, 0.7)),
        "updated_at": utc_us(pc.take(base["updated_at"], order)),
    }, schema=file_schema(spec))
    first_half = pc.less(pc.take(base["day"], order), 4)
    first, second = items.filter(first_half), items.filter(pc.invert(first_half))
    planted: dict[int, tuple[str, Any, str]] = {} if opts.clean else {
        2: ("quantity", 0, reasons.OUT_OF_RANGE),
        5: ("order_id", None, reasons.NOT_NULL),
    }
    changed = first.filter(pc.and_(rng.mask(first.num_rows, 0.03), pc.invert(positions_mask(first.num_rows, planted))))
    m = changed.num_rows
    changed = changed.set_column(3, "quantity", pc.cast(rng.integers(m, 1, 6), pa.int32()))
    changed = changed.set_column(6, "updated_at", utc_us(rng.integers(m, START + ORDER_DAYS * DAY, START + (ORDER_DAYS + 1) * DAY)))
    second = pa.concat_tables([second, changed])
    bad = []
    for pos, (col, value, code) in planted.items():
        i = first.schema.get_field_index(col)
        first = first.set_column(i, col, set_at(first[col].combine_chunks(), {pos: value}))
        bad.append(Bad(pos + 1, code, col))
    (out / "order_items").mkdir(parents=True, exist_ok=True)
    for number, (table, file_bad) in enumerate(((first, bad), (second, [])), start=1):
        rel = f"order_items/order_items_{number}.parquet"
        pq.write_table(table, out / rel)
        ledger.add_file(rel, "order_items", table.num_rows, file_bad,
                        valid_keys(spec, table, [b.row or 0 for b in file_bad]))
    if not opts.clean:
        rel = "order_items/order_items_truncated.parquet"
        pq.write_table(first.slice(0, 50), out / rel)
        data = (out / rel).read_bytes()
        (out / rel).write_bytes(data[: len(data) // 2])
        ledger.file_rejected(rel, "order_items", reasons.FILE_UNREADABLE)


def returns_rows(rng: Rng, opts: Options, return_ids: pa.Array, start: int) -> pa.Table:
    """Return rows for the given ids, returned and updated from `start` on."""
    n = len(return_ids)
    returned = rng.integers(n, start, start + 5 * DAY)
    return pa.table({
        "return_id": return_ids,
        "order_id": rng.integers(n, 100_001, 100_001 + opts.rows("orders_per_day") * ORDER_DAYS),
        "product_id": rng.integers(n, 1, opts.rows("products") + 1),
        "quantity": pc.cast(rng.integers(n, 1, 4), pa.int32()),
        "refund_amount": money(rng.integers(n, 100, 30_000)),
        "currency": pa.nulls(n, pa.string()).fill_null("EUR"),
        "reason": rng.choice(n, ("damaged", "wrong_item", "not_as_described", "changed_mind", "late_delivery")),
        "is_deleted": pa.nulls(n, pa.bool_()).fill_null(False),
        "returned_at": utc_us(returned),
        "updated_at": utc_us(pc.add(returned, rng.integers(n, 0, DAY))),
    }, schema=file_schema(SPECS["returns"]))


def returns(out: Path, opts: Options, ledger: Ledger) -> None:
    """The returns Delta table, written in one commit."""
    from deltalake import write_deltalake

    spec, rng = SPECS["returns"], Rng(opts.seed, "returns")
    n = opts.rows("returns")
    table = returns_rows(rng, opts, arange(n, 1), START + DAY)
    bad = [] if opts.clean else [Bad(4, reasons.ACCEPTED_VALUES, "reason")]
    if bad:
        table = table.set_column(6, "reason", set_at(table["reason"].combine_chunks(), {3: "lost_in_mail"}))
    write_deltalake(str(out / "returns"), table)
    fixed_delta_log(out / "returns", f"returns/{opts.seed}")
    ledger.add_file("returns", "returns", n, bad, valid_keys(spec, table, [b.row or 0 for b in bad]))


WRITER_TIME = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
"""The time stamped into the sample's Delta log and workbook, instead of the time of writing."""


def fixed_delta_log(path: Path, name: str) -> None:
    """Make a freshly written one-commit Delta table at `path` the same bytes on every run: the data file and the
    table get ids derived from `name`, the commit the time `WRITER_TIME`, and every log entry sorted keys."""
    stamp = int(WRITER_TIME.timestamp() * 1000)
    log = path / "_delta_log" / f"{0:020d}.json"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    files = 0
    for entry in entries:
        if "commitInfo" in entry:
            entry["commitInfo"]["timestamp"] = stamp
            entry["commitInfo"].get("operationMetrics", {})["execution_time_ms"] = 0
        if "metaData" in entry:
            entry["metaData"].update(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/table")), createdTime=stamp)
        if "add" in entry:
            add = entry["add"]
            new = f"part-{files:05d}-{uuid.uuid5(uuid.NAMESPACE_URL, f'{name}/{files}')}-c000.snappy.parquet"
            (path / add["path"]).rename(path / new)
            files += 1
            add.update(path=new, modificationTime=stamp, stats=json.dumps(json.loads(add["stats"]), sort_keys=True,
                                                                          separators=(",", ":")))
    log.write_text("\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries) + "\n")


def fixed_workbook(path: Path) -> None:
    """Rewrite the workbook at `path` with every zip entry dated `WRITER_TIME` and that time as its modification time
    (openpyxl stamps the time of saving), so that the same content is the same bytes."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    modified = f"{WRITER_TIME:%Y-%m-%dT%H:%M:%SZ}".encode()
    with zipfile.ZipFile(path, "w") as target:
        for info, data in entries:
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + modified, data)
            fixed = zipfile.ZipInfo(info.filename, date_time=WRITER_TIME.timetuple()[:6])
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            target.writestr(fixed, data)


def append_returns_commit(out: str | Path, seed: int, n: int, scale: float = 1.0,
                          with_reason_code: bool = False) -> dict[str, Any]:
    """Append one commit of `n` return rows to `<out>/returns`: half new keys, half newer versions (some deletes).

    `with_reason_code` adds the upstream column `return_reason_code` (`R01`..`R05`), evolving the table's schema.

    Returns the new table version and the return ids it adds, updates and marks deleted. `_expected.json` describes
    the first commit only and is not changed.
    """
    from deltalake import DeltaTable, write_deltalake

    path = str(Path(out) / "returns")
    current = DeltaTable(path)
    version = current.version() + 1
    existing = pa.table(current.to_pyarrow_table(columns=["return_id"]))["return_id"].combine_chunks()
    rng = Rng(seed, f"returns-commit-{version}")
    known = pc.unique(existing).sort()
    updated = pc.take(known, pc.sort_indices(rng.uniform(len(known))))[: min(n // 2, len(known))]
    new_ids = arange(n - len(updated), pc.max(known).as_py() + 1)
    table = returns_rows(rng, Options(seed=seed, scale=scale), pa.concat_arrays([updated, new_ids]),
                         START + (ORDER_DAYS + version) * DAY)
    deleted = pc.and_(positions_mask(len(table), range(len(updated))), rng.mask(len(table), 0.2))
    table = table.set_column(7, "is_deleted", deleted)
    if with_reason_code:
        codes = pc.binary_join_element_wise("R0", text(rng.integers(len(table), 1, 6)), "")
        table = table.append_column("return_reason_code", codes)
    write_deltalake(path, table, mode="append", schema_mode="merge" if with_reason_code else None)
    return {"version": version, "rows": len(table), "new_ids": new_ids.to_pylist(), "updated_ids": updated.to_pylist(),
            "deleted_ids": pc.filter(table["return_id"], deleted).to_pylist()}


def exchange_rates(out: Path, opts: Options, ledger: Ledger) -> None:
    """Daily rates of a few currency pairs in one workbook, one sheet per month, real date cells."""
    from openpyxl import Workbook

    spec, rng = SPECS["exchange_rates"], Rng(opts.seed, "exchange_rates")
    scalar = rng.python()
    workbook = Workbook()
    workbook.remove(workbook.active)
    bad: list[Bad] = []
    keys: dict[str, list[Any]] = {c: [] for c in spec.primary_key}
    rows = 0
    level = {(b, q): start for b, q, start in RATE_PAIRS}
    # openpyxl writes cell by cell; the calendar is fixed (a few hundred cells) and does not scale.
    for year, month in RATE_MONTHS:
        sheet_name = f"{year}-{month:02d}"
        sheet = workbook.create_sheet(sheet_name)
        sheet.append(spec.schema.names)
        day = dt.date(year, month, 1)
        data_row = 0
        while day.month == month:
            for base_ccy, quote_ccy, _ in RATE_PAIRS:
                level[base_ccy, quote_ccy] *= 1 + scalar.uniform(-0.004, 0.004)
                rate: float | None = round(level[base_ccy, quote_ccy], 6)
                data_row += 1
                if not opts.clean and sheet_name == "2024-03" and data_row == 5:
                    rate = None
                    bad.append(Bad(data_row, reasons.NOT_NULL, "rate", sheet_name))
                else:
                    for c, v in zip(spec.primary_key, (day, base_ccy, quote_ccy), strict=True):
                        keys[c].append(v)
                sheet.append([day, base_ccy, quote_ccy, rate])
                sheet.cell(row=data_row + 1, column=1).number_format = "yyyy-mm-dd"
            if not opts.clean and sheet_name == "2024-02" and day.day == 10:
                data_row += 1
                sheet.append([day, "EUR", "XAU", 0.000452])
                sheet.cell(row=data_row + 1, column=1).number_format = "yyyy-mm-dd"
                bad.append(Bad(data_row, reasons.ACCEPTED_VALUES, "quote_currency", sheet_name))
            day += dt.timedelta(days=1)
        rows += data_row
    rel = "exchange_rates/exchange_rates.xlsx"
    (out / "exchange_rates").mkdir(parents=True, exist_ok=True)
    workbook.properties.created = workbook.properties.modified = WRITER_TIME.replace(tzinfo=None)
    workbook.save(out / rel)
    fixed_workbook(out / rel)
    ledger.add_file(rel, "exchange_rates", rows, bad,
                    pa.table({c: pa.array(v) for c, v in keys.items()}))


HEX_BYTES = [f"{i:02x}" for i in range(256)]
EVENT_FILE_DAYS = ((0, 3), (3, 5), (5, ORDER_DAYS))
"""Event files cover these day ranges of the order week (late arrivals land in a later file)."""


def hex_text(rng: Rng, n: int, groups: Sequence[int]) -> pa.StringArray:
    """Random lowercase hex strings made of `groups` of bytes joined by `-`."""
    parts = [pc.binary_join_element_wise(*[rng.choice(n, HEX_BYTES) for _ in range(g)], "") for g in groups]
    return pc.binary_join_element_wise(*parts, "-") if len(parts) > 1 else parts[0]


def json_string(values: pa.Array) -> pa.StringArray:
    """Text values (free of quotes and backslashes) as JSON strings, nulls as `null`."""
    return pc.fill_null(pc.binary_join_element_wise('"', values, '"', ""), "null")


def event_lines(rng: Rng, n: int, opts: Options) -> pa.Table:
    """Valid JSON Lines events with their file index and delivery order key."""
    ts = rng.integers(n, START, START + ORDER_DAYS * DAY)
    millis = rng.integers(n, 0, 1000)
    event_type = rng.choice(n, ("page_view", "search", "add_to_cart", "checkout", "purchase", "login"))
    customer = with_nulls(text(rng.integers(n, 1, opts.rows("customers") + 1)), rng.mask(n, 0.3))
    properties = pc.binary_join_element_wise(
        '{"page":"/products/', text(rng.integers(n, 1, opts.rows("products") + 1)),
        '","query":', json_string(with_nulls(rng.choice(n, ("café crème", "usb-c cable", "lego")), rng.mask(n, 0.6))),
        ',"device":{"os":"', rng.choice(n, ("ios", "android", "windows", "macos")),
        '","app_version":"', rng.choice(n, ("5.2.1", "5.3.0", "6.0.0")),
        '"},"tags":[', rng.choice(n, ('"promo"', '"promo","new"', "")), "]}", "")
    line = pc.binary_join_element_wise(
        '{"event_id":"', hex_text(rng, n, (4, 2, 2, 2, 6)),
        '","event_ts":"', iso_text(rng, ts, millis),
        '","event_type":"', event_type,
        '","channel":"', rng.choice(n, ("web", "app")),
        '","customer_id":', pc.fill_null(customer, "null"),
        ',"session_id":"s-', hex_text(rng, n, (4,)),
        '","properties":', with_nulls(properties, rng.mask(n, 0.05)).fill_null("null"), "}", "")
    day = pc.divide(pc.subtract(ts, START), DAY)
    file_index = pc.add(pc.add(pc.cast(pc.greater_equal(day, EVENT_FILE_DAYS[1][0]), pa.int64()),
                               pc.cast(pc.greater_equal(day, EVENT_FILE_DAYS[2][0]), pa.int64())), 0)
    late = pc.and_(rng.mask(n, 0.03), pc.less(file_index, 2))
    file_index = pc.add(file_index, pc.cast(late, pa.int64()))
    deliver = pc.add(ts, rng.integers(n, 0, 600))
    return pa.table({"line": line, "file": file_index, "deliver": deliver})


def events(out: Path, opts: Options, ledger: Ledger) -> None:
    """Three JSON Lines files: nested properties, out-of-order timestamps, repeated deliveries and bad lines."""
    rng = Rng(opts.seed, "events")
    table = event_lines(rng, opts.rows("events"), opts)
    n = table.num_rows
    again = table.filter(rng.mask(n, 0.02))
    later = pc.min_element_wise(pc.add(again["file"], rng.integers(again.num_rows, 0, 2)), 2)
    again = pa.table({"line": again["line"], "file": later, "deliver": pc.add(again["deliver"], rng.integers(again.num_rows, 60, DAY))})
    table = pa.concat_tables([table, again])
    plants = {} if opts.clean else planted_events(rng)
    (out / "events").mkdir(parents=True, exist_ok=True)
    for index in range(3):
        rel = f"events/events_{index + 1}.jsonl"
        part = table.filter(pc.equal(table["file"], index))
        lines = part["line"].combine_chunks().take(pc.sort_indices(part, [("deliver", "ascending"), ("line", "ascending")]))
        bad = []
        blanks = 0
        for wanted, (line, code, column) in sorted(plants.get(index, {}).items()):
            pos = min(wanted, len(lines))
            lines = pa.concat_arrays([lines[:pos], pa.array([line]), lines[pos:]])
            if code is None:
                blanks += 1
            else:
                bad.append(Bad(pos + 1, code, column))
        (out / rel).write_bytes(concat_bytes(pc.binary_join_element_wise(lines, "\n", "")))
        ledger.add_file(rel, "events", len(lines) - blanks, bad)


def planted_events(rng: Rng) -> dict[int, dict[int, tuple[str, str | None, str | None]]]:
    """Bad and blank lines: file index -> 0-based line -> (line, reason or None for a blank line, column)."""
    ids = hex_text(rng, 6, (4, 2, 2, 2, 6)).to_pylist()

    def event(i: int, **changes: Any) -> str:
        record = {"event_id": ids[i], "event_ts": "2024-03-01T12:00:00.000+02:00", "event_type": "page_view",
                  "channel": "web", "customer_id": 7, "session_id": "s-0badc0de", "properties": {"page": "/"}}
        return json.dumps({**record, **changes}, ensure_ascii=False, separators=(",", ":"))

    return {
        0: {
            4: (event(0)[:40], reasons.INVALID_JSON, None),
            8: (event(1, properties={"score": float("nan")}), reasons.INVALID_JSON, None),
            12: ("[1,2,3]", reasons.NOT_AN_OBJECT, None),
            16: (event(2, event_type="teleport"), reasons.ACCEPTED_VALUES, "event_type"),
            20: (event(3, customer_id="abc"), reasons.TYPE_MISMATCH, "customer_id"),
            24: ("", None, None),
        },
        1: {
            3: (event(4, event_ts="yesterday"), reasons.TYPE_MISMATCH, "event_ts"),
            7: (event(5, channel="store"), reasons.ACCEPTED_VALUES, "channel"),
        },
    }


def sensors(out: Path, opts: Options, ledger: Ledger) -> None:
    """Sensor readings as CSV and Parquet, one CSV without the metric column and an unsupported text file.

    Each store has one sensor per metric, and each sensor reports once per polling round at its own phase within the
    round, so `(sensor_id, reading_ts)` is unique across all files. The CSV holds the first rounds, the Parquet file
    the rounds after it, each sorted by time.
    """
    spec, rng = SPECS["sensors"], Rng(opts.seed, "sensors")
    names = spec.schema.names
    n_csv, n_parquet = opts.rows("sensors_csv"), opts.rows("sensors_parquet")
    fleet = SENSORS_PER_STORE * opts.rows("stores")
    rounds = -(-(n_csv + n_parquet) // fleet)
    interval = ORDER_DAYS * DAY // rounds
    if interval < 1:
        raise ValueError(f"scale {opts.scale:g} needs {rounds} sensor readings per sensor in {ORDER_DAYS} days: "
                         "more than one per second")
    phase = rng.integers(fleet, 0, interval)

    def readings(n: int, first_slot: int) -> pa.Table:
        slot = arange(n, first_slot)
        polling_round = pc.divide(slot, fleet)
        sensor = pc.subtract(slot, pc.multiply(polling_round, fleet))
        metric = pc.subtract(sensor, pc.multiply(pc.divide(sensor, SENSORS_PER_STORE), SENSORS_PER_STORE))
        low = pc.take(pa.array([-5.0, 20.0, 0.0, 0.0]), metric)
        span = pc.take(pa.array([40.0, 60.0, 50.0, 500.0]), metric)
        table = pa.table({
            "sensor_id": pc.binary_join_element_wise("SN-", pc.utf8_lpad(text(pc.add(sensor, 1)), 5, "0"), ""),
            "store_id": pc.add(pc.divide(sensor, SENSORS_PER_STORE), 1),
            "reading_ts": pc.add(pc.add(pc.take(phase, sensor), pc.multiply(polling_round, interval)), START),
            "metric": pc.take(pa.array(SENSOR_METRICS), metric),
            "value": pc.round(pc.add(low, pc.multiply(rng.uniform(n), span)), 2),
            "battery_pct": with_nulls(pc.cast(rng.integers(n, 5, 101), pa.int32()), rng.mask(n, 0.1)),
        })
        return table.take(pc.sort_indices(table, [("reading_ts", "ascending"), ("sensor_id", "ascending")]))

    def with_timestamps(table: pa.Table) -> pa.Table:
        return table.set_column(2, "reading_ts", utc_us(table["reading_ts"].combine_chunks()))

    first = readings(n_csv, 0)
    cols = {c: text(first[c].combine_chunks()) for c in names}
    cols["reading_ts"] = iso_text(rng, first["reading_ts"].combine_chunks())
    bad = []
    if not opts.clean:
        cols["value"] = set_at(cols["value"], {10: "abc", 14: "1000000000"})
        bad += [Bad(11, reasons.TYPE_MISMATCH, "value"), Bad(15, reasons.OUT_OF_RANGE, "value")]
    fields = csv_fields(spec, cols)
    lines = csv_lines(fields)
    if not opts.clean:
        lines = set_at(lines, {2: lines[2].as_py() + ",42", 6: csv_lines([f[6:7] for f in fields[:4]])[0].as_py()})
        bad += [Bad(3, reasons.TOO_MANY_COLUMNS), Bad(7, reasons.TOO_FEW_COLUMNS)]
    write_csv(out / "sensors/sensors_1.csv", names, lines)
    ledger.add_file("sensors/sensors_1.csv", "sensors", len(lines), bad,
                    valid_keys(spec, with_timestamps(first), [b.row or 0 for b in bad]))

    if not opts.clean:
        no_metric = [c for c in names if c != "metric"]
        write_csv(out / "sensors/sensors_2.csv", no_metric, csv_lines(csv_fields(spec, {c: v[20:40] for c, v in cols.items()}, no_metric)))
        ledger.file_rejected("sensors/sensors_2.csv", "sensors", reasons.MISSING_REQUIRED_COLUMN)
        (out / "sensors/readings.txt").write_text("SN-00001 2024-03-01T10:00:00Z temperature_c 21.5\n")
        ledger.file_rejected("sensors/readings.txt", "sensors", reasons.UNSUPPORTED_FILE)

    third = with_timestamps(readings(n_parquet, n_csv))
    bad = []
    if not opts.clean:
        third = third.set_column(0, "sensor_id", set_at(third["sensor_id"].combine_chunks(), {3: "SN-12"}))
        third = third.set_column(5, "battery_pct", set_at(third["battery_pct"].combine_chunks(), {7: 150}))
        bad = [Bad(4, reasons.PATTERN_MISMATCH, "sensor_id"), Bad(8, reasons.OUT_OF_RANGE, "battery_pct")]
    pq.write_table(third.cast(file_schema(spec)), out / "sensors/sensors_3.parquet")
    ledger.add_file("sensors/sensors_3.parquet", "sensors", third.num_rows, bad,
                    valid_keys(spec, third, [b.row or 0 for b in bad]))


GENERATORS = {
    "customers": customers, "products": products, "stores": stores, "orders": orders, "order_items": order_items,
    "returns": returns, "exchange_rates": exchange_rates, "events": events, "sensors": sensors,
}


CHAOS_FILE = "_chaos.json"
PLAN_FILE = "plan.json"
ROW_REASONS = ("TYPE_MISMATCH", "NOT_NULL", "ACCEPTED_VALUES", "OUT_OF_RANGE", "PATTERN_MISMATCH", "TOO_MANY_COLUMNS",
               "TOO_FEW_COLUMNS", "INVALID_JSON", "NOT_AN_OBJECT", "DUPLICATE_KEY")
"""Reason codes planted per record: each record gets one with the rate `--dirty` gives it (`DUPLICATE_KEY`: a copy of
the record with the same key and sequence value but other content is added to the delivery)."""
FILE_REASONS = ("FILE_UNREADABLE", "FILE_ENCODING", "MISSING_REQUIRED_COLUMN", "UNSUPPORTED_FILE", "MALFORMED_ROW")
"""Reason codes planted per file (`UNSUPPORTED_FILE`: a stray file per table and round; `MALFORMED_ROW`: a CSV whose
last record opens a quote that is never closed)."""


def round_dir(out: str | Path, number: int) -> Path:
    """The folder of delivery round `number` (1-based) in a `--deliveries` output."""
    return Path(out) / f"round_{number:03d}"


@dataclass(frozen=True)
class ChaosTable:
    """A table as the README's resources table documents it: what a delivery's ground truth needs to know.

    Declared here, not read from the package's registry, so that the truth never follows the code it checks
    (`tests/test_generate_raw_data.py` compares the two)."""

    name: str
    contract: pa.Schema
    formats: tuple[str, ...]
    key: tuple[str, ...]
    sequence: str | None
    merge: bool
    derived: tuple[str, ...] = ()

    @property
    def version(self) -> list[str]:
        """Columns that tell versions of a key apart within one load (`DUPLICATE_KEY`)."""
        return [*self.key, *([self.sequence] if self.sequence else [])]

    @property
    def typed(self) -> pa.Schema:
        """The contract's columns and types, every one nullable and without checks (intended rows, planted nulls)."""
        return pa.schema([pa.field(f.name, f.type) for f in self.contract])

    @property
    def truth_schema(self) -> pa.Schema:
        """The columns every sink of the table is compared on."""
        derived = [pa.field(d, DERIVED_TYPES[d]) for d in self.derived]
        return pa.schema([*self.typed, *derived, pa.field("_rescued_data", pa.string()),
                          pa.field("src_filename", pa.string()), pa.field("src_row_number", pa.int64()),
                          pa.field("src_row_hash", pa.string()), pa.field("_round", pa.int32())])


DERIVED_TYPES: Mapping[str, pa.DataType] = {"event_date": pa.date32(), "reading_month": pa.string()}
CHAOS_TABLES: Mapping[str, ChaosTable] = {t.name: t for t in (
    ChaosTable("orders", ORDERS, ("csv",), ("order_id",), "updated_at", merge=True),
    ChaosTable("order_items", ORDER_ITEMS, ("parquet",), ("order_id", "line_no"), "updated_at", merge=True),
    ChaosTable("events", EVENTS, ("jsonl",), ("event_id",), None, merge=False, derived=("event_date",)),
    ChaosTable("sensors", SENSORS, ("csv", "parquet"), ("sensor_id", "reading_ts"), None, merge=False,
               derived=("reading_month",)),
)}
"""The tables a delivery covers: a merge table in CSV and one in Parquet (composite key), an append table in JSON
Lines and one in CSV and Parquet together."""
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}


@dataclass(frozen=True)
class Knobs:
    """How hostile the deliveries are. Rates are probabilities per record, per file or per round as noted."""

    rows: int = 40
    """Records per new file at scale 1 (each file draws 0.5x to 1.5x of it); `--scale` multiplies it."""
    duplicate_rate: float = 0.03
    """Per record: an exact copy of a record delivered before (or in this round) is delivered too."""
    out_of_order: float = 0.5
    """Per new file: its records are shuffled instead of sorted by time, and its name sorts before older files."""
    update_rate: float = 0.15
    """Per key of a merge table, per round: a newer version is delivered."""
    late_rate: float = 0.05
    """Per key of a merge table, per round: a version older than the newest one delivered so far is delivered."""
    redeliver_rate: float = 0.1
    """Per file delivered before, per round: the same bytes are delivered again (a new modification time)."""
    change_rate: float = 0.1
    """Per file delivered before, per round: other content is delivered under the same name."""
    keep_mtime_rate: float = 0.0
    """Per changed CSV or JSON Lines file: the change keeps the file's size and modification time (a digit edited,
    then copied with `cp -p` or `rsync -t`)."""
    drift_rate: float = 0.15
    """Per new or changed file: added, missing (optional), retyped or reordered columns."""
    sparse_keys: float = 0.0
    """JSON Lines files with added columns: each added key is left out of this share of the records."""
    dirty: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys((*ROW_REASONS, *FILE_REASONS), 0.01))
    """Reason code -> rate: per record for `ROW_REASONS`, per file for `FILE_REASONS` (per table and round for
    `UNSUPPORTED_FILE`)."""

    def __post_init__(self) -> None:
        rates = {name: getattr(self, name) for name in ("duplicate_rate", "out_of_order", "update_rate", "late_rate",
                                                        "redeliver_rate", "change_rate", "keep_mtime_rate",
                                                        "drift_rate", "sparse_keys")}
        rates.update(self.dirty)
        wrong = {k: v for k, v in rates.items() if not 0 <= v <= 1}
        if wrong or self.rows < 1:
            raise ValueError(f"rates must be within [0, 1] and rows at least 1: {wrong or {'rows': self.rows}}")
        unknown = set(self.dirty) - set(ROW_REASONS) - set(FILE_REASONS)
        if unknown:
            raise ValueError(f"unknown reason code(s) {', '.join(sorted(unknown))} in the dirty rates; "
                             f"known: {', '.join((*ROW_REASONS, *FILE_REASONS))}")

    def rate(self, code: str) -> float:
        return self.dirty.get(code, 0.0)

    def document(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dirty"},
                "dirty": dict(sorted(self.dirty.items()))}


def random_knobs(seed: int) -> Knobs:
    """Knobs drawn from `seed`: each property-test seed explores another mix of hostility."""
    draw = random.Random(f"chaos-knobs/{seed}")
    low, high = draw.choice([(0.0, 0.0), (0.005, 0.02), (0.02, 0.08)])
    return Knobs(
        rows=draw.choice([10, 25, 40]),
        duplicate_rate=draw.choice([0.0, 0.03, 0.15]),
        out_of_order=draw.choice([0.0, 0.5, 1.0]),
        update_rate=draw.choice([0.05, 0.2, 0.5]),
        late_rate=draw.choice([0.0, 0.05, 0.25]),
        redeliver_rate=draw.choice([0.0, 0.1, 0.3]),
        change_rate=draw.choice([0.0, 0.15, 0.4]),
        drift_rate=draw.choice([0.0, 0.2, 0.6]),
        dirty={**{code: draw.choice([0.0, low, high]) for code in ROW_REASONS},
               **{code: draw.choice([0.0, 4 * high]) for code in FILE_REASONS}},
    )


def parse_dirty(text: str) -> dict[str, float]:
    """`CODE=RATE,CODE=RATE` as a mapping."""
    rates = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        code, _, rate = item.partition("=")
        try:
            rates[code.strip().upper()] = float(rate)
        except ValueError:
            raise ValueError(f"--dirty takes CODE=RATE pairs, got {item!r}") from None
    return rates


def _micros(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.int64())


def _mod(values: pa.Array, m: int) -> pa.Array:
    return pc.subtract(values, pc.multiply(pc.divide(values, m), m))


def _iso(micros: pa.Array, with_millis: bool) -> pa.StringArray:
    """ISO 8601 text of UTC microsecond instants in one of `OFFSETS`, chosen by the instant itself: equal values are
    equal text, so an exact copy of a record is the same bytes."""
    seconds = pc.divide(micros, 1_000_000)
    which = _mod(pc.divide(seconds, 7), len(OFFSETS))
    local = pc.add(seconds, pc.take(pa.array([m * 60 for _, m in OFFSETS], pa.int64()), which))
    if with_millis:
        millis = pc.divide(_mod(micros, 1_000_000), 1000)
        stamp = pc.cast(pc.add(pc.multiply(local, 1000), millis), pa.timestamp("ms"))
    else:
        stamp = pc.cast(local, pa.timestamp("s"))
    # Arrow writes `YYYY-MM-DD HH:MM:SS[.fff]`: the date and time part at a fixed position.
    text = pc.binary_replace_slice(pc.cast(stamp, pa.string()), 10, 11, "T")
    return pc.binary_join_element_wise(text, pc.take(pa.array([s for s, _ in OFFSETS]), which), "")


def _blend(rng: Rng, old: pa.Table, fresh: pa.Table, keep: Sequence[tuple[Sequence[str], float]]) -> pa.Table:
    """`fresh` with the columns of each group taken from `old` (rows chosen with the group's probability)."""
    for columns, probability in keep:
        mask = rng.mask(old.num_rows, probability)
        for name in columns:
            i = fresh.schema.get_field_index(name)
            fresh = fresh.set_column(i, fresh.field(i), pc.if_else(mask, old[name], fresh[name]))
    return fresh


def _money(cents: pa.Array) -> pa.Array:
    """Integer cents as the contract's money type, built from the integers themselves (a decimal is its unscaled
    integer), without a detour through text."""
    values = np.asarray(as_array(cents), dtype=np.int64)
    words = np.empty((len(values), 2), dtype=np.int64)
    words[:, 0], words[:, 1] = values, np.where(values < 0, -1, 0)
    return pa.Array.from_buffers(MONEY, len(values), [None, pa.py_buffer(words.tobytes())])


EMAILS = pa.array([f"customer{i}@example.com" for i in range(1, 501)])
PROPERTIES = pa.array([f'{{"page":"/products/{page}","device":{{"os":"{os_}"}},"tags":[{tags}]}}'
                       for page in range(1, 201) for os_ in ("ios", "android", "windows", "macos")
                       for tags in ('"promo"', '"promo","new"', "")])
SESSIONS = pa.array([f"s-{i}" for i in range(10_000, 100_000)])
NOTE_TEXTS = pa.array(NOTES)
DISCOUNTS = pa.array([Decimal(d) for d in ("5.00", "10.00", "15.00", "25.00")], pa.decimal128(5, 2))
"""Values a delivery draws from rather than builds row by row: e-mail addresses of the 500 customers, event properties
(page, device, tags), session ids, order notes and discounts."""


def pick(values: pa.Array, indices: pa.Array, nulls: pa.BooleanArray) -> pa.Array:
    """`values` at `indices`, null where `nulls` is true (the nulls are set on the indices: values are copied once)."""
    return pc.take(values, with_nulls(indices, nulls))


def _orders_rows(rng: Rng, keys: pa.Table, when: pa.Array) -> pa.Table:
    n = keys.num_rows
    placed = pc.subtract(when, rng.integers(n, 0, 6 * 3600))
    customer = rng.integers(n, 1, 501)
    return pa.table({
        "order_id": keys["order_id"], "customer_id": customer, "store_id": rng.integers(n, 1, 41),
        "order_ts": utc_us(placed), "order_dt": pc.cast(pc.cast(placed, pa.timestamp("s")), pa.date32()),
        "status": rng.choice(n, ("placed", "paid", "shipped", "delivered", "cancelled")),
        "channel": rng.choice(n, ("web", "app", "store")), "currency": rng.choice(n, ORDER_CURRENCIES),
        "total_amount": _money(rng.integers(n, 100, 50_000)),
        "customer_email": pick(EMAILS, pc.subtract(customer, 1), rng.mask(n, 0.1)),
        "note": pick(NOTE_TEXTS, rng.integers(n, 0, len(NOTES)), rng.mask(n, 0.85)),
        "updated_at": utc_us(when),
    }, schema=CHAOS_TABLES["orders"].typed)


def _order_items_rows(rng: Rng, keys: pa.Table, when: pa.Array) -> pa.Table:
    n = keys.num_rows
    return pa.table({
        "order_id": keys["order_id"], "line_no": keys["line_no"], "product_id": rng.integers(n, 1, 201),
        "quantity": pc.cast(rng.integers(n, 1, 6), pa.int32()), "unit_price": _money(rng.integers(n, 50, 20_000)),
        "discount_pct": pick(DISCOUNTS, rng.integers(n, 0, len(DISCOUNTS)), rng.mask(n, 0.6)),
        "updated_at": utc_us(when),
    }, schema=CHAOS_TABLES["order_items"].typed)


def _events_rows(rng: Rng, keys: pa.Table, when: pa.Array) -> pa.Table:
    n = keys.num_rows
    properties = rng.integers(n, 0, len(PROPERTIES))
    return pa.table({
        "event_id": keys["event_id"],
        "event_ts": pc.cast(pc.add(pc.multiply(when, 1_000_000), pc.multiply(rng.integers(n, 0, 1000), 1000)),
                            pa.timestamp("us", tz="UTC")),
        "event_type": rng.choice(n, ("page_view", "search", "add_to_cart", "checkout", "purchase", "login")),
        "channel": rng.choice(n, ("web", "app")),
        "customer_id": with_nulls(rng.integers(n, 1, 501), rng.mask(n, 0.3)),
        "session_id": pc.take(SESSIONS, rng.integers(n, 0, len(SESSIONS))),
        "properties": pick(PROPERTIES, properties, rng.mask(n, 0.05)),
    }, schema=CHAOS_TABLES["events"].typed)


CHAOS_STORES = 10
"""Sensor fleet of a delivery: `SENSORS_PER_STORE` sensors in each of these stores (it does not scale)."""


def _sensors_rows(rng: Rng, keys: pa.Table, when: pa.Array) -> pa.Table:
    n = keys.num_rows
    sensor = pc.subtract(pc.cast(pc.utf8_slice_codeunits(keys["sensor_id"], 3), pa.int64()), 1)
    metric = _mod(sensor, SENSORS_PER_STORE)
    low = pc.take(pa.array([-5.0, 20.0, 0.0, 0.0]), metric)
    span = pc.take(pa.array([40.0, 60.0, 50.0, 500.0]), metric)
    return pa.table({
        "sensor_id": keys["sensor_id"], "store_id": pc.add(pc.divide(sensor, SENSORS_PER_STORE), 1),
        "reading_ts": keys["reading_ts"], "metric": pc.take(pa.array(SENSOR_METRICS), metric),
        "value": pc.round(pc.add(low, pc.multiply(rng.uniform(n), span)), 2),
        "battery_pct": with_nulls(pc.cast(rng.integers(n, 5, 101), pa.int32()), rng.mask(n, 0.1)),
    }, schema=CHAOS_TABLES["sensors"].typed)


def _next_digit(values: pa.Array) -> pa.Array:
    """Integers changed in their last digit only (9 goes down, every other digit up): the text keeps its length."""
    nine = pc.equal(_mod(values, 10), 9)
    return pc.if_else(nine, pc.subtract(values, 1), pc.add(values, 1))


@dataclass(frozen=True)
class Maker:
    """How one table's intended rows are made: content for given keys at given times, a newer version, a conflicting
    copy (same key and sequence value, other content) and a same-length edit (`keep_mtime_rate`)."""

    rows: Callable[[Rng, pa.Table, pa.Array], pa.Table]
    kept_on_update: tuple[tuple[tuple[str, ...], float], ...]
    conflict_column: str
    same_length_column: str | None

    def conflict(self, rows: pa.Table) -> pa.Table:
        column = self.conflict_column
        values = rows[column]
        if pa.types.is_decimal(values.type):
            changed = pc.cast(pc.add(values, pa.scalar(Decimal("1.00"), values.type)), values.type)
        elif pa.types.is_string(values.type):
            changed = pc.binary_join_element_wise(values, "x", "")
        elif pa.types.is_floating(values.type):
            changed = pc.add(values, 1.0)
        else:
            changed = pc.cast(pc.add(values, 1), values.type)
        return rows.set_column(rows.schema.get_field_index(column), rows.field(column), changed)


MAKERS: Mapping[str, Maker] = {
    "orders": Maker(_orders_rows, ((("customer_id", "store_id", "currency", "customer_email", "channel"), 1.0),
                                   (("order_ts", "order_dt"), 0.8), (("total_amount", "note"), 0.6)),
                    "total_amount", "store_id"),
    "order_items": Maker(_order_items_rows, ((("product_id",), 1.0), (("unit_price",), 0.8),
                                             (("quantity", "discount_pct"), 0.5)), "quantity", None),
    "events": Maker(_events_rows, ((("event_ts", "channel", "customer_id", "session_id"), 1.0),), "session_id",
                    "customer_id"),
    "sensors": Maker(_sensors_rows, ((("store_id", "metric"), 1.0),), "value", "store_id"),
}

TEXT_RECIPES: Mapping[str, Mapping[str, tuple[tuple[str, str], ...]]] = {
    "orders": {
        "TYPE_MISMATCH": (("total_amount", "12.3.4"), ("order_ts", "yesterday"), ("store_id", "7.5"),
                          ("order_dt", "2024-02-30")),
        "NOT_NULL": (("customer_id", ""), ("status", ""), ("updated_at", "")),
        "ACCEPTED_VALUES": (("status", "lost"), ("channel", "fax")),
        "OUT_OF_RANGE": (("total_amount", "1000000.01"), ("store_id", "0"), ("customer_id", "-3")),
        "PATTERN_MISMATCH": (("currency", "eur"), ("customer_email", "not-an-email")),
    },
    "sensors": {
        "TYPE_MISMATCH": (("value", "abc"), ("reading_ts", "2024-13-45T00:00:00Z"), ("battery_pct", "9.5")),
        "NOT_NULL": (("metric", ""), ("store_id", "")),
        "ACCEPTED_VALUES": (("metric", "wind_speed"),),
        "OUT_OF_RANGE": (("value", "1000000000"), ("battery_pct", "150"), ("value", "-61")),
        "PATTERN_MISMATCH": (("sensor_id", "SN-12"),),
    },
    "events": {
        "TYPE_MISMATCH": (("event_ts", '"yesterday"'), ("customer_id", '"abc"'), ("customer_id", "1.5"),
                          ("properties", '"{not json"')),
        "NOT_NULL": (("session_id", "null"), ("event_type", '""')),
        "ACCEPTED_VALUES": (("event_type", '"teleport"'), ("channel", '"store"')),
        "OUT_OF_RANGE": (("customer_id", "0"),),
        "PATTERN_MISMATCH": (("event_id", '"not-a-uuid"'),),
    },
}
"""Contract violations of text formats: column and the text that fails exactly one check of it (JSON Lines: the
value as JSON)."""
TYPED_RECIPES: Mapping[str, Mapping[str, tuple[tuple[str, Any], ...]]] = {
    "order_items": {
        "TYPE_MISMATCH": (("quantity", "2.5"), ("quantity", "many")),
        "NOT_NULL": (("product_id", None), ("unit_price", None)),
        "OUT_OF_RANGE": (("quantity", 0), ("quantity", 5000), ("line_no", 1000), ("unit_price", Decimal("-1.00")),
                         ("discount_pct", Decimal("150.00"))),
    },
    "sensors": {
        "TYPE_MISMATCH": (("value", "abc"),),
        "NOT_NULL": (("metric", None), ("store_id", None)),
        "ACCEPTED_VALUES": (("metric", "wind_speed"),),
        "OUT_OF_RANGE": (("value", 1e9), ("battery_pct", 150)),
        "PATTERN_MISMATCH": (("sensor_id", "SN-12"),),
    },
}
"""Contract violations of Parquet files: column and value (text values make the file store the column as text)."""
SPELLINGS: Mapping[tuple[str, str], Mapping[str, tuple[str, ...]]] = {
    ("orders", "csv"): {"total_amount": ("minimal",), "store_id": ("padded",), "customer_id": ("padded",),
                        "updated_at": ("space",)},
    ("sensors", "csv"): {"store_id": ("padded",), "value": ("trailing_zero",)},
    ("events", "jsonl"): {"customer_id": ("quoted",)},
    ("order_items", "parquet"): {"quantity": ("int64", "string"), "line_no": ("int64",), "product_id": ("int32",),
                                 "unit_price": ("decimal18_4",), "updated_at": ("ts_ms", "ts_naive", "ts_text")},
    ("sensors", "parquet"): {"store_id": ("int32",), "battery_pct": ("int64",), "reading_ts": ("ts_ms",),
                             "value": ("string",)},
}
"""Retyped columns (schema drift) whose values still convert exactly: other spellings in text formats (`12.3` for
`12.30`, `007`, a space for the `T`, `21.50`, a number as a JSON string) and other stored types in Parquet."""
EXTRA_COLUMNS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "orders": (("loyalty_flag", "text"), ("x_batch", "int")),
    "order_items": (("gift_wrap", "text"), ("x_batch", "int")),
    "events": (("x_experiment", "text"), ("x_batch", "int")),
    "sensors": (("firmware", "text"), ("x_batch", "int")),
}
"""Columns outside the contract that drift adds, with the kind of their values."""


@dataclass(frozen=True)
class Planted:
    """Contract violations planted in one column: at `rows` (0-based, ascending) the `values` written instead of the
    intended ones (text, JSON text or typed), the `cells` a reader gives for them (JSON Lines: the decoded JSON) and
    the reason `codes` they are rejected with."""

    rows: np.ndarray
    values: list[Any]
    cells: list[Any]
    codes: list[str]


@dataclass
class FileSpec:
    """How one file version writes its intended rows: format, columns, drift and every planted fault."""

    fmt: str
    columns: list[str]
    """Written columns in file order: contract columns (the dropped ones left out) and added ones."""
    extras: dict[str, str] = field(default_factory=dict)
    """Added columns and the kind of their values (`text` or `int`, see `_extra_values`)."""
    spelling: dict[str, str] = field(default_factory=dict)
    bad: dict[str, Planted] = field(default_factory=dict)
    """Contract violations by column."""
    parse: dict[int, str] = field(default_factory=dict)
    """Records written so that they cannot be parsed: 0-based record -> reason code."""
    blanks: list[int] = field(default_factory=list)
    """JSON Lines: a blank line goes before each of these records (the numbering counts it)."""
    eol: str = "\n"
    bom: bool = False
    omit_nulls: bool = False
    """JSON Lines: null values are left out instead of written as `null`."""
    file_level: str | None = None
    """`FILE_UNREADABLE`, `FILE_ENCODING` or `MISSING_REQUIRED_COLUMN`: the file is rejected as a whole (JSON Lines:
    a required key missing from every record is a `NOT_NULL` reject per record)."""
    missing_required: str | None = None
    sparse_keys: float = 0.0
    """JSON Lines: the share of records each added key is left out of."""
    unterminated_tail: bool = False
    row_group_size: int = 64


@dataclass
class FileVersion:
    """One version of one file: its bytes and what the documented semantics make of it."""

    table: str
    path: str
    data: bytes
    file_reject: str | None
    rows: pa.Table
    """Every data record: `src_row_number`, `_valid`, the contract columns as loaded, `_canonical` (the form
    `src_row_hash` hashes) and `_rescued_data`."""
    rejects: pa.Table
    """Row-level reject records: `src_row_number`, `reason_code`, `column_name`."""
    row_count: int
    extra_columns: str | None
    intent: pa.Table
    """The rows this version meant to deliver, before faults: what a later change of the file starts from."""
    spec: FileSpec | None
    added: dict[str, pa.Array] = field(default_factory=dict)
    """The columns outside the contract as a schema-evolving load adds them, per record: text (empty text missing)
    or the stored type."""

    @property
    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


NO_ROWS = pa.table({"src_row_number": pa.array([], pa.int64())})
"""The records of a file written without its truth (`--fast`) or rejected as a whole."""
ROW_REJECTS = pa.schema([pa.field("src_row_number", pa.int64()), pa.field("reason_code", pa.string()),
                         pa.field("column_name", pa.string())])


def _draw_spec(table: ChaosTable, fmt: str, n: int, knobs: Knobs, rng: Rng) -> FileSpec:
    """Draw a file's drift and faults (per-record Python only over the records that get a fault)."""
    draw = rng.python()
    names = list(table.contract.names)
    spec = FileSpec(fmt=fmt, columns=list(names), eol=draw.choice(["\n", "\r\n"]), bom=fmt == "csv" and draw.random() < 0.1,
                    omit_nulls=draw.random() < 0.5,
                    row_group_size=draw.choice([16, 64, 128 * 1024]) if n <= SMALL_FILE_ROWS else 128 * 1024)
    optional = [f.name for f in table.contract if f.nullable]
    if n and draw.random() < knobs.drift_rate:
        kinds = draw.sample(["added", "missing", "retyped", "reordered"], draw.choice([1, 2]))
        if "missing" in kinds and optional:
            spec.columns = [c for c in spec.columns if c != draw.choice(optional)]
        if "retyped" in kinds:
            options = SPELLINGS.get((table.name, fmt), {})
            for column in draw.sample(sorted(options), min(len(options), draw.choice([1, 2]))):
                if column in spec.columns:
                    spec.spelling[column] = draw.choice(options[column])
        if "added" in kinds:
            for name, kind in draw.sample(EXTRA_COLUMNS[table.name], draw.choice([1, 2])):
                spec.extras[name] = kind
                spec.columns.append(name)
        if "reordered" in kinds or ("added" in kinds and draw.random() < 0.5):
            draw.shuffle(spec.columns)
    file_level = [c for c in ("FILE_UNREADABLE", "FILE_ENCODING", "MISSING_REQUIRED_COLUMN", "MALFORMED_ROW")
                  if draw.random() < knobs.rate(c)]
    file_level = [c for c in file_level if (c, fmt) in {("FILE_UNREADABLE", "parquet"), ("FILE_ENCODING", "csv"),
                                                       ("MALFORMED_ROW", "csv"), ("MISSING_REQUIRED_COLUMN", "csv"),
                                                       ("MISSING_REQUIRED_COLUMN", "parquet"),
                                                       ("MISSING_REQUIRED_COLUMN", "jsonl")}]
    if file_level and n:
        code = draw.choice(file_level)
        if code == "MALFORMED_ROW":
            spec.unterminated_tail = True
        elif code == "MISSING_REQUIRED_COLUMN":
            required = [c for c in spec.columns if c in names and c not in optional]
            spec.missing_required = draw.choice(required)
            spec.columns.remove(spec.missing_required)
            spec.file_level = None if fmt == "jsonl" else code
        else:
            spec.file_level = code
    if not n:
        return spec
    parse_codes = {"csv": ("TOO_MANY_COLUMNS", "TOO_FEW_COLUMNS"), "jsonl": ("INVALID_JSON", "NOT_AN_OBJECT")}
    for code in reversed(parse_codes.get(fmt, ())):
        spec.parse.update(dict.fromkeys(pc.indices_nonzero(rng.mask(n, knobs.rate(code))).to_pylist(), code))
    spec.bad = _planted(table, fmt, n, spec, knobs, rng)
    for column, planted in spec.bad.items():
        typed = table.contract.field(column).type
        if fmt == "parquet" and not pa.types.is_string(typed) and any(isinstance(v, str) for v in set(planted.values)):
            spec.spelling[column] = "string"
    if fmt == "jsonl" and draw.random() < 0.3:
        spec.blanks = sorted(draw.randrange(n + 1) for _ in range(draw.randint(1, 3)))
    if fmt == "jsonl":
        spec.sparse_keys = knobs.sparse_keys if spec.extras else 0.0
        # The first key of a line is one that is never left out (a required column, or an added one kept in all).
        first = next(i for i, c in enumerate(spec.columns)
                     if (c in spec.extras and not spec.sparse_keys) or (c in names and not table.contract.field(c).nullable))
        spec.columns.insert(0, spec.columns.pop(first))
    return spec


def _planted(table: ChaosTable, fmt: str, n: int, spec: FileSpec, knobs: Knobs, rng: Rng) -> dict[str, Planted]:
    """Draw the contract violations of a file: each record gets each reason with its rate, one recipe of the reason
    at random (a record keeps the first violation drawn for a column; unparseable records get none)."""
    recipes: Mapping[str, tuple[tuple[str, Any], ...]] = (
        TYPED_RECIPES if fmt == "parquet" else TEXT_RECIPES).get(table.name, {})
    unparsed = np.fromiter(spec.parse, np.int64, len(spec.parse))
    drawn: dict[str, list[tuple[np.ndarray, str, Any]]] = {}
    for code, choices in recipes.items():
        rows = np.asarray(pc.indices_nonzero(rng.mask(n, knobs.rate(code))), dtype=np.int64)
        usable = [r for r in choices if r[0] in spec.columns]
        if not usable or not len(rows):
            continue
        rows = rows[~np.isin(rows, unparsed)]
        which = np.asarray(rng.integers(len(rows), 0, len(usable))) if len(rows) else np.zeros(0, np.int64)
        for k, (column, value) in enumerate(usable):
            drawn.setdefault(column, []).append((rows[which == k], code, value))
    planted = {}
    for column, parts in drawn.items():
        rows = np.concatenate([p[0] for p in parts])
        part = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
        kept_rows, first = np.unique(rows, return_index=True)
        if not len(kept_rows):
            continue
        chosen = part[first]
        values = np.array([p[2] for p in parts] + [None], dtype=object)[:-1]
        cells = np.array([_cell_of(p[2], fmt) for p in parts] + [None], dtype=object)[:-1]
        codes = np.array([p[1] for p in parts], dtype=object)
        planted[column] = Planted(kept_rows.astype(np.int64), values[chosen].tolist(), cells[chosen].tolist(),
                                  codes[chosen].tolist())
    return planted


def _cell_of(value: Any, fmt: str) -> Any:
    """The text a reader gives for a planted value: JSON Lines values are JSON (strings unescaped, null missing,
    numbers as written); other formats' values are what is written."""
    if fmt != "jsonl":
        return value
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) or decoded is None else value


SMALL_FILE_ROWS = 5000
"""Parquet files up to this many rows get row groups of a random size (16 rows, 64, or 128k)."""
EXTRA_TEXT = ("yes", "no", "", "gold", "n/a")
BLANK_LINES = ("", " \t")
"""Blank lines of JSON Lines files: empty, or white space only."""


def _row_numbers_of(table: ChaosTable, intent: pa.Table) -> pa.Array:
    """A number per row that follows from its key, so that an exact copy of a record gets the same added values."""
    if table.name == "orders":
        return intent["order_id"]
    if table.name == "order_items":
        return pc.add(pc.multiply(intent["order_id"], 7), pc.cast(intent["line_no"], pa.int64()))
    if table.name == "events":
        return pc.cast(pc.replace_substring(pc.utf8_slice_codeunits(intent["event_id"], 9), "-", ""), pa.int64())
    return pc.add(pc.divide(_micros(intent["reading_ts"]), 1_000_000),
                  pc.cast(pc.utf8_slice_codeunits(intent["sensor_id"], 3), pa.int64()))


def _extra_values(number: pa.Array, name: str, kind: str, fmt: str, sparse: float = 0.0) -> pa.Array:
    """Values of an added column, a function of the row's number: short words (one empty) or integers; Parquet
    values are sometimes null; JSON Lines values are missing (the key left out) in a `sparse` share of the rows."""
    salt = sum(name.encode())
    mixed = _mod(pc.add(pc.multiply(as_array(number), 7919), salt), 10_007)
    if kind == "int":
        values = text(_mod(mixed, 1000)) if fmt != "parquet" else _mod(mixed, 1000)
    else:
        values = pc.take(pa.array(EXTRA_TEXT), _mod(mixed, len(EXTRA_TEXT)))
    if fmt == "parquet":
        return with_nulls(values, pc.equal(_mod(mixed, 5), 0))
    if sparse:
        left_out = pc.less(_mod(pc.add(pc.multiply(as_array(number), 104_729), salt), 1000), int(sparse * 1000))
        return with_nulls(values, left_out)
    return values


def _text_of(field_: pa.Field, values: pa.Array, spelling: str | None) -> pa.Array:
    """The text a CSV field or a JSON Lines value holds for typed values (nulls stay null)."""
    type_ = field_.type
    if pa.types.is_timestamp(type_):
        result = _iso(_micros(values), with_millis=field_.name == "event_ts")
        return pc.replace_substring(result, "T", " ", max_replacements=1) if spelling == "space" else result
    result = pc.cast(values, pa.string())
    if spelling == "minimal":
        return pc.replace_substring_regex(result, r"\.?0+$", "")
    if spelling == "trailing_zero":
        return pc.if_else(pc.match_substring(result, "."), pc.binary_join_element_wise(result, "0", ""),
                          pc.binary_join_element_wise(result, ".0", ""))
    if spelling == "padded":
        return pc.binary_join_element_wise("00", result, "")
    return result


def _json_quoted(field_: pa.Field, spelling: str | None) -> bool:
    """Whether a JSON Lines file writes the column's values as JSON strings (nested JSON and numbers are not)."""
    if field_.metadata and b"json" in field_.metadata:
        return False
    return spelling == "quoted" or pa.types.is_string(field_.type) or pa.types.is_timestamp(field_.type) \
        or pa.types.is_date(field_.type)


def _json_literal(field_: pa.Field, textual: pa.Array, spelling: str | None) -> pa.Array:
    """JSON text of values given as text: strings quoted (none needs escaping), numbers, booleans and nested JSON as
    they are."""
    return pc.binary_join_element_wise('"', textual, '"', "") if _json_quoted(field_, spelling) else textual


PARQUET_TYPES: Mapping[str, pa.DataType] = {
    "int64": pa.int64(), "int32": pa.int32(), "string": pa.string(), "decimal18_4": pa.decimal128(18, 4),
    "ts_ms": pa.timestamp("ms", tz="UTC"), "ts_naive": pa.timestamp("us"), "ts_text": pa.string(),
}


def _stored(field_: pa.Field, values: pa.Array, spelling: str | None) -> pa.Array:
    """Typed values as a Parquet file of this spelling stores them."""
    if spelling is None:
        return values
    if spelling == "ts_text":
        return _iso(_micros(values), with_millis=False)
    if spelling == "ts_naive":
        return pc.cast(_micros(values), pa.timestamp("us"))
    if spelling == "string" and pa.types.is_timestamp(field_.type):
        return _iso(_micros(values), with_millis=False)
    return pc.cast(values, PARQUET_TYPES[spelling])


def _with_planted(values: pa.Array, planted: Planted | None, *, cells: bool = False) -> pa.Array:
    """`values` with the planted values (or the cells a reader gives for them) at their records."""
    if planted is None:
        return values
    replacements = planted.cells if cells else planted.values
    if pa.types.is_string(values.type):
        replacements = [None if v is None else str(v) for v in replacements]
    return pc.replace_with_mask(values, _mask_at(len(values), planted.rows), pa.array(replacements, values.type))


def _with_bad(values: pa.Array, bad: Mapping[int, Any]) -> pa.Array:
    """`values` with planted values at their records (cast to the values' type)."""
    if not bad:
        return values
    ordered = sorted(bad.items())
    if pa.types.is_string(values.type):
        replacements = pa.array([None if v is None else str(v) for _, v in ordered], pa.string())
    else:
        replacements = pa.array([v for _, v in ordered], values.type)
    return pc.replace_with_mask(values, _mask_at(len(values), [p for p, _ in ordered]), replacements)


def _canonical(cells: Mapping[str, pa.Array], n: int) -> pa.Array:
    """The canonical form of each record (README, "Canonical form of `src_row_hash`") from its cells' text, null
    for a missing value."""
    parts = []
    for name in sorted(cells):
        values = cells[name]
        prefix = f"{len(name.encode())}:{name}="
        length = pc.cast(pc.binary_length(values), pa.string())
        parts.append(pc.fill_null(pc.binary_join_element_wise(prefix, length, ":", values, ";", ""), ""))
    return pc.binary_join_element_wise(*parts, "") if parts else pa.repeat(pa.scalar(""), n)


def _rescued(extras: Mapping[str, pa.Array], n: int, *, missing_is_absent: bool = False) -> pa.Array:
    """`_rescued_data` as JSON with sorted keys (values are text or null), null when the record has no columns outside
    the contract. With `missing_is_absent` (JSON Lines) a missing value is a key the record does not have."""
    if not extras:
        return pa.nulls(n, pa.string())
    pieces = []
    for name, values in sorted(extras.items()):
        quoted = pc.binary_join_element_wise('"', values, '"', "")
        pieces.append(pc.binary_join_element_wise(f',"{name}":', quoted if missing_is_absent
                                                  else pc.fill_null(quoted, "null"), ""))
    # Left-out pairs join as empty text ("skip" would drop rows whose pairs are all left out, pyarrow 26).
    joined = pc.binary_join_element_wise(*pieces, "", null_handling="replace", null_replacement="")
    rescued = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(pc.equal(joined, ""), pa.scalar(None, pa.string()), rescued)


def render(table: ChaosTable, path: str, intent: pa.Table, spec: FileSpec, *, truth: bool = True) -> FileVersion:
    """Write `intent` as `spec` says and derive what a load of the file must give, record by record (without
    `truth`, as `--fast` writes: only the bytes and the number of records)."""
    n = intent.num_rows
    contract = table.contract
    written = [c for c in spec.columns if c in contract.names]
    numbers = _row_numbers_of(table, intent) if spec.extras else None
    extras = {name: _extra_values(numbers, name, kind, spec.fmt, spec.sparse_keys) for name, kind in spec.extras.items()}
    cells: dict[str, pa.Array] = {}
    rescued_text: dict[str, pa.Array] = {}
    if spec.fmt == "parquet":
        stored = {}
        for name in spec.columns:
            if name in extras:
                stored[name] = extras[name]
            else:
                stored[name] = _with_planted(_stored(contract.field(name), as_array(intent[name]),
                                                     spec.spelling.get(name)), spec.bad.get(name))
        data_table = pa.table(stored) if stored else pa.table({"_": pa.nulls(n)}).select([])
        sink = io.BytesIO()
        pq.write_table(data_table, sink, row_group_size=spec.row_group_size)
        data = sink.getvalue()
        if truth:
            cells = {name: pc.cast(values, pa.string()) for name, values in stored.items()}
            rescued_text = {name: pc.cast(values, pa.string()) for name, values in extras.items()}
    elif spec.fmt == "csv" and not truth:
        data = _csv_fast(table, spec, intent, extras, n)
    else:
        if spec.fmt == "csv":
            data, cells = _csv_bytes(table, spec, _texts(table, spec, intent), extras, n)
        else:
            data, cells = _jsonl_bytes(table, spec, intent, extras, n, truth)
        rescued_text = extras
    if spec.file_level == "FILE_UNREADABLE":
        data = data[: len(data) // 2]
    elif spec.file_level == "FILE_ENCODING":
        data += "Zürich".encode("latin-1") + spec.eol.encode()
    row_count = n + int(spec.unterminated_tail)
    if not truth:
        return FileVersion(table.name, path, data, spec.file_level, NO_ROWS, ROW_REJECTS.empty_table(),
                           0 if spec.file_level else row_count, None, intent, spec)
    row_numbers = _line_numbers(n, spec.blanks) if spec.fmt == "jsonl" else arange(n, 1)
    planted = list(spec.bad.items())
    positions = pa.array(np.concatenate([p.rows for _, p in planted] + [np.fromiter(spec.parse, np.int64)]), pa.int64())
    codes = pa.array([c for _, p in planted for c in p.codes] + list(spec.parse.values()), pa.string())
    columns = pa.array([c for c, p in planted for _ in p.codes] + [None] * len(spec.parse), pa.string())
    if spec.missing_required and spec.fmt == "jsonl":
        every = pc.filter(arange(n), pc.invert(positions_mask(n, spec.parse)))
        positions = pa.concat_arrays([positions, every])
        codes = pa.concat_arrays([codes, pa.repeat(pa.scalar("NOT_NULL"), len(every))])
        columns = pa.concat_arrays([columns, pa.repeat(pa.scalar(spec.missing_required), len(every))])
    invalid = pc.is_in(arange(n), positions)
    typed = intent.select(contract.names)
    for name in contract.names:
        if name not in written:
            typed = typed.set_column(typed.schema.get_field_index(name), typed.field(name),
                                     pa.nulls(n, typed.field(name).type))
    parsed = pc.invert(positions_mask(n, spec.parse))
    rows = typed.add_column(0, "src_row_number", row_numbers).add_column(1, "_valid", pc.invert(invalid))
    missing = pa.scalar(None, pa.string())
    rows = rows.append_column("_canonical", pc.if_else(parsed, _canonical(cells, n), missing))
    jsonl = spec.fmt == "jsonl"
    # A JSON Lines column exists only where a record (that parses) has the key.
    seen = {name: values for name, values in rescued_text.items()
            if not jsonl or pc.any(pc.and_(pc.is_valid(values), parsed)).as_py()}
    rescued = _rescued(seen, n, missing_is_absent=jsonl)
    rows = rows.append_column("_rescued_data", pc.if_else(parsed, rescued, missing))
    reject_table = pa.table({"src_row_number": pc.take(row_numbers, positions), "reason_code": codes,
                             "column_name": columns}, schema=ROW_REJECTS)
    if spec.unterminated_tail:
        reject_table = pa.concat_tables([reject_table, pa.table({
            "src_row_number": [row_count], "reason_code": ["MALFORMED_ROW"], "column_name": [None]}, schema=ROW_REJECTS)])
    if spec.fmt == "jsonl":
        parsed_rows = pc.invert(positions_mask(n, spec.parse))
        present = sorted(name for name, values in extras.items()
                         if pc.any(pc.and_(pc.is_valid(values), parsed_rows)).as_py())
    else:
        present = sorted(extras)
    extra = ",".join(present) or None
    if spec.file_level is not None:
        return FileVersion(table.name, path, data, spec.file_level, rows.slice(0, 0), ROW_REJECTS.empty_table(), 0,
                           None, intent, spec)
    added = {name: pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
             if pa.types.is_string(values.type) else values for name, values in extras.items() if name in present}
    return FileVersion(table.name, path, data, None, rows, reject_table, row_count, extra, intent, spec, added)


def _texts(table: ChaosTable, spec: FileSpec, rows: pa.Table) -> dict[str, pa.Array]:
    """The text of the values of the contract columns a file writes (nulls stay null)."""
    return {name: _text_of(table.contract.field(name), as_array(rows[name]), spec.spelling.get(name))
            for name in spec.columns if name in table.contract.names}


def _csv_bytes(table: ChaosTable, spec: FileSpec, texts: Mapping[str, pa.Array], extras: Mapping[str, pa.Array],
               n: int) -> tuple[bytes, dict[str, pa.Array]]:
    body, cells = _csv_records(table, spec, texts, extras, n)
    header = ("\ufeff" if spec.bom else "") + ",".join(spec.columns) + spec.eol
    return b"".join([header.encode(), body, _unterminated(spec)]), cells


def _csv_records(table: ChaosTable, spec: FileSpec, texts: Mapping[str, pa.Array], extras: Mapping[str, pa.Array],
                 n: int) -> tuple[memoryview, dict[str, pa.Array]]:
    """The CSV records (no header) of the fields' text, with the planted values, and the text of each field."""
    cells = {}
    for name in spec.columns:
        values = extras[name] if name in extras else pc.fill_null(texts[name], "")
        cells[name] = _with_planted(values, spec.bad.get(name))
    # Only free text (no pattern, no accepted values) can hold a quote, delimiter or line break.
    free = {f.name for f in table.contract if pa.types.is_string(f.type) and not f.metadata}
    fields = [csv_field(cells[name], name in free) for name in spec.columns]
    lines = _joined(fields, ",", spec.eol, n)
    if spec.parse:
        # The unparseable records are rebuilt from their fields: one more field, or the last one left out.
        rows = np.array(sorted(spec.parse), np.int64)
        picked = [f.take(rows) for f in fields]
        too_many = pa.array([spec.parse[r] == "TOO_MANY_COLUMNS" for r in rows.tolist()], pa.bool_())
        rebuilt = pc.if_else(too_many, _joined([*picked, pa.repeat(pa.scalar("EXTRA"), len(rows))], ",", spec.eol,
                                               len(rows)), _joined(picked[:-1], ",", spec.eol, len(rows)))
        lines = pc.replace_with_mask(lines, _mask_at(n, rows), rebuilt)
    return _concatenated(lines), cells


def _unterminated(spec: FileSpec) -> bytes:
    """A last record whose quote is never closed (`MALFORMED_ROW`), when the spec plants one."""
    if not spec.unterminated_tail:
        return b""
    return (",".join(["x"] * (len(spec.columns) - 1) + ['"this value is never closed']) + spec.eol
            + "and the file ends here" + spec.eol).encode()


def _csv_fast(table: ChaosTable, spec: FileSpec, intent: pa.Table, extras: Mapping[str, pa.Array], n: int) -> bytes:
    """The CSV of `--fast`, written by Arrow's CSV writer from typed columns (text values quoted, timestamps in UTC
    without an offset, which the table's time zone reads as UTC); the records with a planted fault follow the others,
    written like the truth mode's. Only columns with another spelling are turned into text for the writer."""
    contract = table.contract
    faulty = np.union1d(np.fromiter(spec.parse, np.int64, len(spec.parse)),
                        np.concatenate([p.rows for p in spec.bad.values()] + [np.zeros(0, np.int64)]))
    clean = pc.invert(_mask_at(n, faulty))
    out = io.BytesIO()
    out.write(("\ufeff" if spec.bom else "").encode())
    source = {name: extras[name] if name in extras else as_array(intent[name]) for name in spec.columns}
    writer = None
    for start in range(0, max(n, 1), RENDER_CHUNK_ROWS):
        keep = clean.slice(start, RENDER_CHUNK_ROWS)
        columns = {}
        for name in spec.columns:
            values = source[name].slice(start, RENDER_CHUNK_ROWS).filter(keep)
            if name in extras:
                columns[name] = values
            elif spec.spelling.get(name):
                columns[name] = _text_of(contract.field(name), values, spec.spelling[name])
            elif pa.types.is_timestamp(values.type):
                columns[name] = pc.cast(pc.divide(_micros(values), 1_000_000), pa.timestamp("s"))
            else:
                columns[name] = values
        chunk = pa.table(columns)
        if writer is None:
            writer = pacsv.CSVWriter(out, chunk.schema,
                                     write_options=pacsv.WriteOptions(eol=spec.eol, quoting_header="none"))
        writer.write_table(chunk)
    if writer is not None:
        writer.close()
    if len(faulty):
        rows = pa.array(faulty)
        at = np.searchsorted(faulty, np.fromiter(spec.parse, np.int64, len(spec.parse))).tolist()
        part = dataclasses.replace(
            spec, parse=dict(zip(at, spec.parse.values(), strict=True)),
            bad={c: Planted(np.searchsorted(faulty, p.rows), p.values, p.cells, p.codes) for c, p in spec.bad.items()})
        out.write(_csv_records(table, part, _texts(table, part, intent.take(rows)),
                               {c: v.take(rows) for c, v in extras.items()}, len(faulty))[0])
    out.write(_unterminated(spec))
    return out.getvalue()


def _joined(values: Sequence[pa.Array], separator: str, end: str, n: int) -> pa.Array:
    """Each row's values joined by `separator`, followed by `end`, in one pass."""
    args: list[Any] = []
    for i, column in enumerate(values):
        args += [separator, column] if i else [column]
    return pc.binary_join_element_wise(*args, end, "") if args else pa.repeat(pa.scalar(end), n)


def _mask_at(n: int, positions: pa.Array | Sequence[int]) -> pa.BooleanArray:
    """A mask of length `n` that is true at the 0-based `positions`."""
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(positions, dtype=np.int64)] = True
    return pa.array(mask)


def _jsonl_bytes(table: ChaosTable, spec: FileSpec, intent: pa.Table, extras: Mapping[str, pa.Array], n: int,
                 truth: bool = True) -> tuple[bytes, dict[str, pa.Array]]:
    """The JSON Lines file and (with `truth`) the text of each value as a reader gives it.

    The records are written without their planted values, `RENDER_CHUNK_ROWS` at a time (all at once with `truth`,
    whose canonical forms need the text of every value); the records that have planted values are written again from
    their rows alone and take their place, like the unparseable records and the blank lines (a record's line depends
    on its own values only)."""
    every = _texts(table, spec, intent) if truth else {}
    cells = {name: extras[name] if name in extras else _with_planted(every[name], spec.bad.get(name), cells=True)
             for name in spec.columns} if truth else {}
    edits = []
    faulty = np.unique(np.concatenate([p.rows for p in spec.bad.values()] + [np.zeros(0, np.int64)]))
    if len(faulty):
        rows = pa.array(faulty)
        bad = {c: Planted(np.searchsorted(faulty, p.rows), p.values, p.cells, p.codes) for c, p in spec.bad.items()}
        edits.append(Edits(faulty, np.ones(len(faulty), np.int8), _json_lines(
            table, spec, _texts(table, spec, intent.take(rows)), {c: v.take(rows) for c, v in extras.items()}, bad,
            len(faulty))))
    if spec.parse:
        # Per-record Python only over the records planted as unparseable (none of them has a planted value).
        rows = pa.array(sorted(spec.parse), pa.int64())
        lines = _json_lines(table, spec, _texts(table, spec, intent.take(rows)),
                            {c: v.take(rows) for c, v in extras.items()}, {}, len(rows))
        draw = random.Random(json.dumps(sorted(spec.parse.items())))
        broken = []
        for row, line in zip(rows.to_pylist(), lines.to_pylist(), strict=True):
            line = line[: -len(spec.eol)]
            if spec.parse[row] == "INVALID_JSON":
                line = draw.choice([line[: len(line) // 2], line[:-1] + ',"score":NaN}', line[:-1] + ",}"])
            else:
                line = draw.choice(["[1,2,3]", "42", '"just text"', "null"])
            broken.append(line + spec.eol)
        edits.append(Edits(np.asarray(rows), np.ones(len(rows), np.int8), pa.array(broken, pa.string())))
    if spec.blanks:
        blanks = sorted((position, BLANK_LINES[i % len(BLANK_LINES)] + spec.eol) for i, position in enumerate(spec.blanks))
        edits.append(Edits(np.array([p for p, _ in blanks], np.int64), np.zeros(len(blanks), np.int8),
                           pa.array([text for _, text in blanks], pa.string())))
    merged = Edits.merged(edits)
    out = io.BytesIO()
    step = max(n, 1) if truth else RENDER_CHUNK_ROWS
    for start in range(0, max(n, 1), step):
        part = intent.slice(start, step)
        lines = _json_lines(table, spec, every or _texts(table, spec, part),
                            {c: v.slice(start, step) for c, v in extras.items()}, {}, part.num_rows)
        out.write(_concatenated(merged.applied(lines, start, last=start + step >= n)))
    return out.getvalue(), cells


def _json_lines(table: ChaosTable, spec: FileSpec, texts: Mapping[str, pa.Array], extras: Mapping[str, pa.Array],
                bad: Mapping[str, Planted], n: int) -> pa.Array:
    """The JSON Lines records of `n` rows from the text of their values, with the `bad` values planted."""
    args: list[Any] = []
    for i, name in enumerate(spec.columns):
        opening = ("{" if i == 0 else ",") + f'"{name}":'
        if name in extras:
            values = extras[name]
            if values.null_count:
                # Keys left out of some records (`sparse_keys`): the first column is never one of these.
                args.append(pc.binary_join_element_wise(opening, values, "") if spec.extras[name] == "int"
                            else pc.binary_join_element_wise(opening + '"', values, '"', ""))
            else:
                args += [opening, values] if spec.extras[name] == "int" else [opening + '"', values, '"']
            continue
        field_ = table.contract.field(name)
        cell = texts[name]
        planted = bad.get(name)
        if planted is None and not cell.null_count and _json_quoted(field_, spec.spelling.get(name)):
            args += [opening + '"', cell, '"']
            continue
        literal = _with_planted(_json_literal(field_, cell, spec.spelling.get(name)), planted)
        if literal.null_count and spec.omit_nulls:
            # A pair left out; the first column of a JSON Lines file is never one that can be (see `_draw_spec`).
            args.append(pc.binary_join_element_wise(opening, literal, ""))
        else:
            args += [opening, pc.fill_null(literal, "null")]
    if not args:
        args.append("{")
    return pc.binary_join_element_wise(*args, "}" + spec.eol, "", null_handling="replace", null_replacement="")


def _line_numbers(n: int, blanks: Sequence[int]) -> pa.Array:
    """The line number of each of `n` records when a blank line goes before each record in `blanks`."""
    numbers = arange(n, 1)
    for position in blanks:
        numbers = pc.add(numbers, pc.cast(pc.greater_equal(arange(n), position), pa.int64()))
    return numbers


def _string_buffers(lines: pa.Array) -> tuple[np.ndarray, memoryview]:
    """The offsets (one more than there are strings) and the bytes of a string array."""
    lines = as_array(lines)
    _, offsets_buffer, data = lines.buffers()
    width = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, width)[lines.offset:lines.offset + len(lines) + 1]
    return offsets, memoryview(data if data is not None else b"")


def _concatenated(lines: pa.Array) -> memoryview:
    """The strings of `lines` one after the other: a view of the array's value buffer, not a copy."""
    if not len(lines):
        return memoryview(b"")
    offsets, view = _string_buffers(lines)
    return view[offsets[0]:offsets[-1]]


@dataclass(frozen=True)
class Edits:
    """Lines to splice into a file's lines: before line `rows[i]`, `replaces[i]` (0 or 1) lines give way to
    `texts[i]`; sorted by row, insertions before a replacement."""

    rows: np.ndarray
    replaces: np.ndarray
    texts: pa.Array

    @staticmethod
    def merged(parts: Sequence[Edits]) -> Edits:
        """The edits of `parts` in one, sorted (stable: insertions at one row keep their order)."""
        rows = np.concatenate([p.rows for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
        replaces = np.concatenate([p.replaces for p in parts] + [np.zeros(0, np.int8)])
        order = np.lexsort((replaces, rows))
        texts = pa.concat_arrays([p.texts for p in parts]) if parts else pa.array([], pa.string())
        return Edits(rows[order], replaces[order], texts.take(order))

    def applied(self, lines: pa.Array, first: int, *, last: bool) -> pa.Array:
        """`lines`, the lines `first` onwards of a file, with the edits that fall among them (and, if they are the
        `last`, those after them), in one vectorized take."""
        n = len(lines)
        low = int(np.searchsorted(self.rows, first, "left"))
        high = len(self.rows) if last else int(np.searchsorted(self.rows, first + n, "left"))
        if low == high:
            return lines
        rows, replaces = self.rows[low:high] - first, self.replaces[low:high]
        index = np.arange(n, dtype=np.int64)
        replaced = replaces == 1
        index[rows[replaced]] = n + np.flatnonzero(replaced)
        inserted = ~replaced
        index = np.insert(index, rows[inserted], n + np.flatnonzero(inserted))
        return as_array(pa.chunked_array([lines, self.texts.slice(low, high - low)], pa.string()).take(index))


@dataclass(frozen=True)
class Delivery:
    """One action of a round's plan: a new or changed file (`add`, `replace`) or the same bytes again (`redeliver`)."""

    path: str
    action: str
    version: FileVersion | None = None
    keep_mtime: bool = False


class DeliveryPlanner:
    """Plans the rounds of a delivery: new files, new and late versions, duplicates, changed and re-delivered files."""

    def __init__(self, seed: int, scale: float, knobs: Knobs, tables: Sequence[str], *, truth: bool = True) -> None:
        self.seed, self.scale, self.knobs, self.tables, self.truth = seed, scale, knobs, list(tables), truth
        self.files: dict[str, list[FileVersion]] = {}
        self.latest: dict[str, pa.Table] = {}
        """Merge tables: the newest intended version of every key delivered so far."""
        self.sent: dict[str, pa.Table] = {}
        """The intended rows delivered so far (the most recent `SENT_POOL` of them): exact copies come from here."""
        self.counter = {name: 1 for name in self.tables}

    def rng(self, *names: object) -> Rng:
        return Rng(self.seed, "/".join(["chaos", *map(str, names)]))

    def round(self, number: int) -> list[Delivery]:
        """Plan and write round `number`: every table's changed and re-delivered files, then its new files.

        Tables are planned on `RENDER_THREADS` threads: each draws from random streams of its own and writing is
        Arrow work that releases the GIL, so the output does not depend on the threads."""
        with ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="table") as pool:
            deliveries = [d for table in pool.map(lambda name: self._table_round(CHAOS_TABLES[name], number),
                                                  self.tables) for d in table]
        for delivery in deliveries:
            if delivery.version is not None:
                self.files.setdefault(delivery.path, []).append(delivery.version)
        return deliveries

    def _table_round(self, table: ChaosTable, number: int) -> list[Delivery]:
        return [*self._changes(table, number), *(self._delivery(job) for job in self._new_files(table, number))]

    def _delivery(self, job: tuple[ChaosTable, str, pa.Table, FileSpec] | Delivery) -> Delivery:
        if isinstance(job, Delivery):
            return job
        table, path, intent, spec = job
        return Delivery(path, "add", render(table, path, intent, spec, truth=self.truth))

    def _new_files(self, table: ChaosTable, number: int) -> list[tuple[ChaosTable, str, pa.Table, FileSpec] | Delivery]:
        rng = self.rng(table.name, number, "new")
        draw = rng.python()
        files = 2 if number == 1 else draw.choice([1, 1, 2])
        rows = sum(max(1, round(self.knobs.rows * self.scale * draw.uniform(0.5, 1.5))) for _ in range(files))
        intent = self._records(table, number, rows, rng)
        order = "updated_at" if table.merge else "event_ts" if table.name == "events" else "reading_ts"
        deliveries: list[tuple[ChaosTable, str, pa.Table, FileSpec] | Delivery] = []
        cuts = sorted(draw.sample(range(1, intent.num_rows), files - 1)) if intent.num_rows > files else []
        for i, (start, stop) in enumerate(zip([0, *cuts], [*cuts, intent.num_rows], strict=True)):
            part = intent.slice(start, stop - start)
            shuffled = draw.random() < self.knobs.out_of_order
            part = part.take(pc.sort_indices(rng.uniform(part.num_rows))) if shuffled else part.sort_by(order)
            day = draw.randrange(number) if shuffled else number - 1
            fmt = draw.choice(table.formats)
            stem = date_text(pa.array([START + day * DAY])).to_pylist()[0]
            path = f"{table.name}/{table.name}_{stem}_r{number:02d}{'abcdefgh'[i]}{EXTENSIONS[fmt]}"
            deliveries.append((table, path, part, _draw_spec(table, fmt, part.num_rows, self.knobs,
                                                             self.rng(path, "spec"))))
        if draw.random() < self.knobs.rate("UNSUPPORTED_FILE"):
            path = f"{table.name}/{table.name}_r{number:02d}.csv.bak"
            deliveries.append(Delivery(path, "add", _stray(table, path, number)))
        return deliveries

    def _records(self, table: ChaosTable, number: int, n: int, rng: Rng) -> pa.Table:
        """The intended rows of a round's new files: new keys, new and late versions, exact copies and conflicts."""
        maker = MAKERS[table.name]
        start = START + (number - 1) * DAY
        keys = self._new_keys(table, n, rng)
        parts = [maker.rows(rng, keys, rng.integers(keys.num_rows, start, start + DAY))]
        latest = self.latest.get(table.name)
        newest = parts[0]
        if table.merge and table.sequence and latest is not None and latest.num_rows:
            seq = pc.divide(_micros(latest[table.sequence]), 1_000_000)
            for rate, low, high in ((self.knobs.update_rate, 60, DAY), (self.knobs.late_rate, -DAY, -60)):
                chosen = rng.mask(latest.num_rows, rate)
                old = latest.filter(chosen)
                when = pc.add(seq.filter(chosen), rng.integers(old.num_rows, low, high))
                fresh = maker.rows(rng, old.select(list(table.key)), when)
                parts.append(_blend(rng, old, fresh, maker.kept_on_update))
                if high > 0:
                    # Each key is updated once at most, and later than its newest version so far.
                    newest = pa.concat_tables([latest.filter(pc.invert(chosen)), newest, parts[-1]])
        if not table.merge and number > 1:
            late = self._new_keys(table, max(1, n // 10), rng, late=True)
            parts.append(maker.rows(rng, late, rng.integers(late.num_rows, START, start)))
        made = pa.concat_tables(parts)
        pool = pa.concat_tables([self.sent[table.name], made]) if table.name in self.sent else made
        copies = pool.filter(rng.mask(pool.num_rows, min(1.0, self.knobs.duplicate_rate * made.num_rows
                                                                / max(pool.num_rows, 1))))
        conflicts = maker.conflict(made.filter(rng.mask(made.num_rows, self.knobs.rate("DUPLICATE_KEY"))))
        intent = pa.concat_tables([made, copies, conflicts])
        # Taken, not sliced: a slice would keep every record of the round in memory.
        self.sent[table.name] = pool.take(np.arange(max(0, pool.num_rows - SENT_POOL), pool.num_rows))
        if table.merge and table.sequence:
            self.latest[table.name] = newest
        return intent

    def _new_keys(self, table: ChaosTable, n: int, rng: Rng, *, late: bool = False) -> pa.Table:
        """Keys never delivered before (`late`: sensor readings older than any delivered so far)."""
        name = "late_sensors" if late and table.name == "sensors" else table.name
        first = self.counter.setdefault(name, 1)
        if table.name == "order_items":
            orders = max(1, n // 2)
            self.counter[name] += orders
            slot = arange(orders * 4)
            order = pc.divide(slot, 4)
            line = pc.add(_mod(slot, 4), 1)
            keep = pc.less(line, pc.take(rng.integers(orders, 2, 6), order))
            return pa.table({"order_id": pc.add(pc.filter(order, keep), 500_000 + first),
                             "line_no": pc.cast(pc.filter(line, keep), pa.int32())})
        self.counter[name] += n
        if table.name == "orders":
            return pa.table({"order_id": arange(n, 100_000 + first)})
        if table.name == "events":
            prefix = hashlib.blake2b(str(self.seed).encode(), digest_size=4).hexdigest()
            return pa.table({"event_id": _event_ids(prefix, first, n)})
        fleet = CHAOS_STORES * SENSORS_PER_STORE
        slot = arange(n, first)
        sensor = _mod(slot, fleet)
        minute = pc.multiply(pc.divide(slot, fleet), 60)
        when = pc.subtract(START - 60, minute) if late else pc.add(START, minute)
        return pa.table({"sensor_id": pc.binary_join_element_wise("SN-", pc.utf8_lpad(text(pc.add(sensor, 1)), 5, "0"), ""),
                         "reading_ts": utc_us(pc.add(when, _mod(pc.multiply(sensor, 7), 60)))})

    def _changes(self, table: ChaosTable, number: int) -> list[Delivery]:
        """Files delivered before, delivered again: unchanged (re-delivered), or changed under the same name."""
        rng = self.rng(table.name, number, "changes")
        draw = rng.python()
        deliveries = []
        for path in sorted(p for p in self.files if p.startswith(table.name + "/")):
            current = self.files[path][-1]
            roll = draw.random()
            if roll < self.knobs.change_rate:
                deliveries.append(self._changed(table, path, current, number, rng))
            elif roll < self.knobs.change_rate + self.knobs.redeliver_rate:
                deliveries.append(Delivery(path, "redeliver"))
        return deliveries

    def _changed(self, table: ChaosTable, path: str, current: FileVersion, number: int, rng: Rng) -> Delivery:
        draw = rng.python()
        if current.spec is None:
            return Delivery(path, "replace", _stray(table, path, number))
        spec = current.spec
        column = MAKERS[table.name].same_length_column
        if column and spec.fmt != "parquet" and draw.random() < self.knobs.keep_mtime_rate:
            values = as_array(current.intent[column])
            faulty = np.concatenate([p.rows for p in spec.bad.values()] + [np.fromiter(spec.parse, np.int64)])
            editable = np.setdiff1d(np.flatnonzero(np.asarray(pc.is_valid(values))), faulty)
            if len(editable) and column in spec.columns and spec.file_level is None:
                row = int(editable[draw.randrange(len(editable))])
                edited = _with_bad(values, {row: _next_digit(values.slice(row, 1))[0].as_py()})
                intent = current.intent.set_column(current.intent.schema.get_field_index(column),
                                                   current.intent.field(column), edited)
                version = render(table, path, intent, spec, truth=self.truth)
                if len(version.data) == len(current.data):
                    return Delivery(path, "replace", version, keep_mtime=True)
        earlier = {v.data: v for v in self.files[path][:-1] if v.data != current.data}
        roll = draw.random()
        if earlier and roll < 0.15:
            return Delivery(path, "replace", draw.choice(list(earlier.values())))
        intent = current.intent.slice(0, 0) if roll < 0.25 else self._edited(table, current.intent, number, rng)
        spec = _draw_spec(table, spec.fmt, intent.num_rows, self.knobs, rng)
        return Delivery(path, "replace", render(table, path, intent, spec, truth=self.truth))

    def _edited(self, table: ChaosTable, intent: pa.Table, number: int, rng: Rng) -> pa.Table:
        """A file's rows edited: some get a newer version (merge tables) or other content under the same key and
        sequence value, some are left out, a few new ones come in."""
        maker = MAKERS[table.name]
        n = intent.num_rows
        edited = rng.mask(n, 0.3)
        kept = intent.filter(pc.and_(pc.invert(edited), pc.invert(rng.mask(n, 0.1))))
        changed = intent.filter(edited)
        if table.merge and table.sequence and changed.num_rows:
            bump = rng.mask(changed.num_rows, 0.5)
            seq = pc.divide(_micros(changed[table.sequence]), 1_000_000)
            newer = changed.filter(bump)
            newer = _blend(rng, newer, maker.rows(rng, newer.select(list(table.key)),
                                                  pc.add(seq.filter(bump), rng.integers(newer.num_rows, 60, DAY))),
                           maker.kept_on_update)
            changed = pa.concat_tables([newer, maker.conflict(changed.filter(pc.invert(bump)))])
        else:
            changed = maker.conflict(changed)
        extra = max(1, n // 5)
        start = START + (number - 1) * DAY
        keys = self._new_keys(table, extra, rng)
        fresh = maker.rows(rng, keys, rng.integers(keys.num_rows, start, start + DAY))
        rows = pa.concat_tables([kept, changed, fresh])
        return rows.take(pc.sort_indices(rng.uniform(rows.num_rows)))


RENDER_CHUNK_ROWS = 65_536
"""Records `--fast` renders at once: enough for Arrow's kernels to run at full speed, few enough that their temporary
arrays are reused from chunk to chunk instead of mapped afresh for each file (which costs system time)."""
SENT_POOL = 5000
"""Intended rows kept per table for exact copies in later rounds."""
RENDER_THREADS = 2
"""Tables planned and written at once (2 cores: the work is mostly Arrow, which releases the GIL)."""


def _event_ids(prefix: str, first: int, n: int) -> pa.Array:
    """`<prefix>-dddd-dddd-dddd-dddddddddddd` for the numbers `first` .. `first + n - 1` (UUID-shaped, the digits
    are hex digits too), written as fixed-width bytes."""
    width = 36
    chars = np.full((n, width), ord("-"), dtype=np.uint8)
    chars[:, :8] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    number = np.arange(first, first + n, dtype=np.int64)
    for position in (35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 22, 21, 20, 19, 17, 16, 15, 14, 12, 11, 10, 9):
        chars[:, position] = ord("0") + number % 10
        number //= 10
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])


def _stray(table: ChaosTable, path: str, number: int) -> FileVersion:
    """A file the table does not accept (a backup copy left in the drop folder)."""
    data = f"{table.name} export of round {number}, kept as a backup\n".encode()
    empty = pa.table({"src_row_number": pa.array([], pa.int64())})
    return FileVersion(table.name, path, data, "UNSUPPORTED_FILE", empty, ROW_REJECTS.empty_table(), 0, None,
                       table.typed.empty_table(), None)


LATE_VERSIONS_IN_CHANGE_LOG = False
"""README, "Late versions never win": a version older than the one already loaded replaces nothing and is loaded
nowhere, not even in the change log; the manifest counts it (`late_count`)."""
REJECT_TRUTH = pa.schema([pa.field("table_name", pa.string()), pa.field("src_filename", pa.string()),
                          pa.field("src_row_number", pa.int64()), pa.field("src_sheet", pa.string()),
                          pa.field("reason_code", pa.string()), pa.field("column_name", pa.string()),
                          pa.field("_round", pa.int32())])
SCHEMA_HISTORY_TRUTH = pa.schema([pa.field("table_name", pa.string()), pa.field("column_name", pa.string()),
                                  pa.field("data_type", pa.string()), pa.field("_round", pa.int32())])
DLT_TYPES: Mapping[pa.DataType, str] = {pa.string(): "text", pa.int64(): "bigint"}
"""dlt's data type of the added columns' Arrow types (`schema_history.data_type`)."""
MANIFEST_TRUTH = pa.schema([pa.field("src_path", pa.string()), pa.field("file_fingerprint", pa.string()),
                            pa.field("table_name", pa.string()), pa.field("file_size", pa.int64()),
                            pa.field("row_count", pa.int64()), pa.field("valid_count", pa.int64()),
                            pa.field("reject_count", pa.int64()), pa.field("superseded_count", pa.int64()),
                            pa.field("late_count", pa.int64()),
                            pa.field("status", pa.string()), pa.field("replaced_fingerprint", pa.string()),
                            pa.field("extra_columns", pa.string()), pa.field("_round", pa.int32())])


class GroundTruth:
    """What every sink must hold after each round, derived from the README's semantics alone (not from the package).

    - A round's load holds the files whose bytes differ from the version of their path loaded before (new files and
      changed ones; a re-delivery of the same bytes is skipped), in path order.
    - Within a load, valid rows of one key (and sequence value) with different content (the canonical form of
      `src_row_hash`) are all `DUPLICATE_KEY` rejects.
    - Merge tables: the load keeps one version per key, the highest sequence value, ties to the file that sorts last,
      then the last row; the others are `superseded_count`. It replaces the loaded version of its key unless that one
      has a higher sequence value (late versions never win; `late_count`). The change log gets every load's kept
      versions, late ones included.
    - Append tables: a loaded file's valid rows replace the rows of every earlier version of that file (none when
      the new version is rejected as a whole). The change log gets every load's valid rows.
    - With `evolve` (`--evolve-schema`), columns outside the contract are added to the table instead of rescued:
      text for text formats, the stored type for Parquet; older rows read them as missing. A file holding such a
      column with another type than the table (or an earlier file of the load) gave it is a `COLUMN_TYPE_CHANGED`
      file reject; each added column is a `schema_history` row of the load that added it.
    """

    def __init__(self, tables: Sequence[str], *, evolve: bool = False) -> None:
        import duckdb

        self.evolve = evolve
        self.added: dict[str, dict[str, pa.DataType]] = {t: {} for t in tables}
        self.schema_history: list[dict[str, Any]] = []
        self.tables = [CHAOS_TABLES[t] for t in tables]
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.state = {t.name: t.truth_schema.empty_table() for t in self.tables}
        self.log: dict[str, list[pa.Table]] = {t.name: [] for t in self.tables}
        self.rejects: list[pa.Table] = []
        self.manifest: dict[tuple[str, str], dict[str, Any]] = {}
        self.manifest_log: list[dict[str, Any]] = []
        self.ledger: dict[str, str] = {}

    def load(self, number: int, deliveries: Sequence[Delivery]) -> dict[str, Any]:
        """Apply one round; return its summary per table (files, rows read, valid, rejected, reject records)."""
        loaded = [d.version for d in deliveries
                  if d.version is not None and self.ledger.get(d.path) != d.version.fingerprint]
        summary = {t.name: self._load_table(t, number, sorted((v for v in loaded if v.table == t.name),
                                                              key=lambda v: v.path.encode()))
                   for t in self.tables}
        for version in loaded:
            self.ledger[version.path] = version.fingerprint
        return summary

    def schema(self, table: ChaosTable) -> pa.Schema:
        """The columns the table's sinks hold: the truth schema and the columns added so far."""
        return pa.schema([*table.truth_schema, *(pa.field(n, t) for n, t in self.added[table.name].items())])

    def _type_checked(self, table: ChaosTable, files: list[FileVersion]) -> tuple[list[FileVersion], dict[str, Any]]:
        """The files of a schema-evolving load, those bringing a column with another type than the table (or an
        earlier file of the load with valid rows) gave it turned into `COLUMN_TYPE_CHANGED` rejects; and the types
        of the columns the load's files bring (a file without valid rows brings none)."""
        types = dict(self.added[table.name])
        checked = []
        for f in files:
            found = {name: values.type for name, values in f.added.items()}
            if f.file_reject is not None or not pc.any(f.rows["_valid"]).as_py():
                checked.append(f)
            elif any(types.get(name, type_) != type_ for name, type_ in found.items()):
                checked.append(dataclasses.replace(f, file_reject="COLUMN_TYPE_CHANGED", rows=f.rows.slice(0, 0),
                                                   rejects=ROW_REJECTS.empty_table(), row_count=0,
                                                   extra_columns=None, added={}))
            else:
                types.update(found)
                checked.append(f)
        return checked, types

    def _added_by(self, table: ChaosTable, number: int, files: list[FileVersion], types: Mapping[str, Any],
                  loaded: set[str]) -> None:
        """Record the columns the load added: those of the files with rows in the load (`loaded`), in file order."""
        added = self.added[table.name]
        for f in files:
            if f.path not in loaded or f.file_reject is not None:
                continue
            for name in f.added:
                if name not in added:
                    added[name] = types[name]
                    self.schema_history.append({"table_name": table.name, "column_name": name,
                                                "data_type": DLT_TYPES[types[name]], "_round": number})

    def _load_table(self, table: ChaosTable, number: int, files: list[FileVersion]) -> dict[str, Any]:
        rejects: list[pa.Table] = []
        valid: list[pa.Table] = []
        types: dict[str, Any] = dict(self.added[table.name])
        if self.evolve:
            files, types = self._type_checked(table, files)
        accepted = [f for f in files if f.file_reject is None]
        for f in files:
            if f.file_reject is not None:
                rejects.append(_reject_records(table, f.path, pa.table({
                    "src_row_number": pa.nulls(1, pa.int64()), "reason_code": [f.file_reject],
                    "column_name": pa.nulls(1, pa.string())}), number))
                continue
            rejects.append(_reject_records(table, f.path, f.rejects, number))
            rows = f.rows
            if self.evolve:
                rows = rows.set_column(rows.schema.get_field_index("_rescued_data"), "_rescued_data",
                                       pa.nulls(rows.num_rows, pa.string()))
                for name, values in f.added.items():
                    rows = rows.append_column(name, values)
            rows = rows.filter(rows["_valid"]).drop_columns(["_valid"])
            valid.append(_with_derived(table, rows).append_column("src_filename", pa.repeat(pa.scalar(f.path),
                                                                                             rows.num_rows)))
        # The columns this load's files may add; those of files with rows in the load are added (below).
        candidates = pa.schema([*table.truth_schema, *(pa.field(n, t) for n, t in types.items())])
        empty = candidates.empty_table().drop_columns(["src_row_hash", "_round"]).append_column(
            "_canonical", pa.array([], pa.string()))
        self.con.register("loaded", pa.concat_tables([empty, *valid], promote_options="default").select(
            empty.column_names))
        self.con.register("state", self.state[table.name])
        version = ", ".join(table.version)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE v AS SELECT * EXCLUDE (_canonical), sha256(_canonical) AS "
                         f"src_row_hash, CAST({number} AS INTEGER) AS _round FROM loaded")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE dup AS SELECT * FROM v SEMI JOIN (SELECT {version} FROM v "
                         f"GROUP BY ALL HAVING count(DISTINCT src_row_hash) > 1) USING ({version})")
        self.con.execute("CREATE OR REPLACE TEMP TABLE ok AS SELECT * FROM v ANTI JOIN dup "
                         "USING (src_filename, src_row_number)")
        key = ", ".join(table.key)
        if table.merge:
            assert table.sequence is not None
            seq = table.sequence
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE kept AS SELECT * FROM ok QUALIFY row_number() OVER "
                             f"(PARTITION BY {key} ORDER BY {seq} DESC, src_filename DESC, src_row_number DESC) = 1")
            same = " AND ".join(f"a.{k} = b.{k}" for k in table.key)
            late = dict(self.con.execute(f"SELECT a.src_filename, count(*) FROM kept a JOIN state b ON {same} "
                                         f"AND b.{seq} > a.{seq} GROUP BY ALL").fetchall())
            state = self.con.execute(
                f"SELECT * FROM state a WHERE NOT EXISTS (SELECT 1 FROM kept b WHERE {same} AND b.{seq} >= a.{seq}) "
                f"UNION ALL BY NAME SELECT * FROM kept a WHERE NOT EXISTS (SELECT 1 FROM state b WHERE {same} "
                f"AND b.{seq} > a.{seq})").to_arrow_table()
        else:
            late = {}
            self.con.execute("CREATE OR REPLACE TEMP TABLE kept AS SELECT * FROM ok")
            replaced = pa.table({"src_filename": pa.array([f.path for f in accepted], pa.string())})
            self.con.register("replaced", replaced)
            state = self.con.execute("SELECT * FROM state ANTI JOIN replaced USING (src_filename) "
                                     "UNION ALL BY NAME SELECT * FROM kept").to_arrow_table()
        kept_rows = self.con.execute("SELECT * FROM kept").to_arrow_table()
        if self.evolve:
            self._added_by(table, number, files, types, set(kept_rows["src_filename"].to_pylist()))
        schema = self.schema(table)
        self.state[table.name] = state.select(schema.names).cast(schema)
        if not LATE_VERSIONS_IN_CHANGE_LOG and table.merge:
            kept_rows = self.con.execute(f"SELECT * FROM kept a WHERE NOT EXISTS (SELECT 1 FROM state b WHERE "
                                         f"{same} AND b.{table.sequence} > a.{table.sequence})").to_arrow_table()
        self.log[table.name].append(kept_rows.select(schema.names).cast(schema))
        duplicates = self.con.execute("SELECT src_filename, src_row_number FROM dup").to_arrow_table()
        for path in sorted(set(duplicates["src_filename"].to_pylist())):
            mine = duplicates.filter(pc.equal(duplicates["src_filename"], path))
            rejects.append(_reject_records(table, path, pa.table({
                "src_row_number": mine["src_row_number"], "reason_code": pa.repeat(pa.scalar("DUPLICATE_KEY"), mine.num_rows),
                "column_name": pa.repeat(pa.scalar(",".join(table.key)), mine.num_rows)}), number))
        counts = dict(self.con.execute("SELECT src_filename, count(*) FROM ok GROUP BY ALL").fetchall())
        kept = dict(self.con.execute("SELECT src_filename, count(*) FROM kept GROUP BY ALL").fetchall())
        records = pa.concat_tables([REJECT_TRUTH.empty_table(), *rejects])
        self.rejects.append(records)
        summary: dict[str, Any] = {"files": len(files), "rows_read": 0, "valid": 0, "rejected": 0,
                                   "reasons": dict(sorted(Counter(records["reason_code"].to_pylist()).items()))}
        for f in files:
            rejected_rows = records.filter(pc.equal(records["src_filename"], f.path))["src_row_number"]
            rejected = len(set(rejected_rows.drop_null().to_pylist()))
            row = {"src_path": f.path, "file_fingerprint": f.fingerprint, "table_name": table.name,
                   "file_size": len(f.data), "row_count": f.row_count, "valid_count": f.row_count - rejected,
                   "reject_count": rejected, "superseded_count": counts.get(f.path, 0) - kept.get(f.path, 0),
                   "late_count": late.get(f.path, 0),
                   "status": "file_rejected" if f.file_reject else "empty" if f.row_count == 0
                   else "with_rejects" if rejected else "ok",
                   "replaced_fingerprint": self.ledger.get(f.path), "extra_columns": f.extra_columns,
                   "_round": number}
            self.manifest[f.path, f.fingerprint] = row
            self.manifest_log.append(row)
            summary["rows_read"] += row["row_count"]
            summary["valid"] += row["valid_count"]
            summary["rejected"] += row["reject_count"]
        return summary

    def write(self, folder: Path) -> None:
        """The truth after the last round loaded, under `folder`: `tables/<table>.parquet` (DuckDB and Delta hold
        these rows), `changelog/<table>.parquet` (the Parquet change log), `rejects.parquet` (every sink's reject
        records), `manifest.parquet` (DuckDB and Delta) and `manifest_log.parquet` (the change log)."""
        for sub in ("tables", "changelog"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        order = [("src_filename", "ascending"), ("src_row_number", "ascending"), ("_round", "ascending")]
        for table in self.tables:
            schema = self.schema(table)
            pq.write_table(self.state[table.name].sort_by(order), folder / "tables" / f"{table.name}.parquet")
            log = pa.concat_tables([schema.empty_table(), *self.log[table.name]], promote_options="default")
            pq.write_table(log.select(schema.names).sort_by(order), folder / "changelog" / f"{table.name}.parquet")
        pq.write_table(pa.Table.from_pylist(self.schema_history, schema=SCHEMA_HISTORY_TRUTH),
                       folder / "schema_history.parquet")
        pq.write_table(pa.concat_tables([REJECT_TRUTH.empty_table(), *self.rejects]), folder / "rejects.parquet")
        pq.write_table(pa.Table.from_pylist(sorted(self.manifest.values(), key=lambda r: (r["src_path"], r["_round"])),
                                            schema=MANIFEST_TRUTH), folder / "manifest.parquet")
        pq.write_table(pa.Table.from_pylist(self.manifest_log, schema=MANIFEST_TRUTH), folder / "manifest_log.parquet")


def _with_derived(table: ChaosTable, rows: pa.Table) -> pa.Table:
    """`rows` with the table's derived columns (README: the UTC date of `event_ts`, `YYYY-MM` of `reading_ts`)."""
    for name in table.derived:
        if name == "event_date":
            rows = rows.append_column(name, pc.cast(rows["event_ts"], pa.date32()))
        elif name == "reading_month":
            rows = rows.append_column(name, pc.strftime(rows["reading_ts"], "%Y-%m"))
    return rows


def _reject_records(table: ChaosTable, path: str, rows: pa.Table, number: int) -> pa.Table:
    n = rows.num_rows
    return pa.table({
        "table_name": pa.repeat(pa.scalar(table.name), n), "src_filename": pa.repeat(pa.scalar(path), n),
        "src_row_number": rows["src_row_number"], "src_sheet": pa.nulls(n, pa.string()),
        "reason_code": rows["reason_code"], "column_name": rows["column_name"],
        "_round": pa.repeat(pa.scalar(number, pa.int32()), n),
    }, schema=REJECT_TRUTH)


def generate_deliveries(out: str | Path, *, rounds: int, seed: int = 42, scale: float = 1.0,
                        knobs: Knobs | None = None, tables: Sequence[str] | None = None,
                        truth: bool = True, evolve: bool = False) -> dict[str, Any]:
    """Write `rounds` delivery rounds under `out` (replaced as a whole): per round `round_NNN/plan.json` and the files
    it adds or replaces under `round_NNN/files/`, and (unless `truth` is off) what every sink must hold after the
    round under `round_NNN/truth/`, for runs with `--evolve-schema` if `evolve`. Return the `_chaos.json` document
    (knobs and per-round summaries)."""
    knobs = knobs or Knobs()
    names = list(tables or CHAOS_TABLES)
    unknown = [t for t in names if t not in CHAOS_TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)} for deliveries; known: {', '.join(CHAOS_TABLES)}")
    if rounds < 1 or scale <= 0:
        raise ValueError("need at least one round and scale > 0")
    root = Path(out)
    prepare_out(root)
    (root / MARKER).write_text(f"scripts/generate_raw_data.py --deliveries {rounds} seed={seed} scale={scale} "
                               f"tables={','.join(names)}\n")
    document: dict[str, Any] = {"generator": {"seed": seed, "scale": scale, "rounds": rounds, "tables": names,
                                              "truth": truth, "evolve_schema": evolve, "knobs": knobs.document()},
                                "rounds": []}
    if truth:
        planner = DeliveryPlanner(seed, scale, knobs, names)
        ground = GroundTruth(names, evolve=evolve)
        for number in range(1, rounds + 1):
            deliveries = planner.round(number)
            plan = _write_round(round_dir(root, number), deliveries, fingerprints=True)
            document["rounds"].append({"round": number, "files": len(plan), "plan": plan,
                                       "records_written": sum(d.version.row_count for d in deliveries if d.version),
                                       "tables": ground.load(number, deliveries)})
            ground.write(round_dir(root, number) / "truth")
    else:
        # Tables are independent: without a truth to gather, each is planned and written in a process of its own.
        jobs = [(root, name, rounds, seed, scale, knobs) for name in names]
        with ProcessPoolExecutor(max_workers=min(len(names), FAST_PROCESSES),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            per_table = list(pool.map(_table_deliveries, jobs))
        for number in range(1, rounds + 1):
            plan = [entry for table in per_table for entry in table[number - 1]["plan"]]
            document["rounds"].append({"round": number, "files": len(plan), "plan": plan,
                                       "records_written": sum(t[number - 1]["records"] for t in per_table)})
    for summary in document["rounds"]:
        folder = round_dir(root, summary["round"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLAN_FILE).write_text(json.dumps({"round": summary["round"], "files": summary.pop("plan")},
                                                   indent=1) + "\n")
    (root / CHAOS_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return document


FAST_PROCESSES = 2
"""Processes writing tables at once in `--fast` mode (the machine has 2 cores)."""


def _write_round(folder: Path, deliveries: Sequence[Delivery], *, fingerprints: bool) -> list[dict[str, Any]]:
    """Write the files a round adds or replaces under `folder/files`; return its plan entries."""
    plan = []
    for d in deliveries:
        entry: dict[str, Any] = {"path": d.path, "action": d.action, "keep_mtime": d.keep_mtime}
        if d.version is not None:
            target = folder / "files" / d.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(d.version.data)
            entry.update(table=d.version.table, size=len(d.version.data))
            if fingerprints:
                entry["fingerprint"] = d.version.fingerprint
        plan.append(entry)
    return plan


def _table_deliveries(job: tuple[Path, str, int, int, float, Knobs]) -> list[dict[str, Any]]:
    """Plan and write every round of one table (no truth); return per round its plan entries and records."""
    root, name, rounds, seed, scale, knobs = job
    planner = DeliveryPlanner(seed, scale, knobs, [name], truth=False)
    done = []
    for number in range(1, rounds + 1):
        deliveries = planner.round(number)
        done.append({"plan": _write_round(round_dir(root, number), deliveries, fingerprints=False),
                     "records": sum(d.version.row_count for d in deliveries if d.version)})
    return done


def apply_round(out: str | Path, number: int, raw: str | Path) -> list[dict[str, Any]]:
    """Deliver round `number` of a `--deliveries` output into the raw root `raw`; return its plan entries.

    Added and replaced files get the round's bytes; a re-delivery rewrites a file's own bytes. Every file delivered
    again gets a modification time after its previous one, unless the plan says to keep it (`keep_mtime`)."""
    folder = round_dir(out, number)
    plan: list[dict[str, Any]] = json.loads((folder / PLAN_FILE).read_text())["files"]
    for item in plan:
        target = Path(raw) / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        before = target.stat() if target.exists() else None
        data = target.read_bytes() if item["action"] == "redeliver" else (folder / "files" / item["path"]).read_bytes()
        target.write_bytes(data)
        if before is not None:
            later = max(time.time_ns(), before.st_mtime_ns + 1_000_000_000)
            mtime = before.st_mtime_ns if item["keep_mtime"] else later
            os.utime(target, ns=(before.st_atime_ns, mtime))
    return plan


def prepare_out(out: Path) -> None:
    """Empty `out` for a new run, refusing to touch a non-empty directory this script did not write."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SystemExit(f"refusing to replace {out}: it is not empty and has no {MARKER} from this script")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def generate(out: str | Path, seed: int = 42, scale: float = 1.0, dirty_fraction: float = 0.0,
             tables: Sequence[str] | None = None, clean: bool = False) -> dict[str, Any]:
    """Write the raw tables under `out` from scratch and return the `_expected.json` document."""
    if clean and dirty_fraction:
        raise ValueError("--clean and --dirty-fraction exclude each other")
    if not 0 <= dirty_fraction <= 1 or scale <= 0:
        raise ValueError("need scale > 0 and 0 <= dirty fraction <= 1")
    names = list(tables or GENERATORS)
    unknown = [t for t in names if t not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    root = Path(out)
    prepare_out(root)
    opts = Options(seed=seed, scale=scale, dirty_fraction=dirty_fraction, clean=clean)
    (root / MARKER).write_text(f"scripts/generate_raw_data.py seed={seed} scale={scale} dirty_fraction="
                               f"{dirty_fraction} clean={clean} tables={','.join(names)}\n")
    ledger = Ledger()
    for name in names:
        GENERATORS[name](root, opts, ledger)
    document = ledger.document(opts, names)
    (root / EXPECTED).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return document


KNOB_OPTIONS = ("duplicate_rate", "out_of_order", "update_rate", "late_rate", "redeliver_rate", "change_rate",
                "keep_mtime_rate", "drift_rate", "sparse_keys")


def knobs_from(args: argparse.Namespace) -> Knobs:
    """The knobs the command line asks for: drawn from the seed, or the defaults with the options given."""
    base = random_knobs(args.seed) if args.random_knobs else Knobs()
    changes: dict[str, Any] = {name: getattr(args, name) for name in (*KNOB_OPTIONS, "rows")
                               if getattr(args, name) is not None}
    dirty = dict(base.dirty)
    if args.dirty_rate is not None:
        dirty = dict.fromkeys((*ROW_REASONS, *FILE_REASONS), args.dirty_rate)
    dirty.update(parse_dirty(args.dirty or ""))
    return dataclasses.replace(base, **changes, dirty=dirty)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data_raw", help="output directory, replaced as a whole (default: data_raw)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0, help="row count multiplier (1 = the committed sample)")
    parser.add_argument("--dirty-fraction", type=float, default=0.0,
                        help="fraction of orders rows to corrupt on top of the planted cases")
    parser.add_argument("--tables", default="", help="comma-separated table names (default: all)")
    parser.add_argument("--clean", action="store_true", help="no planted bad rows and no bad files")
    deliveries = parser.add_argument_group("deliveries", "rounds of hostile deliveries with their ground truth")
    deliveries.add_argument("--deliveries", type=int, metavar="N", help="write N delivery rounds instead of the sample")
    deliveries.add_argument("--random-knobs", action="store_true", help="draw every knob from --seed")
    deliveries.add_argument("--rows", type=int, help=f"records per new file at scale 1 (default {Knobs.rows})")
    for name in KNOB_OPTIONS:
        deliveries.add_argument("--" + name.replace("_", "-"), type=float, dest=name, metavar="RATE",
                                help=f"default {getattr(Knobs, name)}")
    deliveries.add_argument("--dirty", metavar="CODE=RATE,...",
                            help=f"rates of planted faults by reason code: per record for {', '.join(ROW_REASONS)}; "
                                 f"per file for {', '.join(FILE_REASONS)} (default 0.01 each)")
    deliveries.add_argument("--dirty-rate", type=float, metavar="RATE", help="the same rate for every reason code")
    deliveries.add_argument("--fast", action="store_true", help="write the files only, no ground truth")
    deliveries.add_argument("--evolve-schema", action="store_true",
                            help="the truth of runs with --evolve-schema (columns outside the contract are added)")
    deliveries.add_argument("--apply-round", type=int, metavar="R",
                            help="deliver round R of the deliveries in --out into --raw, then exit")
    deliveries.add_argument("--raw", help="the raw root --apply-round delivers into")
    args = parser.parse_args(argv)
    if args.apply_round is not None:
        if not args.raw:
            parser.error("--apply-round needs --raw")
        for item in apply_round(args.out, args.apply_round, args.raw):
            print(f"{item['action']:9} {item['path']}")
        return
    if args.deliveries is not None:
        started = time.perf_counter()
        try:
            document = generate_deliveries(args.out, rounds=args.deliveries, seed=args.seed, scale=args.scale,
                                           knobs=knobs_from(args), tables=[t for t in args.tables.split(",") if t],
                                           truth=not args.fast, evolve=args.evolve_schema)
        except ValueError as exc:
            parser.error(str(exc))
        for summary in document["rounds"]:
            print(f"round {summary['round']}: {summary['files']} file(s), {summary['records_written']} records")
            for table, counts in summary.get("tables", {}).items():
                reasons_text = ", ".join(f"{code}={n}" for code, n in counts["reasons"].items()) or "-"
                print(f"  {table:12} {counts['files']:>4} files {counts['rows_read']:>9} read {counts['valid']:>9} "
                      f"valid {counts['rejected']:>7} rejected  {reasons_text}")
        records = sum(summary["records_written"] for summary in document["rounds"])
        elapsed = time.perf_counter() - started
        print(f"{records} records in {elapsed:.2f} s ({records / elapsed:,.0f} records/s); plan"
              f"{'' if args.fast else ' and ground truth'} under {args.out}; knobs in {Path(args.out) / CHAOS_FILE}")
        return
    try:
        document = generate(args.out, seed=args.seed, scale=args.scale, dirty_fraction=args.dirty_fraction,
                            tables=[t for t in args.tables.split(",") if t], clean=args.clean)
    except ValueError as exc:
        parser.error(str(exc))
    totals = {t: sum(f["rows"] for f in document["files"].values() if f["table"] == t) for t in document["valid_rows"]}
    for table, rows in totals.items():
        print(f"{table:15} {rows:>10} rows {document['valid_rows'][table]:>10} valid")
    print(f"{len(document['rejects'])} expected rejects; ground truth in {Path(args.out) / EXPECTED}")


if __name__ == "__main__":
    main()
