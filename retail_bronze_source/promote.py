"""Schema evolution after the fact: columns kept in `_rescued_data` promoted to real columns of rows already loaded.

A file loaded without `evolve_schema` keeps its columns outside the contract in `_rescued_data` (a JSON object per
row). Promoting them adds each as a text column (the values as they were rescued) to the warehouse table and to its
Delta mirror, moves the values out of `_rescued_data`, records the addition in the dlt schema (so dlt's loads know the
column) and in `bronze.schema_history`. The Parquet change log is a log of what was loaded and is not rewritten: its
files keep the values in `_rescued_data`. Later files fill a promoted column directly, like any column of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake
from dlt.pipeline.pipeline import Pipeline

from . import settings
from .helpers import quote_ident, quote_literal
from .outputs import RESCUED
from .sinks import DATASET
from .sinks.delta import APP_ID, SOURCE_APP_ID, open_delta
from .sinks.warehouse import table_exists
from .storage import Store


@dataclass(frozen=True)
class Promotion:
    """A column promoted out of `_rescued_data` (or refused, with the reason)."""

    table_name: str
    key: str
    """The key in `_rescued_data`."""
    column_name: str
    rows: int
    """Rows that had a value for it."""
    refused: str | None = None


def rescued_keys(warehouse_db: Path, table: str) -> list[str]:
    """The keys found in `_rescued_data` of a warehouse table."""
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        if not table_exists(con, table):
            return []
        columns = {r[0] for r in con.execute(f"DESCRIBE {DATASET}.{quote_ident(table)}").fetchall()}
        if RESCUED not in columns:
            return []
        rows = con.execute(f"SELECT DISTINCT unnest(json_keys({quote_ident(RESCUED)})) FROM {DATASET}."
                           f"{quote_ident(table)} WHERE {quote_ident(RESCUED)} IS NOT NULL").fetchall()
    return sorted(r[0] for r in rows)


def plan_promotions(warehouse: Pipeline, warehouse_db: Path, tables: list[str]) -> list[Promotion]:
    """What promoting the rescued columns of `tables` would do: one entry per key, refused where the column name
    (normalized as dlt names columns) is already taken or given to two keys."""
    naming = warehouse.default_schema.naming if warehouse.default_schema_name else None
    plans = []
    for table in tables:
        keys = rescued_keys(warehouse_db, table)
        if not keys:
            continue
        with duckdb.connect(str(warehouse_db), read_only=True) as con:
            existing = {r[0] for r in con.execute(f"DESCRIBE {DATASET}.{quote_ident(table)}").fetchall()}
            counts = {key: (con.execute(
                f"SELECT count(*) FROM {DATASET}.{quote_ident(table)} WHERE "
                f"json_exists({quote_ident(RESCUED)}, {quote_literal(_path(key))})").fetchone() or (0,))[0]
                for key in keys}
        names = {key: naming.normalize_identifier(key) if naming else key for key in keys}
        for key in keys:
            name = names[key]
            refused = None
            if not name:
                refused = "its name is empty once normalized"
            elif name in existing:
                refused = f"the table already has a column {name}"
            elif sum(1 for other in names.values() if other == name) > 1:
                refused = f"several rescued keys become the column name {name}"
            plans.append(Promotion(table, key, name, int(counts[key]), refused))
    return plans


def _path(key: str) -> str:
    """The JSON path of a top-level key (quoted, so any key works)."""
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def promote(warehouse: Pipeline, warehouse_db: Path, delta_root: Store, plans: list[Promotion]) -> list[Promotion]:
    """Carry out the promotions of `plans` that are not refused; return them.

    Each step can be done again: the Delta mirror first, then the warehouse (whose rescued keys are the plan), so
    that a promotion stopped in between is finished by the next; a column the mirror has already (a promotion
    stopped before the warehouse's, or one a `--reload` undid in the warehouse only: the mirror's table keeps its
    columns when its rows are replaced) is filled, and becomes text like the warehouse's."""
    done = [p for p in plans if p.refused is None]
    for table in sorted({p.table_name for p in done}):
        mine = [p for p in done if p.table_name == table]
        _promote_delta(delta_root.child(table), mine)
        _promote_warehouse(warehouse_db, table, mine)
        _declare(warehouse, table, mine)
    return done


