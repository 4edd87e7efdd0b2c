"""The dlt resources: one per registry table, with hints derived from its registry entry and pyarrow contract.

Each resource writes three tables, each declared as a dlt table variant so that their hints never mix: the table
itself (contract columns plus audit columns), `rejects` and `manifest_processed_files`. Every guarantee the source
makes is kept here, in the resource, so that it holds for every caller (the CLI, `run_bronze`, or a data engineer's
own pipeline into any destination):
- every row carries `_dlt_load_id`, whatever the normalizer configuration;
- a version of a key older than the one the destination holds never replaces it (`loaded.LoadedVersions`);
- the write disposition of each item follows what the destination can do (delete-insert on SQL destinations,
  upsert on Delta and Iceberg, plain append on plain files; see `RowDispositions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import dlt
import pyarrow as pa
from dlt.common.schema.typing import TSchemaContractDict
from dlt.extract.resource import DltResource

from . import settings
from .discovery import discover_files
from .extract import StagedLoad, TableExtractor
from .loaded import LoadedVersions
from .outputs import (
    APPEND_MERGE_KEY,
    DELETE_INSERT,
    LOAD_ID,
    LOAD_ID_FIELD,
    MANIFEST_KEY,
    MANIFEST_SCHEMA,
    MANIFEST_TABLE,
    POSITION_KEY,
    REJECTS_MERGE_KEY,
    REJECTS_OUTPUT_SCHEMA,
    REJECTS_TABLE,
    SRC_SHEET,
    UPSERT,
    dlt_columns,
    load_id_column,
    output_columns,
    table_schema,
)
from .parquet_files import RowFiles, files_for
from .raw import RawFile
from .registry import TableSpec
from .storage import RAW_SECTION, Store, open_store
from .workdirs import staging_dir

SCHEMA_CONTRACT: TSchemaContractDict = {"tables": "evolve", "columns": "freeze", "data_type": "freeze"}
"""dlt never adds, changes or drops a column silently: anything outside the contract fails the load loudly."""
EVOLVE_CONTRACT: TSchemaContractDict = {"tables": "evolve", "columns": "evolve", "data_type": "freeze"}
"""With `evolve_schema`, columns outside the contract are added (with their types) instead of rescued."""


@dataclass(frozen=True)
class SinkOptions:
    """How the rows reach one particular destination; chosen by `run_bronze` for its DuckDB warehouse, never by a
    library caller (the defaults are right for any destination)."""

    append_new_rows: bool = False
    """Rows that cannot replace loaded rows (the first load of a merge table, new files of an append table, reject
    records) load as plain append, without dlt's staging copy. Safe only where interrupted load jobs are undone
    before they are retried (`sinks.warehouse.undo_interrupted_jobs`), as a plain append is not idempotent."""
    parquet_files: bool = False
    """The resource writes each table's rows to Parquet files itself and hands them to dlt as they are (needs
    `loader_file_format="parquet"` and a destination that loads Parquet)."""
    progress: Callable[[TableProgress], None] | None = None
    """Called once per table when its extraction has handed everything to dlt (the run's progress lines, and the
    files it found unchanged, which no sink records)."""


@dataclass(frozen=True)
class TableProgress:
    """One table's extraction, done: the files found under the raw root, those read (new or changed) and the rows
    handed to dlt."""

    table_name: str
    files_found: int
    files_read: int
    rows_emitted: int
    seconds: float

    @property
    def files_unchanged(self) -> int:
        return self.files_found - self.files_read


@dataclass(frozen=True)
class RowDispositions:
    """The write disposition of each kind of item, for what the destination can do."""

    strategies: tuple[str, ...] | None
    """The destination's merge strategies for this table; None outside a pipeline (then delete-insert is assumed)."""

    @classmethod
    def current(cls) -> RowDispositions:
        """The dispositions for the resource being extracted, from the destination of the pipeline extracting it
        (and the table format given to that pipeline's `run`, such as `table_format="delta"`)."""
        from dlt.common.configuration.container import Container
        from dlt.common.pipeline import PipelineContext

        context = Container()[PipelineContext]
        pipeline: Any = context.pipeline() if context.is_active() else None
        if pipeline is None or pipeline.destination is None:
            return cls(None)
        caps = pipeline.destination.capabilities()
        strategies: Sequence[str] = caps.supported_merge_strategies or []
        if caps.merge_strategies_selector:
            table = dlt.current.resource().compute_table_schema()
            strategies = caps.merge_strategies_selector(strategies, table_schema=table)  # type: ignore[arg-type]
        return cls(tuple(strategies))

    @property
    def deletes_and_inserts(self) -> bool:
        return self.strategies is None or "delete-insert" in self.strategies

    @property
    def upserts(self) -> bool:
        return not self.deletes_and_inserts and "upsert" in (self.strategies or ())


