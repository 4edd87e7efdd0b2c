"""State belongs to the data it describes: several lakes and clones on one machine, lost or shared sinks.

Each scenario ends with every sink equal to a clean run of the same raw files (run-specific columns aside), or with
a one-line refusal that writes nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    SAMPLE,
    Sandbox,
    box_args,
    changelog_table,
    generate,
    make_sandbox,
    query,
    run_cli,
    snapshot,
)

from retail_bronze_source.sinks.identity import pipeline_names

TABLES = ["customers", "order_items", "events", "sensors"]
Snapshot = dict[str, dict[str, list[tuple[Any, ...]]]]


def _raw(root: Path, source: Path = SAMPLE) -> Path:
    raw = root / "raw"
    for table in TABLES:
        shutil.copytree(source / table, raw / table)
    return raw


def _run(box: Sandbox, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = run_cli(*box_args(box, TABLES), *extra, env=env)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def other_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files of another delivery (another generator seed): other keys, values and rejects."""
    out = tmp_path_factory.mktemp("other_raw")
    generate(out / "generated", "--seed", "7", "--scale", "1")
    return _raw(out, out / "generated")


def _clean(root: Path, raw: Path) -> Snapshot:
    box = make_sandbox(root, raw=raw)
    _run(box)
    return snapshot(box, TABLES)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    root = tmp_path_factory.mktemp("clean")
    return _clean(root, _raw(root))


@pytest.fixture(scope="module")
def other_clean(tmp_path_factory: pytest.TempPathFactory, other_raw: Path) -> Snapshot:
    return _clean(tmp_path_factory.mktemp("other_clean"), other_raw)


def _lose(box: Sandbox, part: str) -> None:
    if part == "warehouse":
        for path in box.warehouse.parent.glob(box.warehouse.name + "*"):
            if not path.name.endswith(".lock"):
                path.unlink()
    else:
        shutil.rmtree({"lake": box.lake, "pipelines": box.pipelines_dir}[part])


@pytest.mark.slow
@pytest.mark.parametrize("lost", [("warehouse",), ("lake",), ("pipelines",), ("warehouse", "lake"),
                                  ("warehouse", "pipelines"), ("lake", "pipelines")], ids="+".join)
def test_lost_sinks_converge_to_a_clean_run(tmp_path: Path, lost: tuple[str, ...], clean: Snapshot) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    for part in lost:
        _lose(box, part)
    recovered = _run(box)
    assert snapshot(box, TABLES) == clean, recovered.stdout
    again = _run(box)
    assert snapshot(box, TABLES) == clean
    assert "nothing new: " in again.stdout


@pytest.mark.slow
def test_a_lake_lost_after_its_warehouse_was_restored_from_it_is_rebuilt(tmp_path: Path, other_raw: Path,
                                                                         clean: Snapshot) -> None:
    """The loads a restored warehouse took from its lake are its own: a lake lost later gets them back."""
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    _lose(box, "warehouse")
    assert "restored from the lake's Delta tables" in _run(box).stdout
    _lose(box, "lake")
    _run(box)
    assert snapshot(box, TABLES) == clean
    for source in sorted((other_raw / "events").iterdir()):
        shutil.copy(source, box.raw / "events" / f"b_{source.name}")
    _lose(box, "lake")
    _run(box)
    assert snapshot(box, TABLES) == _clean(tmp_path / "clean", box.raw)


@pytest.mark.slow
def test_alternating_lakes_never_share_state(tmp_path: Path, other_raw: Path, clean: Snapshot,
                                             other_clean: Snapshot) -> None:
    """Lake A, then lake B on other raw files, then A again, with one pipelines directory."""
    a = make_sandbox(tmp_path / "a", raw=_raw(tmp_path / "a"))
    b = make_sandbox(tmp_path / "b", raw=other_raw)
    shared = tmp_path / "pipelines"
    for box in (a, b, a, b):
        _run(Sandbox(box.raw, box.lake, box.warehouse, shared))
    assert snapshot(a, TABLES) == clean
    assert snapshot(b, TABLES) == other_clean


@pytest.mark.slow
def test_two_clones_on_one_machine_keep_their_own_state(tmp_path: Path, other_raw: Path, clean: Snapshot,
                                                        other_clean: Snapshot) -> None:
    """Two checkouts, each with the default layout (so both use the pipeline name retail_bronze in dlt's default
    pipelines directory), run one after the other and then at the same time."""
    home = {"DLT_DATA_DIR": str(tmp_path / "dlt_home")}
    clones = {"one": _raw(tmp_path / "one"), "two": other_raw}
    for name, raw in clones.items():
        (tmp_path / name).mkdir(exist_ok=True)
        if raw.parent != tmp_path / name:
            shutil.copytree(raw, tmp_path / name / "raw")
    for name in ("one", "two", "one"):
        done = run_cli("--raw", "raw", "--tables", ",".join(TABLES), cwd=tmp_path / name, env=home)
        assert done.returncode == 0, done.stderr
        assert "inspect: dlt pipeline retail_bronze info" in done.stdout
    racing = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", "raw",
                                "--tables", ",".join(TABLES)], cwd=tmp_path / name, env={**_environ(), **home},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in clones]
    for process in racing:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    for name, expected in (("one", clean), ("two", other_clean)):
        box = Sandbox(tmp_path / name / "raw", tmp_path / name / "lake",
                      tmp_path / name / "duckdb" / "warehouse.duckdb", tmp_path / "dlt_home" / "pipelines")
        assert snapshot(box, TABLES) == expected, name


