"""Audits of a write-audit-publish run, declared as data per table (`TableSpec(audits=(...))`).

An audit judges the batch a run stages (the rows of its warehouse load), not single rows: single rows are the
contract's job, and a row that breaks the contract is already a reject. Each kind is a small frozen dataclass with its
thresholds; `auditing` runs them as DuckDB SQL on the staged warehouse. The kinds:

- `SchemaAudit`: the contract's columns with the types the warehouse gives them; no column added by the batch (an
  evolving run, a promoted column) unless allowed; at most a share of rows keeping columns in `_rescued_data`;
- `Completeness`: rows and files of the batch against the median of the table's recent runs; required files present;
- `ValueRange`, `AcceptedValues`: at most a share of the batch's values outside bounds or a set;
- `References`: at most a share of the batch's rows whose key is not found in another table (published or staged);
- `Anomaly`: the batch's row count or reject rate against the table's history (robust z-score: median and MAD of
  the last runs, judged only from a minimum history);
- `Freshness`: the batch's newest timestamp against the run's time or the newest value already published.

Every audit has a `name` (unique in its table; the default says what it checks) and a `severity`: an `"error"` that
fails holds the batch back, a `"warn"` is recorded and reported only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, Literal

import pyarrow as pa

Severity = Literal["error", "warn"]
SEVERITIES = ("error", "warn")


@dataclass(frozen=True, kw_only=True)
class Audit:
    """What every audit declares besides its own thresholds."""

    name: str | None = None
    """The audit's name in `bronze.audit_results` and messages; unique in its table. None: the kind's default."""
    severity: Severity = "error"

    kind: ClassVar[str] = "audit"

    @property
    def audit_name(self) -> str:
        return self.name or self.default_name()

    def default_name(self) -> str:
        return self.kind

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        """What makes this audit impossible for a table with `columns` (name -> Arrow type); empty when none."""
        found = [] if self.severity in SEVERITIES else [f"severity must be one of {', '.join(SEVERITIES)}"]
        if self.name is not None and not self.name.strip():
            found.append("a name must not be blank")
        return found


def _share(value: float | None, label: str) -> list[str]:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1):
        return []
    return [f"{label} must be a share between 0 and 1, not {value!r}"]


def _positive(value: float | None, label: str, *, integer: bool = False) -> list[str]:
    kinds = int if integer else int | float
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool) and value > 0):
        return []
    return [f"{label} must be a positive {'whole ' if integer else ''}number, not {value!r}"]


def _column(columns: Mapping[str, pa.DataType], name: str) -> list[str]:
    return [] if name in columns else [f"column {name!r} is not a column of the table"]


@dataclass(frozen=True, kw_only=True)
class SchemaAudit(Audit):
    """The batch's table has the contract's columns with the types the warehouse gives the contract's types, keeps
    the types of the columns already published, and adds no column unless `allow_added_columns`. With
    `max_rescued_share`, at most that share of the batch's rows keep columns outside the contract in `_rescued_data`."""

    allow_added_columns: bool = False
    max_rescued_share: float | None = None

    kind: ClassVar[str] = "schema"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        return [*super().problems(columns), *_share(self.max_rescued_share, "max_rescued_share")]


@dataclass(frozen=True, kw_only=True)
class Completeness(Audit):
    """The batch holds at least `min_rows_ratio` times the median valid rows, and `min_files_ratio` times the median
    files, of the table's last `runs` published runs that delivered it (judged from `min_runs` such runs on); every
    glob of `required_files` (relative to the raw root, e.g. `"stores/stores*.csv"`) matches a file whose latest
    version loaded rows, in the batch or before it (checked in every run, also when the table has no new files)."""

    min_rows_ratio: float | None = 0.5
    min_files_ratio: float | None = None
    runs: int = 10
    min_runs: int = 1
    required_files: tuple[str, ...] = ()

    kind: ClassVar[str] = "completeness"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_positive(self.min_rows_ratio, "min_rows_ratio"),
                 *_positive(self.min_files_ratio, "min_files_ratio"), *_positive(self.runs, "runs", integer=True),
                 *_positive(self.min_runs, "min_runs", integer=True)]
        if isinstance(self.runs, int) and isinstance(self.min_runs, int) and self.min_runs > self.runs:
            found.append(f"min_runs ({self.min_runs}) must not exceed runs ({self.runs})")
        if isinstance(self.required_files, str) or any(not p or not isinstance(p, str) for p in self.required_files):
            found.append("required_files must be a tuple of non-empty glob patterns")
        return found


def _bound_problems(columns: Mapping[str, pa.DataType], column: str, bounds: Sequence[str | None]) -> list[str]:
    """Bounds are text in the column's type, as the contract's `min`/`max` are; each must convert to it."""
    if column not in columns:
        return []
    found = []
    for bound in bounds:
        if bound is None:
            continue
        try:
            pa.scalar(bound, pa.string()).cast(columns[column])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
            found.append(f"bound {bound!r} is not a value of column {column!r} ({columns[column]})")
    return found


@dataclass(frozen=True, kw_only=True)
class ValueRange(Audit):
    """At most `max_failing_share` of the batch's non-null values of `column` (of the rows where the DuckDB condition
    `where` holds, if given) lie outside [`min`, `max`]; bounds are text in the column's type."""

    column: str
    min: str | None = None
    max: str | None = None
    where: str | None = None
    max_failing_share: float = 0.0

    kind: ClassVar[str] = "range"

    def default_name(self) -> str:
        return f"range:{self.column}"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_column(columns, self.column),
                 *_share(self.max_failing_share, "max_failing_share"),
                 *_bound_problems(columns, self.column, (self.min, self.max))]
        if self.min is None and self.max is None:
            found.append("declare min, max or both")
        return found


