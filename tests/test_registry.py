"""The registry refuses a table that cannot load when it is declared, not half way through a run."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from retail_bronze_source.outputs import ADDED_COLUMNS, table_schema
from retail_bronze_source.registry import RETAIL_TABLES, DerivedColumn, TableSpec
from schemas.schemas import col


def declare(*fields: pa.Field, derived: tuple[DerivedColumn, ...] = ()) -> TableSpec:
    return TableSpec(name="things", schema=pa.schema(fields), files="things/*", formats=("csv",), primary_key=(),
                     write_disposition="append", derived=derived)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([col("", pa.string())], "column name '' cannot be loaded"),
        ([col("   ", pa.string())], "column name '   ' cannot be loaded"),
        ([col("id", pa.int64()), col("Id", pa.int64())], "column 'Id' is stored as 'id', like 'id'"),
        ([col("   bla", pa.string()), col("    bla", pa.string())], "column '    bla' is stored as 'bla'"),
        ([col("order_id", pa.int64()), col("Order ID", pa.int64())], "'Order ID' is stored as 'order_id'"),
        ([col("Src Filename", pa.string())], "like 'src_filename', a column the package or dlt adds"),
        ([col("_DLT_LOAD_ID", pa.string())], "like '_dlt_load_id', a column the package or dlt adds"),
    ],
    ids=["empty", "blank", "id-Id", "leading-blanks", "spaced-and-snake", "audit-column", "dlt-column"],
)
def test_a_contract_name_that_cannot_be_loaded_is_refused(fields: list[pa.Field], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        declare(*fields)


def test_a_derived_column_may_not_take_a_contract_column_name() -> None:
    with pytest.raises(ValueError, match="'Day' is stored as 'day', like 'day'"):
        declare(col("day", pa.date32()), derived=(DerivedColumn("Day", pa.date32(), "day"),))


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (col("ts", pa.timestamp("ns", tz="UTC")), "microsecond precision"),
        (col("n", pa.uint64()), "has type uint64, which a contract cannot declare"),
        (col("h", pa.float16()), "has type halffloat"),
        (col("d", pa.decimal256(40, 2)), "has type decimal256"),
        (col("l", pa.list_(pa.field("item", pa.int64(), nullable=False))), "must be nullable"),
        (col("m", pa.map_(pa.float64(), pa.string())), "map keys are text or integers"),
        (col("l", pa.list_(pa.int64()), min_value="1"), "value checks \\(min\\)"),
        (col("b", pa.binary(), pattern="x"), "value checks \\(pattern\\)"),
        (col("s", pa.struct([("a", pa.float16())])), "inside a nested type"),
        (col("n", pa.int64(), mostly_distinct=True), "applies to text only"),
    ],
    ids=["nanosecond-timestamp", "unsigned", "half-float", "decimal256", "required-list-item", "float-map-key",
         "bounds-on-list", "pattern-on-binary", "half-float-in-struct", "mostly-distinct-integer"],
)
def test_a_contract_type_the_validator_cannot_check_exactly_is_refused(field: pa.Field, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        declare(field)


def test_nested_and_binary_contract_types_are_accepted() -> None:
    spec = declare(col("tags", pa.list_(pa.string())), col("attrs", pa.struct([("size", pa.int32())])),
                   col("counts", pa.map_(pa.string(), pa.int64())), col("blob", pa.binary(), required=True),
                   col("nested", pa.large_list(pa.struct([("at", pa.timestamp("us", tz="UTC"))]))))
    assert spec.schema.names == ["tags", "attrs", "counts", "blob", "nested"]


@pytest.mark.parametrize("spec", RETAIL_TABLES, ids=lambda s: s.name)
def test_added_columns_name_every_column_the_package_adds(spec: TableSpec) -> None:
    added = [name for name in table_schema(spec).names if name not in spec.schema.names]
    assert set(added) - {d.name for d in spec.derived} <= set(ADDED_COLUMNS)


@pytest.mark.parametrize(
    "options",
    [{"primary_key": ("Order ID",)}, {"sequence_column": "Order ID"}, {"partition_by": ("Order ID",)},
     {"delete_marker": "Is Deleted"}],
    ids=["primary-key", "sequence-column", "partition", "delete-marker"],
)
def test_a_column_a_table_addresses_by_name_must_be_declared_as_stored(options: dict[str, Any]) -> None:
    # "Order ID" loads as order_id: the merge's late-version check and Delta's partitioning addressed "Order ID".
    schema = pa.schema([col("Order ID", pa.int64(), required=True), col("Is Deleted", pa.bool_(), required=True)])
    with pytest.raises(ValueError, match="is stored as"):
        TableSpec(name="things", schema=schema, files="things/*", formats=("csv",), write_disposition="merge",
                  **{"primary_key": (), **options})