@pytest.mark.slow
def test_one_warehouse_and_lake_under_other_paths_and_names_load_each_file_once(tmp_path: Path,
                                                                                other_raw: Path) -> None:
    """The default layout run from its folder, then named by absolute paths from another folder (the same
    pipelines), then with its warehouse moved away (other pipelines: their state starts from the sinks) and back
    (the first pipelines, whose state is now older than the warehouse and the lake), new files before each run:
    every sink ends equal to one clean run of the final files, and the change log imports each load once."""
    home = {"DLT_DATA_DIR": str(tmp_path / "dlt_home")}
    clone = tmp_path / "clone"
    _raw(clone)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    default = clone / "duckdb" / "warehouse.duckdb"
    moved = clone / "moved" / "w.duckdb"
    box = Sandbox(clone / "raw", clone / "lake", default, tmp_path / "dlt_home")
    tables = ["--tables", ",".join(TABLES)]
    absolute = ["--raw", str(clone / "raw"), "--lake", str(clone / "lake")]
    steps = [(None, clone, ["--raw", "raw"]), ("b", elsewhere, [*absolute, "--warehouse", str(default)]),
             ("c", elsewhere, [*absolute, "--warehouse", str(moved)]), ("d", clone, ["--raw", "raw"])]
    for delivery, cwd, args in steps:
        if delivery is not None:
            for source in sorted((other_raw / "events").iterdir()):
                shutil.copy(source, clone / "raw" / "events" / f"{delivery}_{source.name}")
        if delivery == "c":
            moved.parent.mkdir()
            default.rename(moved)
        if delivery == "d":
            moved.rename(default)
        done = run_cli(*args, *tables, cwd=cwd, env=home)
        assert done.returncode == 0, done.stderr
    assert "retail_bronze_lake" in done.stdout
    loads = changelog_table(box.lake, "change_log_imports").column("warehouse_load_id").to_pylist()
    assert len(loads) == len(set(loads)) == 4
    assert snapshot(box, TABLES) == _clean(tmp_path / "clean", box.raw)


@pytest.mark.slow
def test_concurrent_runs_on_different_targets_sharing_a_pipelines_dir(tmp_path: Path, other_raw: Path,
                                                                      clean: Snapshot, other_clean: Snapshot) -> None:
    shared = tmp_path / "pipelines"
    a = Sandbox(_raw(tmp_path / "a"), tmp_path / "a" / "lake", tmp_path / "a" / "w.duckdb", shared)
    b = Sandbox(other_raw, tmp_path / "b" / "lake", tmp_path / "b" / "w.duckdb", shared)
    racing = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), *box_args(box, TABLES)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for box in (a, b)]
    for process in racing:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert snapshot(a, TABLES) == clean
    assert snapshot(b, TABLES) == other_clean
    assert query(a.warehouse, "SELECT count(*) - count(DISTINCT customer_id) FROM bronze.customers") == [(0,)]


