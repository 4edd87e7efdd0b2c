"""Write-audit-publish: a run loads into a staged copy of the warehouse, audits it there, and publishes it by renaming
the copy over the warehouse.

The warehouse is the commit point of every sink: the change log imports only completed warehouse loads and the Delta
mirror only change-log loads. So a run that must not be seen before its audits pass writes a copy of the warehouse
instead (`<warehouse>.wap/<name>`), with a copy of its dlt pipeline's state and schemas in a pipelines directory of its
own (`<warehouse>.wap/pipelines/`). dlt loads the copy exactly as it loads the warehouse (same pipeline name, merge
semantics, late-version guard, load ids); the declared audits (`auditing`) run on it; publishing is one atomic rename
of the copy over the warehouse file, after which the copy's completed load packages, schemas and state replace the
pipeline's own. The change log and the Delta mirror then catch up with the existing machinery. Unpublished rows are
in no file a reader, the change log, the Delta mirror or a later normal run ever reads: a discarded staging is a
directory removed, and the warehouse and its pipeline never saw its load.

`<warehouse>.wap/staging.json` says how far a staging got, so that the next run (of any kind) settles a staging that
a killed run left (`settle_staging`): one about to be published (phase `publishing`) is published, any other is
discarded and its files load again; a staging held for inspection is published by `publish_held` and discarded by
any other run. Audit results are written to the warehouse readers see (`bronze.audit_results`, plain SQL, not a dlt
table) whatever the outcome, and travel with the copy when it is published.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
from dlt.common.storages import LoadStorageConfiguration
from dlt.common.storages.load_storage import LoadStorage
from dlt.pipeline.pipeline import Pipeline

from . import SECTION
from .auditing import AuditResult, run_audits
from .crash_points import crash_point
from .helpers import quote_ident, quote_literal
from .outputs import (
    AUDIT_RESULTS_TABLE,
    OUTCOME_DISCARDED,
    OUTCOME_FAILED,
    OUTCOME_HELD,
    OUTCOME_PENDING,
    OUTCOME_PUBLISHED,
    audit_results_table,
)
from .registry import TableSpec
from .sinks import DATASET
from .sinks.change_log import warehouse_loads
from .sinks.identity import META_SCHEMA
from .sinks.warehouse import table_exists, warehouse_pipeline

ON_SUCCESS = ("publish", "inspect")
ON_FAILURE = ("keep", "delete")
STAGING_SUFFIX = ".wap"
MARKER = "staging.json"
STAGED_PIPELINES = "pipelines"
PHASE_STAGING, PHASE_PUBLISHING, PHASE_HELD = "staging", "publishing", "held"
EXIT_HELD = 3
"""The exit code of a run whose audits passed and whose staging is held for inspection (`on_success = "inspect"`)."""
EXIT_AUDIT_FAILED = 4
"""The exit code of a run whose audits failed: nothing was published."""


@dataclass(frozen=True)
class WapSettings:
    """What a write-audit-publish run does once its audits are done."""

    on_success: str = "publish"
    """`publish`: publish at once; `inspect`: hold the staging until `publish_held` (or the next run drops it)."""
    on_failure: str = "keep"
    """`keep`: keep the staging of failed audits for inspection (the next run drops it); `delete`: drop it now."""


def wap_settings(wap: bool | None = None) -> WapSettings | None:
    """The write-audit-publish settings of a run, None for a run without it. `wap` None follows the configuration
    (`[sources.retail_bronze] wap`, `on_success`, `on_failure`, or `SOURCES__RETAIL_BRONZE__<KEY>`)."""
    enabled = wap if wap is not None else bool(dlt.config.get(f"sources.{SECTION}.wap", bool) or False)
    if not enabled:
        return None
    return WapSettings(_choice("on_success", ON_SUCCESS), _choice("on_failure", ON_FAILURE))


def _choice(key: str, allowed: Sequence[str]) -> str:
    value = dlt.config.get(f"sources.{SECTION}.{key}", str)
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ValueError(f"[sources.{SECTION}] {key} must be {' or '.join(repr(a) for a in allowed)}, not {value!r}")
    return str(value)


class PublishRefused(Exception):
    """There is no staging to publish, or it cannot be published; the message says why and what to do."""


@dataclass(frozen=True)
class WapOutcome:
    """What a write-audit-publish run did with its staged load."""

    status: str
    """`published`, `held` (audits passed, held for inspection), `failed` (an audit failed: nothing published) or
    `nothing` (the run had nothing new to load)."""
    load_id: str | None
    results: tuple[AuditResult, ...] = ()
    staging: Path | None = None
    """The staged warehouse file kept for inspection, if any."""

    @property
    def failed(self) -> list[AuditResult]:
        """The results that hold the batch back."""
        return [r for r in self.results if r.blocks]

    @property
    def warnings(self) -> list[AuditResult]:
        """Failed checks of severity `warn` (recorded, not blocking)."""
        return [r for r in self.results if not r.passed and not r.blocks]

    @property
    def exit_code(self) -> int | None:
        """`EXIT_AUDIT_FAILED` or `EXIT_HELD` when the load was not published, else None (the run's own code)."""
        return {OUTCOME_FAILED: EXIT_AUDIT_FAILED, OUTCOME_HELD: EXIT_HELD}.get(self.status)


def staging_root(warehouse: Path) -> Path:
    """The directory of the staging of `warehouse`."""
    return warehouse.with_name(warehouse.name + STAGING_SUFFIX)


@dataclass
class Staging:
    """A run's staged copy of the warehouse and its dlt pipeline."""

    root: Path
    published: Path
    settings: WapSettings
    ingestion_ts: datetime
    main: Pipeline
    """The pipeline of the warehouse readers see (replaced by a new instance once the staging is published)."""
    pipeline: Pipeline
    """The pipeline loading the staged copy."""
    marker: dict[str, Any] = field(default_factory=dict)

    @property
    def warehouse(self) -> Path:
        """The staged copy of the warehouse file."""
        return self.root / self.published.name

    @classmethod
    def begin(cls, published: Path, main: Pipeline, settings: WapSettings, ingestion_ts: datetime) -> Staging:
        """Copy the warehouse `published` and the state and schemas of its pipeline `main` into a new staging, and
        return it with its own pipeline (same name, own pipelines directory, the copy as destination)."""
        root = staging_root(published)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        marker = {"phase": PHASE_STAGING, "pipeline_name": main.pipeline_name,
                  "pipelines_dir": str(Path(main.pipelines_dir).resolve()), "base": warehouse_base(published),
                  "ingestion_ts": ingestion_ts.isoformat(), "load_ids": []}
        _write_marker(root, marker)
        _copy_database(published, root / published.name)
        working = root / STAGED_PIPELINES / main.pipeline_name
        _copy_pipeline_files(Path(main.working_dir), working)
        pipeline = warehouse_pipeline(root / published.name, main.pipeline_name,
                                      pipelines_dir=str(root / STAGED_PIPELINES))
        if pipeline.default_schema_name is None and main.default_schema_name is not None:
            pipeline.default_schema_name = main.default_schema_name
        return cls(root, published, settings, ingestion_ts, main, pipeline, marker)

    def audit(self, specs: Sequence[TableSpec], load_id: str | None) -> WapOutcome:
        """Run the audits of `specs` on the staged batch of warehouse load `load_id` and record their results in the
        published warehouse (outcome `pending`); `nothing` when the run staged no load."""
        new = [x for x in warehouse_loads(self.warehouse) if x not in set(warehouse_loads(self.published))]
        self.marker["load_ids"] = new
        _write_marker(self.root, self.marker)
        if not new:
            return WapOutcome("nothing", load_id)
        batch = load_id if load_id in new else max(new, key=Decimal)
        results = run_audits(self.warehouse, self.published, batch, specs, self.ingestion_ts)
        self.marker["load_id"] = batch
        write_audit_results(self.published, audit_results_table(
            results, load_id=batch, ingestion_ts=self.ingestion_ts, audited_at=datetime.now(UTC),
            outcome=OUTCOME_PENDING))
        crash_point("wap_audited")
        if any(r.blocks for r in results):
            return WapOutcome(OUTCOME_FAILED, batch, tuple(results))
        return WapOutcome(OUTCOME_HELD if self.settings.on_success == "inspect" else OUTCOME_PUBLISHED, batch,
                          tuple(results))

    def settle(self, outcome: WapOutcome) -> tuple[WapOutcome, Pipeline]:
        """Publish, hold or drop the staging as `outcome` and the settings say; return the outcome (with the kept
        staging, if any) and the pipeline of the published warehouse."""
        if outcome.status == OUTCOME_PUBLISHED:
            _publish(self.root, self.marker, self.published)
            return outcome, warehouse_pipeline(self.published, self.main.pipeline_name,
                                               pipelines_dir=self.main.pipelines_dir)
        keep = outcome.status == OUTCOME_HELD or (outcome.status == OUTCOME_FAILED and
                                                   self.settings.on_failure == "keep")
        if outcome.status != "nothing":
            set_outcome(self.published, [outcome.load_id or ""], outcome.status)
        if keep:
            self.marker.update(phase=PHASE_HELD, outcome=outcome.status)
            _write_marker(self.root, self.marker)
            outcome = WapOutcome(outcome.status, outcome.load_id, outcome.results, self.warehouse)
        else:
            shutil.rmtree(self.root)
        self.main.activate()
        return outcome, self.main


def settle_staging(warehouse: Path, *, publish: bool = False) -> list[str]:
    """Settle the staging a killed or held run left beside `warehouse`, before anything else touches the warehouse;
    return notes on what was done. A staging about to be published is published; one held for inspection is published
    when `publish`, else dropped; any other is dropped (its run was killed before it published: its files load again).
    With `publish`, raises `PublishRefused` when there is no held staging whose audits passed."""
    root = staging_root(warehouse)
    marker = _read_marker(root) if root.exists() else None
    phase = marker.get("phase") if marker else None
    load = (marker or {}).get("load_id") or ", ".join((marker or {}).get("load_ids", [])) or "-"
    passed = phase == PHASE_HELD and marker is not None and marker.get("outcome") == OUTCOME_HELD
    if publish and not passed:
        if phase == PHASE_HELD:
            raise PublishRefused(f"the staged load {load} failed its audits (see bronze.audit_results); fix the "
                                 "delivery and run again")
        raise PublishRefused(f"nothing to publish: no staging held for inspection beside {warehouse}")
    if not root.exists():
        return []
    if marker is not None and (phase == PHASE_PUBLISHING or publish):
        if (root / warehouse.name).exists() and marker.get("base") != warehouse_base(warehouse):
            if publish:
                raise PublishRefused(f"the warehouse {warehouse} took other loads since load {load} was staged; run "
                                     "again with write-audit-publish")
            _discard(root, warehouse, marker)
            return [f"the staging of load {load} was made from an older state of the warehouse: dropped it, its "
                    "files load again"]
        _publish(root, marker, warehouse, prepared=phase == PHASE_PUBLISHING)
        return [f"published the staged load {load}" + ("" if publish else " that a killed run was publishing")]
    _discard(root, warehouse, marker)
    if phase == PHASE_HELD:
        return [f"dropped the staging of load {load} held for inspection ({(marker or {}).get('outcome')}); its "
                "files load again"]
    return [f"dropped the unpublished staging of a killed run (load {load}); its files load again"]


def _discard(root: Path, warehouse: Path, marker: dict[str, Any] | None) -> None:
    if marker and marker.get("load_ids"):
        set_outcome(warehouse, marker["load_ids"], OUTCOME_DISCARDED, only=(OUTCOME_PENDING, OUTCOME_HELD))
    shutil.rmtree(root)


def _publish(root: Path, marker: dict[str, Any], warehouse: Path, *, prepared: bool = False) -> None:
    """Publish a staging: its audit results made the warehouse's (outcome `published`), its phase recorded, then the
    copy renamed over the warehouse (the commit) and its pipeline's packages, schemas and state moved into the
    warehouse pipeline's working directory. Each step may be redone after a kill."""
    staged = root / warehouse.name
    if not prepared:
        _prepare_publish(staged, warehouse, marker)
    if staged.exists():
        _checkpoint(warehouse)
        _checkpoint(staged)
        os.replace(staged, warehouse)
    crash_point("wap_published")
    working = Path(marker["pipelines_dir"]) / marker["pipeline_name"]
    staged_working = root / STAGED_PIPELINES / marker["pipeline_name"]
    if staged_working.is_dir() and working.is_dir():
        _adopt_pipeline_files(staged_working, working)
    shutil.rmtree(root)


def _prepare_publish(staged: Path, warehouse: Path, marker: dict[str, Any]) -> None:
    """Give the staged copy the warehouse's audit results with this staging's loads `published`, then record the
    phase `publishing` (from here on, a killed run is completed by the next one)."""
    with duckdb.connect(str(staged)) as con:
        con.execute(f"ATTACH {quote_literal(str(warehouse))} AS published (READ_ONLY)")
        try:
            target = f"{DATASET}.{AUDIT_RESULTS_TABLE}"
            source = f"published.{DATASET}.{AUDIT_RESULTS_TABLE}"
            con.execute("BEGIN")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {DATASET}")
            _create_results_table(con)
            con.execute(f"DELETE FROM {target}")
            has_source = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'published' AND "
                                     "schema_name = ? AND table_name = ?", [DATASET, AUDIT_RESULTS_TABLE]).fetchone()
            if has_source and has_source[0]:
                con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source}")
            loads = marker.get("load_ids", [])
            if loads:
                con.execute(f"UPDATE {target} SET outcome = ? WHERE list_contains(?, load_id)",
                            [OUTCOME_PUBLISHED, loads])
            con.execute("COMMIT")
        finally:
            con.execute("DETACH published")
    marker["phase"] = PHASE_PUBLISHING
    _write_marker(staged.parent, marker)
    crash_point("wap_publishing")


