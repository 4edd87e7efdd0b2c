"""Random deliveries through the real command line, sometimes killed, every sink compared with the ground truth.

Each seed draws its own knobs (`generate_raw_data.random_knobs`), kill schedule and whether its runs use
`--evolve-schema`, writes a few delivery rounds with `generate_raw_data.generate_deliveries`, and per round: delivers
the round into the raw root, runs `scripts/bronze_dlt_pipeline.py` (SIGKILLed at a named crash point, or at a random
moment, then run again) until a run completes, and compares DuckDB, the Parquet change log, the Delta mirror (data
tables, rejects, manifest, schema history), the rejects CSV files and the runs' loads with the round's truth. After
the last round one more run must change nothing. Aimed cases (`PROFILES`) fix the knobs on one behaviour each. A
case runs once; one test per check reports its differences, so a known bug is marked on exactly the case and check
it breaks.

`RETAIL_BRONZE_CHAOS_SEEDS` (default 4) sets how many seeds run, from `RETAIL_BRONZE_CHAOS_FIRST_SEED` (default 1);
`RETAIL_BRONZE_CHAOS_ROUNDS` (default 3) the rounds per seed; `RETAIL_BRONZE_CHAOS_RANDOM_KILLS=1` adds kills at
random moments (and drops the known-bug marks, which hold for the named crash points only). Reproduce one seed with
`RETAIL_BRONZE_CHAOS_FIRST_SEED=17 RETAIL_BRONZE_CHAOS_SEEDS=1 pytest tests/test_chaos.py -k seed-17`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import REPO, Sandbox, changelog_table, delta_table, load_generator, make_sandbox
from test_crash_recovery import KILL_AROUND_JOB_COMMIT

from retail_bronze_source.crash_points import POINTS

gen = load_generator()

SEEDS = int(os.environ.get("RETAIL_BRONZE_CHAOS_SEEDS", "4"))
FIRST_SEED = int(os.environ.get("RETAIL_BRONZE_CHAOS_FIRST_SEED", "1"))
ROUNDS = int(os.environ.get("RETAIL_BRONZE_CHAOS_ROUNDS", "3"))
RANDOM_TIMES = os.environ.get("RETAIL_BRONZE_CHAOS_RANDOM_KILLS", "") == "1"
TABLES = list(gen.CHAOS_TABLES)
KNOWN_BUGS: dict[tuple[str, str], str] = {}
"""(case, check) pairs that fail because of a bug in the package, with the bug. The marks are strict: a fix makes the
test pass, and then the mark goes. Random kill times (`RETAIL_BRONZE_CHAOS_RANDOM_KILLS=1`) drop the marks."""

REJECT_COLUMNS = ["table_name", "src_filename", "src_row_number", "src_sheet", "reason_code", "column_name"]
MANIFEST_COLUMNS = ["src_path", "file_fingerprint", "table_name", "file_size", "row_count", "valid_count",
                    "reject_count", "superseded_count", "late_count", "status", "replaced_fingerprint", "extra_columns"]
HISTORY_COLUMNS = ["table_name", "column_name", "data_type"]
JSON_COLUMNS = {"_rescued_data"}
"""Compared as JSON documents: the package writes the rescued columns in file order, the truth sorts them."""
SHOWN = 6


def _command(box: Sandbox, tables: Sequence[str], evolve: bool) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(box.raw), "--lake",
            str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
            "--tables", ",".join(tables), *(["--evolve-schema"] if evolve else [])]


def _run(box: Sandbox, kill: dict[str, Any] | None = None, *, tables: Sequence[str] = TABLES,
         evolve: bool = False) -> tuple[int, str]:
    """One run of the command line; `kill` names a crash point (`point`, `after`), a delay in seconds (`delay`), or
    the first load job of a table (`job`) and a `moment` around its completion marker (see `test_crash_recovery`)."""
    env = dict(os.environ)
    command = _command(box, tables, evolve)
    if kill and "point" in kill:
        env.update(RETAIL_BRONZE_CRASH_AT=kill["point"], RETAIL_BRONZE_CRASH_AFTER=str(kill["after"]))
    if kill and "job" in kill:
        command = [sys.executable, "-c", KILL_AROUND_JOB_COMMIT, kill["job"], kill["moment"], *command[2:]]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if kill and "delay" in kill:
        try:
            process.wait(timeout=kill["delay"])
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    return process.returncode, out + err


def _kill_schedule(draw: random.Random, random_times: bool) -> list[dict[str, Any]]:
    """The kills of one round before the run that must complete: none, one or two. Named crash points give the
    same outcome on every run of a seed; kills at random moments (`random_times`) do not."""
    kills: list[dict[str, Any]] = []
    while len(kills) < 2 and draw.random() < (0.6 if not kills else 0.3):
        if random_times and draw.random() < 0.5:
            kills.append({"delay": round(draw.uniform(0.5, 6.0), 2)})
        else:
            point = draw.choice(POINTS)
            kills.append({"point": point, "after": draw.randint(1, 4 if point in ("file_staged",
                                                                                  "delta_table_mirrored") else 1)})
    return kills


def _warehouse(box: Sandbox, table: str) -> pa.Table | None:
    with duckdb.connect(str(box.warehouse), read_only=True) as con:
        found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bronze' "
                            "AND table_name = ?", [table]).fetchone()
        if not found or not found[0]:
            return None
        return con.execute(f"SELECT * FROM bronze.{table}").to_arrow_table()


def _delta(box: Sandbox, table: str) -> pa.Table | None:
    return delta_table(box.lake, table) if (box.lake / "bronze" / "delta" / table / "_delta_log").is_dir() else None


def _changelog(box: Sandbox, table: str) -> pa.Table | None:
    folder = box.lake / "bronze" / "parquet" / table
    return changelog_table(box.lake, table) if folder.is_dir() and any(folder.glob("*.parquet")) else None


def _rejects_csv(box: Sandbox) -> pa.Table | None:
    files = sorted((box.lake / "_rejects").glob("*/*.csv"))
    if not files:
        return None
    parts = []
    for path in files:
        read = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in [*REJECT_COLUMNS, "load_id"]}, strings_can_be_null=True,
            include_columns=[*REJECT_COLUMNS, "load_id"]))
        parts.append(read.set_column(read.schema.get_field_index("load_id"), "load_id",
                                     pa.repeat(pa.scalar(path.stem), read.num_rows)))
    table = pa.concat_tables(parts)
    return table.set_column(table.schema.get_field_index("src_row_number"), "src_row_number",
                            table["src_row_number"].cast(pa.int64()))


def _plain(table: pa.Table) -> pa.Table:
    """Extension types (DuckDB's JSON) as their storage."""
    columns = [c.cast(c.type.storage_type) if isinstance(c.type, pa.ExtensionType) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def _normal(value: Any, column: str) -> Any:
    if column in JSON_COLUMNS and value is not None:
        return json.dumps(json.loads(value), sort_keys=True)
    return value


MISSING_COLUMN = "<no such column>"
"""Stands for the values of a column the sink does not have."""


def _rows(table: pa.Table, columns: list[str], schema: pa.Schema, rounds: dict[str, int], load_column: str) -> Counter:
    """The multiset of `columns` (cast to `schema`; `MISSING_COLUMN` for a column the sink lacks) plus the round of
    each row's load."""
    table = _plain(table)
    present = [c for c in columns if c in table.column_names]
    selected = table.select(present).cast(pa.schema([schema.field(c).with_nullable(True) for c in present]))
    loads = table[load_column].to_pylist()
    return Counter(tuple([*(_normal(row[c], c) if c in row else MISSING_COLUMN for c in columns),
                          rounds.get(load, f"load {load}")]) for row, load in zip(selected.to_pylist(), loads,
                                                                                  strict=True))


def _truth_rows(table: pa.Table, columns: list[str]) -> Counter:
    return Counter(tuple([*(_normal(row[c], c) for c in columns), row["_round"]]) for row in table.to_pylist())


CHECKS = (*(f"{sink}-{kind}" for sink in ("duckdb", "delta", "changelog")
            for kind in ("tables", "rejects", "manifest", "schema_history")), "rejects_csv", "runs")
"""What one test of a seed checks: one kind of output of one sink (the data tables, the rejects, the manifest, the
schema history), the rejects CSV files, or the runs (exit codes, one load and one `ingestion_ts` per round in every
sink, a last run that changes nothing)."""


@dataclass(frozen=True)
class Difference:
    """Rows of one output of one sink that differ from the truth after a round (each row ends with its round)."""

    round: int
    sink: str
    output: str
    columns: list[str] = field(default_factory=list)
    missing: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    expected: int = 0

    @property
    def check(self) -> str:
        """The test (of `CHECKS`) that reports this difference."""
        if self.sink in ("rejects_csv", "runs"):
            return self.sink
        return f"{self.sink}-{'tables' if self.output in TABLES else self.output}"

    def lines(self) -> list[str]:
        if not self.columns:
            return [f"round {self.round}: {self.sink}: {self.output}"]
        head = (f"round {self.round}: {self.sink} {self.output}: {sum(self.missing.values())} row(s) missing, "
                f"{sum(self.unexpected.values())} unexpected (of {self.expected} expected); columns "
                f"{[*self.columns, 'round']}")
        return [head, *(f"  missing    {row}" for row in sorted(self.missing, key=repr)[:SHOWN]),
                *(f"  unexpected {row}" for row in sorted(self.unexpected, key=repr)[:SHOWN])]


def _difference(number: int, sink: str, output: str, expected: Counter, found: Counter,
                columns: list[str]) -> list[Difference]:
    if expected == found:
        return []
    return [Difference(number, sink, output, columns, expected - found, found - expected, sum(expected.values()))]


def _load_rounds(box: Sandbox, manifest_log: pa.Table, number: int) -> tuple[dict[str, int], list[Difference]]:
    """Load id -> round, from the change log's manifest (every load's file versions, loads in time order)."""
    log = _changelog(box, "manifest_processed_files")
    expected_rounds = sorted(set(manifest_log["_round"].to_pylist()))
    found = sorted(set(log["load_id"].to_pylist()), key=float) if log is not None else []
    problems = []
    if len(found) != len(expected_rounds):
        problems.append(Difference(number, "runs", f"{len(found)} load id(s) {found} in the change log's manifest, "
                                   f"but files were loaded in rounds {expected_rounds}"))
    return dict(zip(found, expected_rounds, strict=False)), problems


def compare(box: Sandbox, truth: Path, number: int, tables: Sequence[str] = TABLES) -> list[Difference]:
    """Every difference between the sinks of `box` and the truth under `truth`, after round `number`."""
    manifest_log = pq.read_table(truth / "manifest_log.parquet")
    rounds, problems = _load_rounds(box, manifest_log, number)
    for name in tables:
        schema = pq.read_schema(truth / "tables" / f"{name}.parquet")  # with the columns an evolving run added
        columns = [c for c in schema.names if c != "_round"]
        state = _truth_rows(pq.read_table(truth / "tables" / f"{name}.parquet"), columns)
        log = _truth_rows(pq.read_table(truth / "changelog" / f"{name}.parquet"), columns)
        for sink, expected, found in (("duckdb", state, _warehouse(box, name)), ("delta", state, _delta(box, name)),
                                      ("changelog", log, _changelog(box, name))):
            rows = _rows(found, columns, schema, rounds, "_dlt_load_id") if found is not None else Counter()
            problems += _difference(number, sink, name, expected, rows, columns)
    rejects = pq.read_table(truth / "rejects.parquet")
    expected = _truth_rows(rejects, REJECT_COLUMNS)
    for sink, found in (("duckdb", _warehouse(box, "rejects")), ("delta", _delta(box, "rejects")),
                        ("changelog", _changelog(box, "rejects")), ("rejects_csv", _rejects_csv(box))):
        rows = _rows(found, REJECT_COLUMNS, rejects.schema, rounds, "load_id") if found is not None else Counter()
        problems += _difference(number, sink, "rejects", expected, rows, REJECT_COLUMNS)
    manifest = pq.read_table(truth / "manifest.parquet")
    for sink, expected, found in (
            ("duckdb", _truth_rows(manifest, MANIFEST_COLUMNS), _warehouse(box, "manifest_processed_files")),
            ("delta", _truth_rows(manifest, MANIFEST_COLUMNS), _delta(box, "manifest_processed_files")),
            ("changelog", _truth_rows(manifest_log, MANIFEST_COLUMNS), _changelog(box, "manifest_processed_files"))):
        rows = _rows(found, MANIFEST_COLUMNS, manifest.schema, rounds, "load_id") if found is not None else Counter()
        problems += _difference(number, sink, "manifest", expected, rows, MANIFEST_COLUMNS)
    history = pq.read_table(truth / "schema_history.parquet")
    for sink, found in (("duckdb", _warehouse(box, "schema_history")), ("delta", _delta(box, "schema_history")),
                        ("changelog", _changelog(box, "schema_history"))):
        rows = _rows(found, HISTORY_COLUMNS, history.schema, rounds, "load_id") if found is not None else Counter()
        problems += _difference(number, sink, "schema_history", _truth_rows(history, HISTORY_COLUMNS), rows,
                                HISTORY_COLUMNS)
    return problems + _one_stamp_per_load(box, number, tables)


def _one_stamp_per_load(box: Sandbox, number: int, tables: Sequence[str]) -> list[Difference]:
    """Every row of one load carries the load's one `ingestion_ts`, in every table of every sink."""
    stamps: dict[str, set[Any]] = {}
    for name in [*tables, "rejects", "manifest_processed_files"]:
        stamp, load = ("processed_at", "load_id") if name == "manifest_processed_files" else (
            ("ingestion_ts", "load_id") if name == "rejects" else ("ingestion_ts", "_dlt_load_id"))
        for found in (_warehouse(box, name), _delta(box, name), _changelog(box, name)):
            if found is None:
                continue
            for value, load_id in zip(found[stamp].to_pylist(), found[load].to_pylist(), strict=True):
                stamps.setdefault(load_id, set()).add(value)
    return [Difference(number, "runs", f"load {load_id} has {len(values)} ingestion_ts values {sorted(values)[:3]}")
            for load_id, values in sorted(stamps.items()) if len(values) != 1]


def _snapshot(box: Sandbox, tables: Sequence[str]) -> dict[str, Any]:
    """Every table of every sink as sorted rows, to tell that a run changed nothing."""
    state: dict[str, Any] = {}
    for name in [*tables, "rejects", "manifest_processed_files", "schema_history"]:
        for sink, found in (("duckdb", _warehouse(box, name)), ("delta", _delta(box, name)),
                            ("changelog", _changelog(box, name))):
            state[f"{sink} {name}"] = sorted(map(repr, _plain(found).to_pylist())) if found is not None else None
    state["rejects csv"] = sorted(p.name for p in (box.lake / "_rejects").glob("*/*.csv"))
    return state


@dataclass
class SeedRun:
    """What happened to one case: the runs, every difference found after each round."""

    seed: int
    history: list[str]
    differences: list[Difference]

    def report(self, check: str) -> str:
        return "\n".join([*self.history, *(line for d in self.differences if d.check == check for line in d.lines())])


def evolve_schema(seed: int) -> bool:
    """Whether the runs of a seed use `--evolve-schema` (a third of the seeds; a stream of its own, so that the
    knobs and kills of a seed do not depend on it)."""
    return random.Random(f"chaos-evolve/{seed}").random() < 1 / 3


@dataclass(frozen=True)
class Case:
    """Deliveries run through the command line: a seed, its knobs (drawn from the seed unless given), the tables, the
    rounds, whether runs are killed, and whether they use `--evolve-schema` (drawn from the seed unless given)."""

    seed: int
    knobs: Any = None
    tables: tuple[str, ...] = tuple(TABLES)
    rounds: int = ROUNDS
    kills: bool = True
    evolve: bool | None = None
    kill_plan: tuple[tuple[int, dict[str, Any]], ...] = ()
    """(round, kill) pairs run instead of the drawn kill schedule."""


def run_case(root: Path, case: Case, random_times: bool = RANDOM_TIMES) -> SeedRun:
    """Deliver and load the rounds of `case` under `root` and compare every sink with the truth after each round;
    the rounds go on after a difference (a sink that went wrong stays wrong in later rounds), so that each sink is
    judged on every round. A run that fails stops the case (a `runs` difference)."""
    seed, tables, rounds = case.seed, list(case.tables), case.rounds
    knobs = case.knobs or gen.random_knobs(seed)
    evolve = evolve_schema(seed) if case.evolve is None else case.evolve
    plan = root / "deliveries"
    gen.generate_deliveries(plan, rounds=rounds, seed=seed, knobs=knobs, tables=tables, evolve=evolve)
    box = make_sandbox(root / "run")
    draw = random.Random(f"chaos-kills/{seed}")
    result = SeedRun(seed, [f"seed {seed}, tables {','.join(tables)}{', --evolve-schema' if evolve else ''}, "
                            f"knobs {json.dumps(knobs.document())}"], [])
    for number in range(1, rounds + 1):
        gen.apply_round(plan, number, box.raw)
        planned = [kill for n, kill in case.kill_plan if n == number]
        for kill in planned if case.kill_plan else _kill_schedule(draw, random_times) if case.kills else []:
            code, output = _run(box, kill, tables=tables, evolve=evolve)
            result.history.append(f"round {number}: killed {kill} -> exit {code}")
            if code not in (0, -signal.SIGKILL):
                result.differences.append(Difference(number, "runs", f"a run killed with {kill} exited {code}: "
                                                                      f"{output.strip()[-2000:]}"))
                return result
        code, output = _run(box, tables=tables, evolve=evolve)
        result.history.append(f"round {number}: run -> exit {code}")
        if code != 0:
            result.differences.append(Difference(number, "runs", f"the run exited {code}: {output.strip()[-2000:]}"))
            return result
        result.differences += compare(box, gen.round_dir(plan, number) / "truth", number, tables)
    before = _snapshot(box, tables)
    code, output = _run(box, tables=tables, evolve=evolve)
    result.history.append(f"after round {rounds}: run -> exit {code}")
    changed = sorted(k for k, v in _snapshot(box, tables).items() if v != before.get(k))
    if code != 0 or changed:
        result.differences.append(Difference(rounds, "runs", f"a run with nothing new exited {code} and changed "
                                                             f"{changed or 'nothing'}: {output.strip()[-2000:]}"))
    return result


def run_seed(root: Path, seed: int, rounds: int = ROUNDS, random_times: bool = RANDOM_TIMES) -> SeedRun:
    """`run_case` of a seed with the knobs, kills and `--evolve-schema` it draws."""
    return run_case(root, Case(seed, rounds=rounds), random_times)


QUIET = {"dirty": {}, "drift_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0, "redeliver_rate": 0.0,
         "change_rate": 0.0}
PROFILES = {
    "same-size-edits": Case(4, gen.Knobs(**{**QUIET, "change_rate": 0.5}, keep_mtime_rate=1.0), rounds=2,
                            kills=False, evolve=False),
    "emptied-files": Case(4, gen.Knobs(**{**QUIET, "dirty": {"NOT_NULL": 0.02}, "change_rate": 0.8}), rounds=2,
                          kills=False, evolve=False),
    "sparse-added-keys": Case(2, gen.Knobs(**{**QUIET, "drift_rate": 1.0}, sparse_keys=0.5), rounds=2, kills=False,
                              evolve=False),
    "evolving-first-load": Case(1, gen.Knobs(**{**QUIET, "drift_rate": 1.0}), tables=("events",), rounds=1,
                                kills=False, evolve=True),
    "evolving-late-versions": Case(13, gen.Knobs(**{**QUIET, "drift_rate": 1.0, "late_rate": 0.6}),
                                   tables=("orders", "order_items"), rounds=2, kills=False, evolve=True),
    "evolving-killed-load": Case(2, gen.Knobs(**{**QUIET, "drift_rate": 1.0}), tables=("sensors",), rounds=2,
                                 evolve=True, kill_plan=((2, {"job": "sensors", "moment": "after_marker"}),)),
}
"""Cases aimed at one behaviour each, with a seed that exercises it: changed files that keep their size and
modification time (issue 13, section 1); files delivered again with no valid rows (an empty version, or every row
rejected); JSON Lines records without an added key that other records of their file have; columns added by the load
that creates a table (`--evolve-schema`); late versions that bring an added column (`--evolve-schema`); a run killed
after DuckDB committed a job of a load that adds columns (`--evolve-schema`)."""
CASES = {**{f"seed-{s}": Case(s) for s in range(FIRST_SEED, FIRST_SEED + SEEDS)}, **PROFILES}


def _cases() -> list[Any]:
    cases = []
    for name in CASES:
        for check in CHECKS:
            bug = KNOWN_BUGS.get((name, check))
            marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug and not RANDOM_TIMES else []
            cases.append(pytest.param(name, check, id=f"{name}-{check}", marks=marks))
    return cases


@pytest.fixture(scope="module")
def case_runs() -> dict[str, SeedRun]:
    """Each case runs once; its tests (one per check) share the outcome."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize(("case", "check"), _cases())
def test_deliveries_match_the_ground_truth(case: str, check: str, case_runs: dict[str, SeedRun],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    if case not in case_runs:
        case_runs[case] = run_case(tmp_path_factory.mktemp(f"chaos-{case}"), CASES[case])
    run = case_runs[case]
    stopped = [d for d in run.differences if d.sink == "runs" and "exited" in d.output]
    assert not stopped or check == "runs", f"the case stopped: {stopped[0].lines()[0]}"
    assert not [d for d in run.differences if d.check == check], run.report(check)


def test_the_ground_truth_follows_the_documented_merge_semantics(tmp_path: Path) -> None:
    """The truth itself, on hand-made versions: newest wins within a load (ties to the file that sorts last), late
    versions lose across loads, an equal sequence value from a later load replaces, conflicting content is
    DUPLICATE_KEY, and an append file delivered again replaces its rows (none when its new version is rejected)."""
    truth = gen.GroundTruth(["orders", "events"])
    orders, events = gen.CHAOS_TABLES["orders"], gen.CHAOS_TABLES["events"]
    rng = gen.Rng(1, "test")

    def version(table: Any, path: str, keys: list[Any], when: list[int], conflict: bool = False) -> Any:
        key = {"orders": "order_id", "events": "event_id"}[table.name]
        rows = gen.MAKERS[table.name].rows(rng, pa.table({key: keys}), pa.array(when, pa.int64()))
        if conflict:
            rows = gen.MAKERS[table.name].conflict(rows)
        spec = gen.FileSpec(fmt=table.formats[0], columns=list(table.contract.names))
        return gen.render(table, path, rows, spec)

    base = gen.START
    first = [version(orders, "orders/b.csv", [1, 2], [base + 10, base + 10]),
             version(orders, "orders/a.csv", [1, 3], [base + 20, base + 5]),
             version(orders, "orders/c.csv", [3], [base + 5], conflict=True)]
    truth.load(1, [gen.Delivery(v.path, "add", v) for v in first])
    state = {r["order_id"]: (r["src_filename"], r["_round"]) for r in truth.state["orders"].to_pylist()}
    assert state == {1: ("orders/a.csv", 1), 2: ("orders/b.csv", 1)}
    codes = Counter((r["src_filename"], r["reason_code"]) for t in truth.rejects for r in t.to_pylist())
    assert codes == {("orders/a.csv", "DUPLICATE_KEY"): 1, ("orders/c.csv", "DUPLICATE_KEY"): 1}
    assert truth.manifest["orders/b.csv", first[0].fingerprint]["superseded_count"] == 1

    late = version(orders, "orders/d.csv", [1, 2], [base + 15, base + 10])
    truth.load(2, [gen.Delivery(late.path, "add", late), gen.Delivery("orders/b.csv", "redeliver"),
                   gen.Delivery("orders/a.csv", "replace", first[1])])
    state = {r["order_id"]: (r["src_filename"], r["_round"]) for r in truth.state["orders"].to_pylist()}
    assert state == {1: ("orders/a.csv", 1), 2: ("orders/d.csv", 2)}
    assert [r["src_path"] for r in truth.manifest_log if r["_round"] == 2] == ["orders/d.csv"]

    one = version(events, "events/e.jsonl", ["e1", "e2"], [base, base])
    truth.load(3, [gen.Delivery(one.path, "add", one)])
    changed = version(events, "events/e.jsonl", ["e3"], [base])
    broken = gen.FileVersion("events", "events/f.jsonl", b"x", "FILE_UNREADABLE", one.rows.slice(0, 0),
                             one.rejects, 0, None, one.intent, None)
    truth.load(4, [gen.Delivery(changed.path, "replace", changed), gen.Delivery(broken.path, "add", broken)])
    assert sorted(r["event_id"] for r in truth.state["events"].to_pylist()) == ["e3"]
    assert [r["event_id"] for r in truth.log["events"][-2].to_pylist()] == ["e1", "e2"]
    assert truth.manifest["events/e.jsonl", changed.fingerprint]["replaced_fingerprint"] == one.fingerprint
    rejected = gen.FileVersion("events", "events/e.jsonl", b"y", "FILE_UNREADABLE", one.rows.slice(0, 0),
                               one.rejects, 0, None, one.intent, None)
    truth.load(5, [gen.Delivery(rejected.path, "replace", rejected)])
    assert sorted(r["event_id"] for r in truth.state["events"].to_pylist()) == ["e3"]


def test_the_ground_truth_of_evolving_runs_and_rescued_keys(tmp_path: Path) -> None:
    """With `--evolve-schema` an added column takes the type its first file gives it (Parquet integers: bigint);
    a file holding it as text, in the same load or a later one, is a COLUMN_TYPE_CHANGED file reject. Without
    it, a JSON Lines record rescues only the added keys it has."""
    sensors, events = gen.CHAOS_TABLES["sensors"], gen.CHAOS_TABLES["events"]
    rng = gen.Rng(2, "test")
    planner = gen.DeliveryPlanner(2, 1.0, gen.Knobs(), ["sensors", "events"])

    def version(table: Any, path: str, fmt: str, n: int, sparse: float = 0.0) -> Any:
        keys = planner._new_keys(table, n, rng)
        rows = gen.MAKERS[table.name].rows(rng, keys, pa.array([gen.START] * keys.num_rows, pa.int64()))
        spec = gen.FileSpec(fmt=fmt, columns=[*table.contract.names, "x_batch"], extras={"x_batch": "int"},
                            sparse_keys=sparse)
        return gen.render(table, path, rows, spec)

    truth = gen.GroundTruth(["sensors"], evolve=True)
    first = [version(sensors, "sensors/a.parquet", "parquet", 8), version(sensors, "sensors/b.csv", "csv", 5)]
    truth.load(1, [gen.Delivery(v.path, "add", v) for v in first])
    later = version(sensors, "sensors/c.csv", "csv", 4)
    truth.load(2, [gen.Delivery(later.path, "add", later)])
    assert [(r["src_filename"], r["reason_code"]) for t in truth.rejects for r in t.to_pylist()] == [
        ("sensors/b.csv", "COLUMN_TYPE_CHANGED"), ("sensors/c.csv", "COLUMN_TYPE_CHANGED")]
    assert truth.schema_history == [{"table_name": "sensors", "column_name": "x_batch", "data_type": "bigint",
                                     "_round": 1}]
    state = truth.state["sensors"]
    assert state.schema.field("x_batch").type == pa.int64() and state.num_rows == 8
    assert pc.all(pc.is_null(state["_rescued_data"])).as_py()

    # A column comes with the rows that load with it: a file whose every row is rejected adds none.
    truth = gen.GroundTruth(["sensors"], evolve=True)
    rejected = version(sensors, "sensors/d.parquet", "parquet", 6)
    rejected = dataclasses.replace(rejected, rows=rejected.rows.set_column(
        1, "_valid", pa.repeat(pa.scalar(False), rejected.rows.num_rows)))
    truth.load(1, [gen.Delivery(rejected.path, "add", rejected)])
    text = version(sensors, "sensors/e.csv", "csv", 3)
    truth.load(2, [gen.Delivery(text.path, "add", text)])
    assert [h["data_type"] for h in truth.schema_history] == ["text"]
    assert truth.state["sensors"].schema.field("x_batch").type == pa.string()

    sparse = version(events, "events/e.jsonl", "jsonl", 40, sparse=0.5)
    rescued = [r["_rescued_data"] for r in sparse.rows.to_pylist()]
    assert None in rescued and '{"x_batch":' in "".join(r for r in rescued if r)
    lines = [json.loads(line) for line in sparse.data.decode().splitlines()]
    assert [("x_batch" in line) for line in lines] == [r is not None for r in rescued]