def table_resource(spec: TableSpec, raw_url: str | Store, *, ingestion_ts: datetime,
                   chunk_size: int = settings.DEFAULT_CHUNK_SIZE,
                   evolve_schema: bool = False, options: SinkOptions = SinkOptions(),
                   ledger_seed: Mapping[str, Any] | None = None) -> DltResource:
    """The dlt resource of one registry table, with hints derived from the registry entry and its contract.

    Every table loads idempotently: merge tables by key, append tables by the file they came from (a changed file's
    rows replace its earlier rows), rejects by file, load and reason, the manifest by file version. `raw_url` is the
    raw root: a `Store`, or a local path or fsspec URL opened with the credentials of `[sources.retail_bronze]`.
    """
    raw = raw_url if isinstance(raw_url, Store) else open_store(raw_url, RAW_SECTION)
    columns = dlt_columns(table_schema(spec))
    columns[LOAD_ID] = load_id_column()
    hard_delete = bool(spec.hard_delete and spec.delete_marker)
    if hard_delete:
        columns[cast(str, spec.delete_marker)]["hard_delete"] = True
    primary_key = list(spec.primary_key) if spec.write_disposition == "merge" else []
    merge_key = [] if spec.write_disposition == "merge" else APPEND_MERGE_KEY
    may_append = options.append_new_rows and not hard_delete

    def hints(kind: str, dispositions: RowDispositions, *, replaces: bool) -> Any:
        """The hints of one item kind for this load (`replaces`: rows of this load may replace loaded rows)."""
        if kind == "rejects":
            plain = options.append_new_rows or not dispositions.deletes_and_inserts
            return dlt.mark.make_hints(table_name=REJECTS_TABLE, write_disposition="append" if plain else DELETE_INSERT,
                                       primary_key=[], merge_key=[] if plain else REJECTS_MERGE_KEY,
                                       columns=output_columns(REJECTS_OUTPUT_SCHEMA))
        if kind == "manifest":
            manifest_columns = output_columns(MANIFEST_SCHEMA)
            if dispositions.strategies == ():
                return dlt.mark.make_hints(table_name=MANIFEST_TABLE, write_disposition="append", primary_key=[],
                                           merge_key=[], columns=manifest_columns)
            return dlt.mark.make_hints(table_name=MANIFEST_TABLE,
                                       write_disposition=DELETE_INSERT if dispositions.deletes_and_inserts else UPSERT,
                                       primary_key=list(MANIFEST_KEY), merge_key=[], columns=manifest_columns)
        if dispositions.deletes_and_inserts:
            if may_append and not replaces:
                return dlt.mark.make_hints(table_name=spec.name, columns=columns, write_disposition="append")
            return dlt.mark.make_hints(table_name=spec.name, columns=columns, write_disposition=DELETE_INSERT,
                                       primary_key=primary_key, merge_key=merge_key)
        if dispositions.upserts and (spec.write_disposition == "merge" or replaces):
            keys = primary_key or [*POSITION_KEY, *([SRC_SHEET] if spec.has_sheets else [])]
            return dlt.mark.make_hints(table_name=spec.name, columns=columns, write_disposition=UPSERT,
                                       primary_key=keys, merge_key=[])
        return dlt.mark.make_hints(table_name=spec.name, columns=columns, write_disposition="append",
                                   primary_key=[], merge_key=[])

    def rows() -> Iterator[Any]:
        started = time.monotonic()
        found = discover_files(spec, raw)
        load = yield from staged_rows(found)
        if options.progress is not None:
            options.progress(TableProgress(spec.name, len(found), len(load.files), load.rows_to_emit,
                                           time.monotonic() - started))

    def staged_rows(found: list[RawFile]) -> Generator[Any, None, StagedLoad]:
        ledger = dlt.current.resource_state().setdefault("files", {})
        for path, entry in (ledger_seed or {}).items():
            if ledger.get(path, {}).get("fingerprint") != entry["fingerprint"]:
                ledger[path] = dict(entry)
        load_id = dlt.current.load_package_state()["load_id"]
        schema = dlt.current.source_schema()
        loaded = schema.tables.get(spec.name, {}).get("columns", {})
        types = {name: str(column["data_type"]) for name, column in loaded.items() if column.get("data_type")}
        dispositions = RowDispositions.current()
        versions = LoadedVersions.of_active_pipeline()
        extractor = TableExtractor(spec, ingestion_ts=ingestion_ts, load_id=load_id, chunk_size=chunk_size,
                                   ledger=ledger, evolve_schema=evolve_schema, column_types=types,
                                   column_name=schema.naming.normalize_identifier,
                                   newer_versions=_newer_versions(versions, spec.name))
        stamp = _load_id_stamper(load_id)
        with extractor.stage(found) as load:
            outputs = extractor.outputs(load)
            if not options.parquet_files:
                for kind, table in outputs:
                    replaces = kind == "rows" and load.replaces_loaded_rows
                    yield dlt.mark.with_hints(stamp(table), hints(kind, dispositions, replaces=replaces),
                                              create_table_variant=True)
                return load
            with staging_dir(f"{spec.name}_rows") as tmp, ExitStack() as stack:
                files: RowFiles | None = None
                for kind, table in outputs:
                    if kind != "rows":
                        yield dlt.mark.with_hints(stamp(table), hints(kind, dispositions, replaces=False),
                                                  create_table_variant=True)
                        continue
                    if files is None:
                        files = stack.enter_context(RowFiles(Path(tmp), spec.name, files=files_for(load.rows_to_emit)))
                    files.write(stamp(table))
                if files is None:
                    return load
                row_hints = hints("rows", dispositions, replaces=load.replaces_loaded_rows)
                # Imported last: their hints become the resource's own, which table variants created later would copy.
                for written in files.close():
                    data = pa.schema([f for f in written.schema if f.name != LOAD_ID])
                    file_columns = {**dlt_columns(data), **columns}
                    file_hints = dlt.mark.make_hints(table_name=spec.name, columns=file_columns,
                                                     write_disposition=row_hints.get("write_disposition"),
                                                     primary_key=row_hints.get("primary_key", primary_key),
                                                     merge_key=row_hints.get("merge_key", merge_key))
                    yield dlt.mark.with_file_import(str(written.path), "parquet", written.rows, hints=file_hints)
        return load

    return dlt.resource(
        rows(),
        name=spec.name,
        table_name=spec.name,
        write_disposition=DELETE_INSERT,
        primary_key=primary_key,
        merge_key=merge_key,
        schema_contract=EVOLVE_CONTRACT if evolve_schema else SCHEMA_CONTRACT,
    )