@pytest.mark.slow
def test_a_lake_is_refused_to_a_second_warehouse(tmp_path: Path, clean: Snapshot) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    other = Sandbox(box.raw, box.lake, tmp_path / "other" / "w.duckdb", box.pipelines_dir)
    done = run_cli(*box_args(other, TABLES))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"mirrors the warehouse {box.warehouse.resolve()}" in lines[0], lines
    assert not other.warehouse.exists() or query(
        other.warehouse, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bronze'") == [(0,)]
    assert snapshot(box, TABLES) == clean


@pytest.mark.slow
def test_a_copied_warehouse_is_refused_and_a_moved_one_accepted(tmp_path: Path, other_raw: Path,
                                                                clean: Snapshot) -> None:
    """A copy carries the identity of the warehouse the lake mirrors: run on other files it would diverge from
    the original, and the lake would take the loads of both."""
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    copy = Sandbox(other_raw, box.lake, tmp_path / "copy" / "w.duckdb", box.pipelines_dir)
    copy.warehouse.parent.mkdir()
    shutil.copy(box.warehouse, copy.warehouse)
    done = run_cli(*box_args(copy, TABLES))
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is a copy of {box.warehouse.resolve()}" in lines[0], lines
    assert snapshot(box, TABLES) == clean
    moved = Sandbox(box.raw, box.lake, tmp_path / "moved" / "w.duckdb", box.pipelines_dir)
    moved.warehouse.parent.mkdir()
    box.warehouse.rename(moved.warehouse)
    again = _run(moved)
    assert "nothing new: " in again.stdout
    assert snapshot(moved, TABLES) == clean


@pytest.mark.slow
@pytest.mark.parametrize("put_back", ["backup at its path", "copy elsewhere"])
def test_a_warehouse_behind_its_lake_is_refused_until_restored(tmp_path: Path, other_raw: Path, put_back: str) -> None:
    """An older copy of the warehouse (a backup put back, or a copy whose original loaded more and was deleted)
    would load again the files the lake holds: it is refused, and once deleted it is restored from the lake."""
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    old = tmp_path / "old.duckdb"
    for suffix in ("", ".wal"):  # a copy of a DuckDB file takes its write-ahead log along
        if box.warehouse.with_name(box.warehouse.name + suffix).exists():
            shutil.copy(box.warehouse.with_name(box.warehouse.name + suffix), old.with_name(old.name + suffix))
    for source in sorted((other_raw / "events").iterdir()):
        shutil.copy(source, box.raw / "events" / f"b_{source.name}")
    _run(box)
    before = snapshot(box, TABLES)
    _lose(box, "warehouse")
    target = box if put_back == "backup at its path" else Sandbox(box.raw, box.lake, old, box.pipelines_dir)
    if put_back == "backup at its path":
        for suffix in ("", ".wal"):
            if old.with_name(old.name + suffix).exists():
                old.with_name(old.name + suffix).rename(box.warehouse.with_name(box.warehouse.name + suffix))
    done = run_cli(*box_args(target, TABLES))
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the warehouse {target.warehouse.resolve()} is behind the lake" in lines[0], lines
    assert {name: sinks["delta"] for name, sinks in snapshot(target, TABLES).items()} == {
        name: sinks["delta"] for name, sinks in before.items()}
    _lose(target, "warehouse")
    restored = _run(target)
    assert "restored from the lake's Delta tables" in restored.stdout
    assert snapshot(target, TABLES) == before
    assert "nothing new: " in _run(target).stdout


@pytest.mark.slow
def test_a_reload_by_a_pipeline_without_state_reloads(tmp_path: Path, clean: Snapshot) -> None:
    """A moved warehouse gets pipelines named after its new path, with no state yet: `--reload` still reloads (the
    table is not taken as loaded by its manifest)."""
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    moved = Sandbox(box.raw, box.lake, tmp_path / "moved" / "w.duckdb", box.pipelines_dir)
    moved.warehouse.parent.mkdir()
    box.warehouse.rename(moved.warehouse)
    done = _run(moved, "--reload", "events")
    events = next(line for line in done.stdout.splitlines() if line.lstrip().startswith("events"))
    assert " 0 file(s) read" not in events, done.stdout
    assert query(moved.warehouse, "SELECT table_name, reason FROM bronze.table_resets") == [
        ("events", "reloaded with --reload")]
    got = snapshot(moved, TABLES)
    for sink in ("duckdb", "delta"):  # the change log is a log: it holds the first load of events too
        assert {name: sinks[sink] for name, sinks in got.items()} == {
            name: sinks[sink] for name, sinks in clean.items()}, sink


@pytest.mark.slow
def test_a_lake_without_its_binding_takes_only_its_own_warehouse(tmp_path: Path, other_raw: Path,
                                                                 clean: Snapshot) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    _run(box)
    (box.lake / "_retail_bronze" / "sink.json").unlink()
    other = Sandbox(other_raw, box.lake, tmp_path / "other" / "w.duckdb", tmp_path / "other_pipelines")
    done = run_cli(*box_args(other, TABLES))
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds data but no record of the warehouse it mirrors" in lines[0], lines
    assert snapshot(box, TABLES) == clean
    again = _run(box)
    assert "nothing new: " in again.stdout
    assert (box.lake / "_retail_bronze" / "sink.json").exists()
    assert snapshot(box, TABLES) == clean


def test_default_layout_keeps_the_plain_pipeline_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert pipeline_names(Path("duckdb/warehouse.duckdb"), Path("lake")) == ("retail_bronze", "retail_bronze_lake")
    assert pipeline_names(tmp_path / "duckdb" / "warehouse.duckdb", tmp_path / "lake") == (
        "retail_bronze", "retail_bronze_lake")
    # The names are the targets', not the working directory's: the same layout named from elsewhere.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert pipeline_names(Path("../duckdb/warehouse.duckdb"), Path("../lake")) == (
        "retail_bronze", "retail_bronze_lake")
    mixed = pipeline_names(Path("../duckdb/warehouse.duckdb"), Path("../other_lake"))
    assert mixed[0].startswith("retail_bronze_") and mixed[1].startswith("retail_bronze_lake_")
    other = pipeline_names(tmp_path / "x.duckdb", tmp_path / "lake2")
    assert other[0].startswith("retail_bronze_") and other[1].startswith("retail_bronze_lake_")
    assert other != pipeline_names(tmp_path / "y.duckdb", tmp_path / "lake3")


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