def publish_held(warehouse: Path) -> list[str]:
    """Publish the staging a run held for inspection (`on_success = "inspect"`); raises `PublishRefused` when there
    is none, its audits failed, or the warehouse changed since it was staged."""
    return settle_staging(warehouse, publish=True)


def _create_results_table(con: duckdb.DuckDBPyConnection) -> None:
    empty = audit_results_table([], load_id="", ingestion_ts=datetime.now(UTC), audited_at=datetime.now(UTC),
                                outcome="")
    con.register("empty_results", empty)
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS {DATASET}.{AUDIT_RESULTS_TABLE} AS SELECT * FROM empty_results")
    finally:
        con.unregister("empty_results")


def write_audit_results(warehouse: Path, results: pa.Table) -> None:
    """Store a run's audit results in `bronze.audit_results` of `warehouse` (replacing earlier results of its load)."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute("BEGIN")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {DATASET}")
        _create_results_table(con)
        con.register("new_results", results)
        try:
            con.execute(f"DELETE FROM {DATASET}.{AUDIT_RESULTS_TABLE} WHERE load_id IN (SELECT DISTINCT load_id FROM "
                        "new_results)")
            con.execute(f"INSERT INTO {DATASET}.{AUDIT_RESULTS_TABLE} BY NAME SELECT * FROM new_results")
        finally:
            con.unregister("new_results")
        con.execute("COMMIT")


def set_outcome(warehouse: Path, load_ids: Sequence[str], outcome: str, *, only: Sequence[str] = ()) -> None:
    """Record what became of staged loads in `bronze.audit_results` of `warehouse` (only of rows whose outcome is
    one of `only`, when given)."""
    if not load_ids or not warehouse.exists():
        return
    with duckdb.connect(str(warehouse)) as con:
        if not table_exists(con, AUDIT_RESULTS_TABLE):
            return
        condition = " AND list_contains(?, outcome)" if only else ""
        con.execute(f"UPDATE {DATASET}.{AUDIT_RESULTS_TABLE} SET outcome = ? WHERE list_contains(?, load_id)"
                    f"{condition}", [outcome, list(load_ids), *([list(only)] if only else [])])


def warehouse_base(warehouse: Path) -> list[str | None]:
    """What a staging was made from: the warehouse's identity, and the newest entry and count of dlt's loads, schema
    versions and states. Any load, schema change or state change of the warehouse changes it."""
    parts: list[str | None] = []
    if not warehouse.exists():
        return parts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        sink = con.execute(f"SELECT max(sink_id) FROM {META_SCHEMA}.sink").fetchone() \
            if table_exists(con, "sink", META_SCHEMA) else None
        parts.append(sink[0] if sink else None)
        for table, newest in (("_dlt_loads", "load_id"), ("_dlt_version", "version"),
                              ("_dlt_pipeline_state", "version")):
            row = con.execute(f"SELECT max({newest}), count(*) FROM {DATASET}.{quote_ident(table)}").fetchone() \
                if table_exists(con, table) else None
            parts += [str(v) if v is not None else None for v in (row or (None, None))]
    return parts


def _checkpoint(database: Path) -> None:
    """Fold the write-ahead log of a DuckDB file into it (a file is copied or renamed only without one)."""
    if database.exists():
        with duckdb.connect(str(database)) as con:
            con.execute("CHECKPOINT")
    wal = database.with_name(database.name + ".wal")
    if wal.exists():
        raise RuntimeError(f"{database} still has a write-ahead log ({wal}) after a checkpoint; is it open elsewhere?")


def _copy_database(source: Path, target: Path) -> None:
    """Copy a DuckDB file (checkpointed first) to `target`, whole or not at all."""
    _checkpoint(source)
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _copy_pipeline_files(working: Path, target: Path) -> None:
    """Copy the state and schemas of a dlt pipeline's working directory (not its load packages or trace)."""
    target.mkdir(parents=True)
    state = working / Pipeline.STATE_FILE
    if state.exists():
        shutil.copyfile(state, target / Pipeline.STATE_FILE)
    if (working / "schemas").is_dir():
        shutil.copytree(working / "schemas", target / "schemas")


