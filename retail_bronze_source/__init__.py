"""retail_bronze: a declarative dlt source landing raw retail and store-telemetry files into a Bronze layer.

`retail_source()` has one resource per registry table (`customers`, `products`, `stores`, `orders`, `order_items`,
`returns`, `exchange_rates`, `events`, `sensors` in the shipped registry). Each resource also writes the shared
`rejects` table (one record per failed check, with reason code and original record) and the
`manifest_processed_files` table (one row per processed file, rows conserved).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.extract.resource import DltResource
from dlt.extract.source import DltSource

from . import reasons
from .outputs import DELETE_INSERT, dlt_columns
from .registry import RETAIL_TABLES, TableSpec, select_tables
from .resources import EVOLVE_CONTRACT, SCHEMA_CONTRACT, SinkOptions, bronze_resources, table_resource
from .settings import DEFAULT_CHUNK_SIZE

SECTION = "retail_bronze"
"""The config section of the source: `[sources.retail_bronze]` in `.dlt/config.toml`, `SOURCES__RETAIL_BRONZE__*`."""
SOURCE_NAME = "retail_bronze"
"""The source's name, which is also the name of its dlt schema."""


@dlt.source(section=SECTION, name=SOURCE_NAME, max_table_nesting=0)
def retail_source(
    raw_url: str = dlt.config.value,
    table_names: Sequence[str] | None = None,
    ingestion_ts: datetime | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    evolve_schema: bool = False,
    tables: Sequence[TableSpec] | None = None,
) -> list[DltResource]:
    """One resource per registry table reading the raw files under `raw_url` (local path or fsspec URL).

    `tables` replaces the shipped registry with your own entries; `table_names` selects some of them. `ingestion_ts`
    (UTC, default now) stamps every row: pass the same value to every pipeline of one run. `evolve_schema` adds
    columns outside the contract to the tables, with their types, instead of keeping them in `_rescued_data` (a
    table's own `TableSpec.evolve_schema` wins). Every argument but `tables` and `ingestion_ts` can also be set in
    `[sources.retail_bronze]` of `.dlt/config.toml` or as `SOURCES__RETAIL_BRONZE__<ARGUMENT>`.
    """
    return bronze_resources(select_tables(tables or RETAIL_TABLES, table_names), raw_url,
                            ingestion_ts=_utc(ingestion_ts), chunk_size=chunk_size, evolve_schema=evolve_schema)


def run_source(specs: Sequence[TableSpec], raw_url: str, *, ingestion_ts: datetime, evolve_schema: bool | None,
               chunk_size: int | None, options: SinkOptions, extra: Sequence[DltResource] = (),
               ledger_seeds: Mapping[str, Mapping[str, Any]] | None = None) -> DltSource:
    """The source as `run_bronze` loads it into its warehouse: the same resources with the warehouse's `options`,
    plus the run's own `extra` resources. `ledger_seeds` are file ledgers for tables whose ledger is empty (rebuilt
    from the warehouse's manifest when its dlt state was lost).

    `evolve_schema` None takes the configured value (`[sources.retail_bronze] evolve_schema`, default False)."""
    if evolve_schema is None:
        evolve_schema = bool(dlt.config.get(f"sources.{SECTION}.evolve_schema", bool) or False)
    resources = bronze_resources(specs, raw_url, ingestion_ts=_utc(ingestion_ts),
                                 chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, evolve_schema=evolve_schema,
                                 options=options, ledger_seeds=ledger_seeds)

    @dlt.source(section=SECTION, name=SOURCE_NAME, max_table_nesting=0)
    def retail_bronze() -> list[DltResource]:
        return [*resources, *extra]

    return retail_bronze()


def _utc(stamp: datetime | None) -> datetime:
    return (stamp or datetime.now(UTC)).astimezone(UTC)


__all__ = ["DELETE_INSERT", "EVOLVE_CONTRACT", "RETAIL_TABLES", "SCHEMA_CONTRACT", "TableSpec", "dlt_columns",
           "reasons", "retail_source", "table_resource"]
