"""Generate the raw retail sample: every registry table in its delivery format, deliberately dirty, with ground truth.

`python scripts/generate_raw_data.py [--out DIR] [--seed N] [--scale X] [--dirty-fraction F] [--tables a,b] [--clean]`

The output is a pure function of seed, scale, dirty fraction, clean flag and table selection, byte for byte (the
Delta table and the workbook carry fixed ids and times, not those of the moment they are written). Besides the data,
the output root holds `_generated_by.txt` (the marker that allows a later run to replace the directory) and
`_expected.json`: per file the records read, valid and rejected, every planted reject, the rows per table and the
distinct keys each merge table keeps after the merge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from retail_bronze_source import reasons
from retail_bronze_source.registry import RETAIL_TABLES, TableSpec
from schemas.schemas import MONEY

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
    args = parser.parse_args(argv)
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