def _adopt_pipeline_files(staged: Path, working: Path) -> None:
    """Move a staged pipeline's completed load packages, then copy its schemas and state, into the warehouse
    pipeline's working directory `working` (each file replaced atomically; a package moved under a temporary name
    first, so that no half-moved package is ever listed)."""
    loaded = staged / "load" / LoadStorage.LOADED_FOLDER
    LoadStorage(True, [], LoadStorageConfiguration(load_volume_path=str(working / "load")))  # its folders, as dlt makes them
    target = working / "load" / LoadStorage.LOADED_FOLDER
    for package in sorted(loaded.iterdir()) if loaded.is_dir() else []:
        if (target / package.name).exists():
            continue
        incoming = working / "load" / f".incoming-{package.name}"
        if incoming.exists():
            shutil.rmtree(incoming)
        shutil.move(str(package), str(incoming))
        os.replace(incoming, target / package.name)
    schemas = staged / "schemas"
    for schema in sorted(schemas.iterdir()) if schemas.is_dir() else []:
        _replace_file(schema, working / "schemas" / schema.name)
    state = staged / Pipeline.STATE_FILE
    if state.exists():
        _replace_file(state, working / Pipeline.STATE_FILE)


def _replace_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.incoming")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _write_marker(root: Path, marker: dict[str, Any]) -> None:
    partial = root / f".{MARKER}.part"
    partial.write_text(json.dumps(marker, indent=1))
    os.replace(partial, root / MARKER)


def _read_marker(root: Path) -> dict[str, Any] | None:
    """The staging's marker; None when it is missing or unreadable (a run killed while it began)."""
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