def _load_id_stamper(load_id: str) -> Callable[[pa.Table], pa.Table]:
    def stamp(table: pa.Table) -> pa.Table:
        if LOAD_ID in table.column_names:
            return table
        return table.append_column(LOAD_ID_FIELD, pa.repeat(pa.scalar(load_id), table.num_rows))

    return stamp


def _newer_versions(versions: LoadedVersions, table: str) -> Callable[..., bool]:
    def read(columns: list[str], sequence: str, oldest: Any, sink: Callable[[pa.RecordBatchReader], None]) -> bool:
        return versions.newer_than(table, columns, sequence, oldest, sink)

    return read


def bronze_resources(specs: Sequence[TableSpec], raw_url: str | Store, *, ingestion_ts: datetime, chunk_size: int,
                     evolve_schema: bool, options: SinkOptions = SinkOptions(),
                     ledger_seeds: Mapping[str, Mapping[str, Any]] | None = None) -> list[DltResource]:
    """One resource per table of `specs`; a table's own `evolve_schema` setting wins over the source's."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, not {chunk_size!r}")
    raw = raw_url if isinstance(raw_url, Store) else open_store(raw_url, RAW_SECTION)
    return [table_resource(spec, raw, ingestion_ts=ingestion_ts, chunk_size=chunk_size,
                           evolve_schema=evolve_schema if spec.evolve_schema is None else spec.evolve_schema,
                           options=options, ledger_seed=(ledger_seeds or {}).get(spec.name))
            for spec in specs]


def preview(specs: Sequence[TableSpec], raw_url: str | Store, ledgers: Mapping[str, Mapping[str, Any]]
            ) -> Iterator[tuple[str, str, pa.Table]]:
    """What a load would emit, table by table, without writing anything: (table, kind, table of that kind) for the
    rejects and manifest of the files new or changed against `ledgers` (file ledgers by table, left unchanged)."""
    stamp = datetime.now().astimezone()
    raw = raw_url if isinstance(raw_url, Store) else open_store(raw_url, RAW_SECTION)
    for spec in specs:
        extractor = TableExtractor(spec, ingestion_ts=stamp, load_id=None, chunk_size=settings.DEFAULT_CHUNK_SIZE,
                                   ledger=dict(ledgers.get(spec.name, {})))
        for kind, table in extractor.run(discover_files(spec, raw)):
            if kind != "rows":
                yield spec.name, kind, table
