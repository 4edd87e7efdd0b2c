"""Pyarrow contracts of the retail Bronze tables.

Each contract is a `pyarrow.Schema` whose fields carry their own checks as field metadata:

- nullability: `nullable=False` means the value is required (`NOT_NULL`);
- `accepted_values`: JSON list of allowed values (`ACCEPTED_VALUES`);
- `min` / `max`: inclusive bounds, as text in the field's type (`OUT_OF_RANGE`);
- `pattern`: a regular expression the whole value must match (`PATTERN_MISMATCH`);
- `json`: the column holds a JSON document kept as text (loaded as dlt's `json` type);
- `mostly_distinct`: text whose values seldom repeat (e-mail addresses, identifiers, hashes): the DuckDB warehouse
  stores it with FSST compression instead of first trying a dictionary for it.

Timestamps are `timestamp("us", tz="UTC")`; money is `decimal128`. Only the business columns are declared here:
the audit columns are added by `retail_bronze_source.audit`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(12, 2)

ISO_COUNTRY = r"[A-Z]{2}"
ISO_CURRENCY = r"[A-Z]{3}"
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
MOSTLY_DISTINCT = "mostly_distinct"
"""Field metadata key of text whose values seldom repeat (value `"true"`)."""
CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK", "PLN", "JPY")


def col(
    name: str,
    type_: pa.DataType,
    *,
    required: bool = False,
    accepted: Sequence[str] | None = None,
    min_value: str | None = None,
    max_value: str | None = None,
    pattern: str | None = None,
    json_text: bool = False,
    mostly_distinct: bool = False,
) -> pa.Field:
    """Declare one contract column with its checks stored as field metadata."""
    meta: dict[str, str] = {}
    if accepted is not None:
        meta["accepted_values"] = json.dumps(list(accepted))
    if min_value is not None:
        meta["min"] = min_value
    if max_value is not None:
        meta["max"] = max_value
    if pattern is not None:
        meta["pattern"] = pattern
    if json_text:
        meta["json"] = "true"
    if mostly_distinct:
        meta[MOSTLY_DISTINCT] = "true"
    return pa.field(name, type_, nullable=not required, metadata=meta or None)


CUSTOMERS = pa.schema(
    [
        col("customer_id", pa.int64(), required=True, min_value="1"),
        col("email", pa.string(), required=True, pattern=EMAIL, mostly_distinct=True),
        col("first_name", pa.string(), required=True),
        col("last_name", pa.string(), required=True),
        col("country_code", pa.string(), required=True, pattern=ISO_COUNTRY),
        col("loyalty_tier", pa.string(), accepted=("bronze", "silver", "gold", "platinum")),
        col("is_active", pa.bool_(), required=True),
        col("created_at", UTC_TS, required=True),
        col("updated_at", UTC_TS, required=True),
    ]
)

PRODUCTS = pa.schema(
    [
        col("product_id", pa.int64(), required=True, min_value="1"),
        col("sku", pa.string(), required=True, pattern=r"SKU-[0-9]{6}"),
        col("product_name", pa.string(), required=True),
        col("category", pa.string(), required=True, accepted=("grocery", "apparel", "electronics", "home", "toys", "beauty")),
        col("unit_price", MONEY, required=True, min_value="0", max_value="100000"),
        col("currency", pa.string(), required=True, pattern=ISO_CURRENCY),
        col("is_active", pa.bool_(), required=True),
        col("updated_at", UTC_TS, required=True),
    ]
)

STORES = pa.schema(
    [
        col("store_id", pa.int64(), required=True, min_value="1"),
        col("store_name", pa.string(), required=True),
        col("country_code", pa.string(), required=True, pattern=ISO_COUNTRY),
        col("city", pa.string(), required=True),
        col("store_format", pa.string(), required=True, accepted=("hypermarket", "supermarket", "express", "online")),
        col("opened_on", pa.date32()),
        col("updated_at", UTC_TS, required=True),
    ]
)

ORDERS = pa.schema(
    [
        col("order_id", pa.int64(), required=True, min_value="1"),
        col("customer_id", pa.int64(), required=True, min_value="1"),
        col("store_id", pa.int64(), required=True, min_value="1"),
        col("order_ts", UTC_TS, required=True),
        col("order_dt", pa.date32(), required=True),
        col("status", pa.string(), required=True, accepted=("placed", "paid", "shipped", "delivered", "cancelled")),
        col("channel", pa.string(), required=True, accepted=("web", "app", "store")),
        col("currency", pa.string(), required=True, pattern=ISO_CURRENCY),
        col("total_amount", MONEY, required=True, min_value="0", max_value="1000000"),
        col("customer_email", pa.string(), pattern=EMAIL, mostly_distinct=True),
        col("note", pa.string()),
        col("updated_at", UTC_TS, required=True),
    ]
)

ORDER_ITEMS = pa.schema(
    [
        col("order_id", pa.int64(), required=True, min_value="1"),
        col("line_no", pa.int32(), required=True, min_value="1", max_value="999"),
        col("product_id", pa.int64(), required=True, min_value="1"),
        col("quantity", pa.int32(), required=True, min_value="1", max_value="1000"),
        col("unit_price", MONEY, required=True, min_value="0", max_value="100000"),
        col("discount_pct", pa.decimal128(5, 2), min_value="0", max_value="100"),
        col("updated_at", UTC_TS, required=True),
    ]
)

RETURNS = pa.schema(
    [
        col("return_id", pa.int64(), required=True, min_value="1"),
        col("order_id", pa.int64(), required=True, min_value="1"),
        col("product_id", pa.int64(), required=True, min_value="1"),
        col("quantity", pa.int32(), required=True, min_value="1", max_value="1000"),
        col("refund_amount", MONEY, required=True, min_value="0", max_value="100000"),
        col("currency", pa.string(), required=True, pattern=ISO_CURRENCY),
        col("reason", pa.string(), required=True, accepted=("damaged", "wrong_item", "not_as_described", "changed_mind", "late_delivery")),
        col("is_deleted", pa.bool_(), required=True),
        col("returned_at", UTC_TS, required=True),
        col("updated_at", UTC_TS, required=True),
    ]
)

EXCHANGE_RATES = pa.schema(
    [
        col("rate_date", pa.date32(), required=True),
        col("base_currency", pa.string(), required=True, accepted=CURRENCIES),
        col("quote_currency", pa.string(), required=True, accepted=CURRENCIES),
        col("rate", pa.decimal128(18, 8), required=True, min_value="0.00000001", max_value="100000"),
    ]
)

EVENTS = pa.schema(
    [
        col("event_id", pa.string(), required=True, pattern=r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        col("event_ts", UTC_TS, required=True),
        col("event_type", pa.string(), required=True, accepted=("page_view", "search", "add_to_cart", "checkout", "purchase", "login")),
        col("channel", pa.string(), required=True, accepted=("web", "app")),
        col("customer_id", pa.int64(), min_value="1"),
        col("session_id", pa.string(), required=True),
        col("properties", pa.string(), json_text=True),
    ]
)

SENSORS = pa.schema(
    [
        col("sensor_id", pa.string(), required=True, pattern=r"SN-[0-9]{5}"),
        col("store_id", pa.int64(), required=True, min_value="1"),
        col("reading_ts", UTC_TS, required=True),
        col("metric", pa.string(), required=True, accepted=("temperature_c", "humidity_pct", "power_kw", "footfall")),
        col("value", pa.float64(), required=True, min_value="-60", max_value="100000"),
        col("battery_pct", pa.int32(), min_value="0", max_value="100"),
    ]
)