@dataclass(frozen=True, kw_only=True)
class AcceptedValues(Audit):
    """At most `max_failing_share` of the batch's non-null values of `column` (where `where` holds) are outside
    `values` (compared as text)."""

    column: str
    values: tuple[str, ...]
    where: str | None = None
    max_failing_share: float = 0.0

    kind: ClassVar[str] = "accepted_values"

    def default_name(self) -> str:
        return f"accepted_values:{self.column}"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_column(columns, self.column),
                 *_share(self.max_failing_share, "max_failing_share")]
        if isinstance(self.values, str) or not self.values:
            found.append("values must be a non-empty tuple")
        return found


@dataclass(frozen=True, kw_only=True)
class References(Audit):
    """At most `max_orphan_share` of the batch's rows with a complete key `columns` find no row of `table` with that
    key in `to_columns` (default: the same names). `table` is read in the staged warehouse: the published rows with
    the batch merged in, so keys delivered in the same run count."""

    columns: tuple[str, ...]
    table: str
    to_columns: tuple[str, ...] | None = None
    max_orphan_share: float = 0.0

    kind: ClassVar[str] = "references"

    @property
    def target_columns(self) -> tuple[str, ...]:
        return self.to_columns or self.columns

    def default_name(self) -> str:
        return f"references:{','.join(self.columns)}->{self.table}"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_share(self.max_orphan_share, "max_orphan_share")]
        if isinstance(self.columns, str) or not self.columns:
            return [*found, "columns must be a non-empty tuple of column names"]
        found += [p for c in self.columns for p in _column(columns, c)]
        if not self.table:
            found.append("name the referenced table")
        if isinstance(self.to_columns, str) or len(self.target_columns) != len(self.columns):
            found.append("to_columns must name as many columns as columns")
        return found


@dataclass(frozen=True, kw_only=True)
class Anomaly(Audit):
    """The batch's `metric` lies within `max_deviation` robust standard deviations of the table's last `runs`
    published runs that delivered it: |x - median| / (1.4826 * MAD) <= `max_deviation`, judged once `min_runs` runs
    exist. `metric`: `"row_count"` (valid rows) or `"reject_rate"` (rejected rows / rows read). The spread is at least
    `min_spread` (a share of the median for row counts, default 0.1; an absolute rate for reject rates, default 0.01),
    so that a history of identical runs does not make every small difference an anomaly."""

    metric: Literal["row_count", "reject_rate"]
    runs: int = 20
    min_runs: int = 5
    max_deviation: float = 3.5
    min_spread: float | None = None

    kind: ClassVar[str] = "anomaly"
    METRICS: ClassVar[tuple[str, ...]] = ("row_count", "reject_rate")

    def default_name(self) -> str:
        return f"anomaly:{self.metric}"

    @property
    def spread_floor(self) -> float:
        if self.min_spread is not None:
            return self.min_spread
        return 0.1 if self.metric == "row_count" else 0.01

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_positive(self.runs, "runs", integer=True),
                 *_positive(self.min_runs, "min_runs", integer=True), *_positive(self.max_deviation, "max_deviation"),
                 *_positive(self.min_spread, "min_spread")]
        if self.metric not in self.METRICS:
            found.append(f"metric must be one of {', '.join(self.METRICS)}, not {self.metric!r}")
        if isinstance(self.runs, int) and isinstance(self.min_runs, int) and self.min_runs > self.runs:
            found.append(f"min_runs ({self.min_runs}) must not exceed runs ({self.runs})")
        return found


@dataclass(frozen=True, kw_only=True)
class Freshness(Audit):
    """The newest value of `column` in the batch is at most `max_age` older than the run (its `ingestion_ts`), and at
    most `max_lag` older than the newest value already published (a stale delivery sent again). Declare one or both."""

    column: str
    max_age: timedelta | None = None
    max_lag: timedelta | None = None

    kind: ClassVar[str] = "freshness"

    def default_name(self) -> str:
        return f"freshness:{self.column}"

    def problems(self, columns: Mapping[str, pa.DataType]) -> list[str]:
        found = [*super().problems(columns), *_column(columns, self.column)]
        type_ = columns.get(self.column)
        if type_ is not None and not (pa.types.is_timestamp(type_) or pa.types.is_date(type_)):
            found.append(f"column {self.column!r} is {type_}, not a timestamp or date")
        if self.max_age is None and self.max_lag is None:
            found.append("declare max_age, max_lag or both")
        for label, value in (("max_age", self.max_age), ("max_lag", self.max_lag)):
            if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
                found.append(f"{label} must be a timedelta of zero or more")
        return found


AUDIT_KINDS: tuple[type[Audit], ...] = (SchemaAudit, Completeness, ValueRange, AcceptedValues, References, Anomaly,
                                        Freshness)


def audit_problems(audits: Sequence[Audit], columns: Mapping[str, pa.DataType]) -> list[str]:
    """Every reason the `audits` of one table cannot run on a table with `columns`, each naming its audit."""
    if isinstance(audits, Audit) or not isinstance(audits, tuple):
        return ["audits must be a tuple of audits"]
    found = []
    seen: set[str] = set()
    for audit in audits:
        if not isinstance(audit, Audit):
            found.append(f"{audit!r} is not an audit (one of {', '.join(k.__name__ for k in AUDIT_KINDS)})")
            continue
        name = audit.audit_name
        found += [f"audit {name!r}: {problem}" for problem in audit.problems(columns)]
        if name in seen:
            found.append(f"audit {name!r} is declared twice; give one of them another name")
        seen.add(name)
    return found
