"""The rejects CSVs: `<lake>/_rejects/<table>/<load_id>.csv`, the reject records of each load and table, safe to open in
a spreadsheet. A sink like the others: every (table, load) of the warehouse's rejects that has no CSV gets one, so a
killed run or a deleted folder is made whole by the next run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..outputs import REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE
from ..redact import spreadsheet_safe
from ..storage import Store
from . import DATASET
from .warehouse import table_exists


def write_rejects_csv(rejects: pa.Table, rejects_root: Store, name: str) -> list[str]:
    """Write reject records as CSV, one file `<rejects_root>/<table>/<name>.csv` per table; return the paths.

    The files are made to be opened in a spreadsheet: every text cell goes through `redact.spreadsheet_safe` (a cell
    starting like a formula gets a leading `'`; control characters are shown as control pictures, `␊` for a line
    feed), so each record is one line. The warehouse and the lake keep the exact values. A file appears whole or not
    at all: written aside and renamed on a local disk, uploaded as one object on object storage.
    """
    written = []
    tables = sorted(pc.unique(rejects["table_name"]).to_pylist()) if rejects.num_rows else []
    for table in tables:
        part = rejects.filter(pc.equal(rejects["table_name"], table))
        safe = _spreadsheet_safe(_timestamps_as_text(part))
        if rejects_root.is_local:
            target = rejects_root.local_path / table / f"{name}.csv"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".csv.tmp")
            pacsv.write_csv(safe, tmp)
            tmp.replace(target)
            written.append(str(target))
        else:
            with rejects_root.fs.open(rejects_root.path_of(table, f"{name}.csv"), "wb") as sink:
                pacsv.write_csv(safe, sink)
            written.append(rejects_root.url_of(table, f"{name}.csv"))
    return written

def _spreadsheet_safe(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(i, field, spreadsheet_safe(table.column(i)))
    return table

def _timestamps_as_text(table: pa.Table) -> pa.Table:
    """`table` with its time-zone-aware timestamp columns as Arrow's text of them, each distinct value formatted once.

    The CSV writer formats such timestamps value by value through the time zone database;
    a run's reject records share one or two `ingestion_ts` values.
    """
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            values = table.column(i)
            distinct = pc.unique(values)
            text = pc.cast(distinct, pa.string()).take(pc.index_in(values, distinct))
            table = table.set_column(i, pa.field(field.name, pa.string(), field.nullable), text)
    return table

def rejects_csv_name(load_id: str) -> str:
    return f"{load_id}.csv"

def sync_rejects_csv(warehouse_db: Path, rejects_root: Store) -> list[str]:
    """Write the rejects CSV of every (table, load) of the warehouse's rejects that has none yet; return the paths.

    The CSV files are a sink like the others: a run killed before it wrote them, or a deleted CSV folder, is made
    whole by the next run."""
    if not warehouse_db.exists():
        return []
    fs, root = rejects_root.fs, rejects_root.root
    present = {tuple(path.rsplit("/", 2)[-2:]) for path in fs.glob(f"{root}/*/*.csv")} if fs.isdir(root) else set()
    with duckdb.connect(str(warehouse_db), read_only=True) as con:
        if not table_exists(con, REJECTS_TABLE):
            return []
        loads = con.execute(f"SELECT DISTINCT table_name, load_id FROM {DATASET}.{REJECTS_TABLE} "
                            "WHERE load_id IS NOT NULL").fetchall()
        missing = sorted({(table, load_id) for table, load_id in loads if (table, rejects_csv_name(load_id)) not in present})
        written = []
        for load_id in sorted({load_id for _, load_id in missing}):
            tables = sorted(table for table, other in missing if other == load_id)
            placeholders = ", ".join("?" for _ in tables)
            rejects = con.execute(
                f"SELECT {', '.join(REJECTS_OUTPUT_SCHEMA.names)} FROM {DATASET}.{REJECTS_TABLE} WHERE load_id = ? AND "
                f"table_name IN ({placeholders}) ORDER BY table_name, src_filename, src_row_number, reason_code",
                [load_id, *tables]).to_arrow_table()
            written += write_rejects_csv(rejects, rejects_root, load_id)
    return written