def _moved(promotions: list[Promotion], source: str, present: frozenset[str] = frozenset()) -> tuple[list[str], str]:
    """SQL of the promoted columns taken from `source`'s `_rescued_data` (values a column of `present` holds
    already are kept where the rescued data has none), and of what stays in `_rescued_data`."""
    rescued = quote_ident(RESCUED)
    values = []
    for p in promotions:
        value = f"json_extract_string({source}.{rescued}, {quote_literal(_path(p.key))})"
        if p.column_name in present:
            value = f"coalesce({value}, CAST({source}.{quote_ident(p.column_name)} AS VARCHAR))"
        values.append(f"{value} AS {quote_ident(p.column_name)}")
    removed = "{" + ", ".join(f'"{_json_key(p.key)}": null' for p in promotions) + "}"
    rest = f"json_merge_patch({source}.{rescued}, {quote_literal(removed)})"
    stays = f"CASE WHEN {source}.{rescued} IS NULL OR {rest} = '{{}}' THEN NULL ELSE {rest} END"
    return values, stays


def _json_key(key: str) -> str:
    return key.replace("\\", "\\\\").replace('"', '\\"')


def _promote_warehouse(warehouse_db: Path, table: str, promotions: list[Promotion]) -> None:
    name = f"{DATASET}.{quote_ident(table)}"
    values, stays = _moved(promotions, "t")
    with duckdb.connect(str(warehouse_db)) as con:
        con.execute("BEGIN")
        for promotion in promotions:
            con.execute(f"ALTER TABLE {name} ADD COLUMN {quote_ident(promotion.column_name)} VARCHAR")
        assignments = [f"{quote_ident(p.column_name)} = {v.rsplit(' AS ', 1)[0]}" for p, v in zip(promotions, values,
                                                                                                   strict=True)]
        con.execute(f"UPDATE {name} AS t SET {', '.join(assignments)}, {quote_ident(RESCUED)} = {stays} "
                    f"WHERE t.{quote_ident(RESCUED)} IS NOT NULL")
        con.execute("COMMIT")


def _promote_delta(target: Store, promotions: list[Promotion]) -> None:
    """Rewrite the Delta table with the promoted columns (a new version: older ones stay readable until vacuumed),
    keeping the mirror's application transactions."""
    table = open_delta(target)
    if table is None:
        return
    partitions = table.metadata().partition_columns
    promoted = {p.column_name for p in promotions}
    names = list(table.schema().to_arrow().names)
    order = [n for n in names if n not in promoted]
    values, stays = _moved(promotions, "d", frozenset(names) & promoted)
    kept = ", ".join(f"d.{quote_ident(c)}" if c != RESCUED else f"{stays} AS {quote_ident(RESCUED)}" for c in order)
    transactions = [Transaction(app_id=app, version=version) for app in (APP_ID, SOURCE_APP_ID)
                    if (version := table.transaction_version(app)) is not None]
    dataset = table.to_pyarrow_dataset()
    before = {f.name: f for f in dataset.schema}
    schema = pa.schema([before[name].remove_metadata() for name in order] +
                       [pa.field(p.column_name, pa.string()) for p in promotions])
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        con.register("d", dataset)
        reader = con.execute(f"SELECT {kept}, {', '.join(values)} FROM d").to_arrow_reader(settings.BATCH_ROWS)
        plain = pa.RecordBatchReader.from_batches(schema, (b.cast(schema) for b in reader))
        write_deltalake(table, plain, mode="overwrite", schema_mode="overwrite", partition_by=partitions or None,
                        commit_properties=CommitProperties(app_transactions=transactions,
                                                           custom_metadata={"retail_bronze.operation": "promote"}))


def _declare(warehouse: Pipeline, table: str, promotions: list[Promotion]) -> None:
    """Add the promoted columns to the table in the warehouse pipeline's dlt schema."""
    if not warehouse.default_schema_name:
        return
    schema = warehouse.default_schema
    columns: Any = schema.tables[table]["columns"]
    for promotion in promotions:
        columns[promotion.column_name] = {"name": promotion.column_name, "data_type": "text", "nullable": True}
    warehouse.schemas.save_schema(schema)


def history_rows(promotions: list[Promotion]) -> list[dict[str, Any]]:
    """`bronze.schema_history` rows of the promotions."""
    now = datetime.now(UTC)
    return [{"table_name": p.table_name, "column_name": p.column_name, "data_type": "text", "load_id": None,
             "changed_at": now} for p in promotions]
