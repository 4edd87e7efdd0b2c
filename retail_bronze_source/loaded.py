"""What the destination of the running pipeline already holds of a table: the loaded versions of its keys.

A table resource asks this before it emits a merge table's rows, so that a version of a key older than the one already
loaded never replaces it, whoever runs the source and whatever the destination: the late-version guard belongs to the
resource, not to one way of running it. Only versions newer than the oldest version being loaded can matter, so only
those are read.

Destinations and what is read:
- SQL destinations (DuckDB, Postgres, Snowflake, ...): `SELECT key, sequence FROM table WHERE sequence > ?` through
  dlt's SQL client, in Arrow batches;
- dlt's filesystem destination with `table_format="delta"`: the Delta table through deltalake, filtered the same way;
- dlt's filesystem destination with plain files: nothing, as it appends every version of a merge table and never
  replaces a row;
- any other destination: nothing (the README says where the guard stops).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import settings
from .helpers import quote_ident

VersionsSink = Callable[[pa.RecordBatchReader], None]
"""Consumes the loaded versions while the destination connection is open (e.g. copies them into a DuckDB table)."""


@dataclass(frozen=True)
class LoadedVersions:
    """Reads the loaded `(key..., sequence)` rows of a table from the running pipeline's destination."""

    pipeline: Any
    """The active dlt pipeline, or None when the resource runs outside a pipeline."""

    @classmethod
    def of_active_pipeline(cls) -> LoadedVersions:
        """The reader for the pipeline that is extracting the resource (none outside any pipeline)."""
        from dlt.common.configuration.container import Container
        from dlt.common.pipeline import PipelineContext

        context = Container()[PipelineContext]
        return cls(context.pipeline() if context.is_active() else None)

    def newer_than(self, table: str, columns: Sequence[str], sequence: str, oldest: Any, sink: VersionsSink) -> bool:
        """Hand `sink` the `columns` of the loaded rows of `table` whose `sequence` is greater than `oldest`; False,
        without calling `sink`, when the table was never loaded or the destination never replaces rows."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.destination is None or not pipeline.default_schema_name:
            return False
        if table not in pipeline.default_schema.tables:
            return False
        from dlt.common.destination.client import SupportsOpenTables
        from dlt.destinations.exceptions import DestinationUndefinedEntity
        from dlt.destinations.sql_client import WithSqlClient

        with pipeline.destination_client() as client:
            if isinstance(client, SupportsOpenTables):
                if not client.is_open_table("delta", table):
                    return False
                try:
                    delta = client.load_open_table("delta", table)
                except DestinationUndefinedEntity:
                    return False
                dataset = delta.to_pyarrow_dataset()
                scanner = dataset.scanner(columns=list(columns), filter=pc.field(sequence) > pa.scalar(oldest),
                                          batch_size=settings.BATCH_ROWS)
                sink(scanner.to_reader())
                return True
            if not isinstance(client, WithSqlClient):
                return False
            return _sql_versions(client.sql_client, table, columns, sequence, oldest, sink)


def _sql_versions(sql_client: Any, table: str, columns: Sequence[str], sequence: str, oldest: Any,
                  sink: VersionsSink) -> bool:
    """Read through `sql_client`, whose connection the destination client holds open."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    selected = ", ".join(quote_ident(c) for c in columns)
    name = sql_client.make_qualified_table_name(table)
    try:
        with sql_client.execute_query(f"SELECT {selected} FROM {name} WHERE {quote_ident(sequence)} > %s",
                                      oldest) as cursor:
            parts = cursor.iter_arrow(chunk_size=settings.BATCH_ROWS)
            first = next(parts, None)
            if first is not None:
                sink(pa.RecordBatchReader.from_batches(first.schema, _batches(first, parts)))
    except DatabaseUndefinedRelation:
        return False
    return True


def _batches(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    yield from first.to_batches()
    for part in rest:
        yield from part.cast(first.schema).to_batches()
