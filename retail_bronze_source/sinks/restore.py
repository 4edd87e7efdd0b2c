"""Making a sink whole from the others: a lost warehouse from its lake's Delta tables, and the file ledger of a
warehouse whose dlt state is gone from its manifest.

The Delta mirror holds what the warehouse holds (merge tables one version per key, append tables every delivery, the
rejects, the manifest), with the same `_dlt_load_id` and `ingestion_ts`, so the warehouse is restored as it was at
the last load Delta mirrored. The file ledger says which file versions were loaded; the manifest records the same
thing per file, so a ledger rebuilt from it makes the next run read only what changed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from .. import settings
from ..helpers import load_id_order, quote_ident
from ..outputs import MANIFEST_TABLE
from ..storage import Store
from . import DATASET
from .delta import delta_tables, open_delta
from .warehouse import table_exists


def restore_warehouse(warehouse_db: Path, delta_root: Store) -> str | None:
    """Create `bronze.<table>` in `warehouse_db` from every Delta table under `delta_root`, streaming; return the
    newest `_dlt_load_id` restored (None when there was nothing to restore)."""
    newest: list[Decimal] = []
    tables = delta_tables(delta_root)
    warehouse_db.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse_db)) as con:
        con.execute(f"SET memory_limit = '{settings.DUCKDB_MEMORY_LIMIT}'")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {DATASET}")
        for name, target in tables:
            table = open_delta(target)
            if table is None:
                continue
            order = table.schema().to_arrow().names  # the table's own column order (partition columns in place)
            reader = table.to_pyarrow_dataset().scanner(batch_size=settings.BATCH_ROWS).to_reader()
            con.register("delta_rows", reader)
            try:
                columns = ", ".join(quote_ident(c) for c in order)
                con.execute(f"CREATE OR REPLACE TABLE {DATASET}.{quote_ident(name)} AS SELECT {columns} FROM "
                            "delta_rows")
            finally:
                con.unregister("delta_rows")
            if "_dlt_load_id" in order:
                found = con.execute(f"SELECT max({load_id_order('_dlt_load_id')}) FROM {DATASET}."
                                    f"{quote_ident(name)}").fetchone()
                if found and found[0] is not None:
                    newest.append(Decimal(str(found[0])))
    if not newest:
        return None
    return format(max(newest), "f")


def manifest_ledgers(warehouse_db: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The file ledger of each table as the manifest records it: the newest version of each file that was read
    (files that could not be read at all are left out, so they are read again)."""
    if not warehouse_db.exists():
        return {}
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        if not table_exists(con, MANIFEST_TABLE):
            return {}
        rows = con.execute(
            f"SELECT table_name, src_path, file_fingerprint FROM {DATASET}.{MANIFEST_TABLE} "
            "WHERE file_fingerprint NOT LIKE 'unreadable:%' "
            "QUALIFY row_number() OVER (PARTITION BY table_name, src_path "
            f"ORDER BY {load_id_order('load_id')} DESC, processed_at DESC) = 1").fetchall()
    ledgers: dict[str, dict[str, dict[str, Any]]] = {}
    for table, path, fingerprint in rows:
        ledgers.setdefault(table, {})[path] = {"fingerprint": fingerprint, "signature": None}
    return ledgers
