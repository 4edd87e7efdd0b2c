"""Benchmark: this package against DuckDB alone and dlt's built-in CSV reader on the same generated files.

`python bench/run_benchmark.py [--scale 1000] [--dlt-scale 20] [--formats-scale N] [--no-formats] [--scaling]
[--repeat N] [--baseline CHECKOUT] [--quick] [--work DIR]`, or `python bench/run_benchmark.py --worst-cases
[--work DIR]` for the files at and over the readers' limits (`bench/worst_cases.py`) alone.

Every measurement runs in its own child process (`bench/contenders.py`); its peak memory is that child's RSS high-water
mark as the kernel reports it when the child is reaped (`os.wait4`, the per-child form of `RUSAGE_CHILDREN`), and its
wall time covers the load only, not interpreter start-up or imports. With `--repeat N` the head to head (DuckDB, the
package, the package on dirty input) runs N rounds, interleaved, and each ratio is the median of its rounds: on a
shared machine one pair of runs can be off by 10%. `--baseline CHECKOUT` also runs the package of another checkout
(a `git worktree` of an earlier commit, say) in every round of the head to head, so that a change is judged against
its base under the same load of the machine, not against a ratio measured on another day. The report is printed and
written to `<work>/report.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "scripts" / "generate_raw_data.py"
DEFAULT_WORK = REPO / "bench" / "out"

FORMAT_TABLES: dict[str, str] = {
    "products": "Parquet",
    "order_items": "Parquet",
    "exchange_rates": "XLSX",
    "events": "JSONL",
    "returns": "Delta",
    "sensors": "CSV+Parquet",
}
"""The per-format section: table and its delivery format."""

LABELS: dict[str, str] = {
    "duckdb": "(1) DuckDB bare",
    "package": "(2) retail_bronze_source",
    "baseline": "(2b) the --baseline checkout",
    "dlt_read_csv": "(3) dlt filesystem|read_csv",
    "dlt_read_csv_duckdb": "(3b) dlt filesystem|read_csv_duckdb",
}
DIRTY_FRACTION = 0.05
SCALING_FACTOR = 5


@dataclass
class Measurement:
    """One contender loading one table once, in its own process."""

    section: str
    contender: str
    table: str
    scale: float
    rows: int | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    status: str = "ok"
    """`ok`, `n/a` (this machine cannot run the contender) or `failed` (the child exited non-zero)."""
    note: str = ""
    round: int = 0
    """Round of a repeated measurement (`--repeat`), from 0."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        if self.status != "ok" or not self.rows or not self.wall_s:
            return None
        return self.rows / self.wall_s

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": LABELS[self.contender], "rows_per_s": self.rows_per_s}


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures."""

    scale: float
    dlt_scale: float
    formats_scale: float | None
    """None: the per-format section is skipped."""
    scaling: bool
    work: Path
    repeat: int = 1
    """Rounds of the head to head and of the dirty run."""
    worst_cases: bool = False
    """Measure only the worst cases: files at and over the readers' limits."""
    baseline: Path | None = None
    """Another checkout of the project whose package runs beside this one in the head to head."""


def measure(settings: Settings, section: str, contender: str, raw: Path, table: str, scale: float, *,
            target: Path | None = None) -> Measurement:
    """Run one contender in a fresh child process and collect its numbers.

    Without `target` it loads into a fresh directory, removed afterwards; a given `target` is used as it is (a first
    load kept for a later incremental one) and kept. The `baseline` contender is the package of `settings.baseline`,
    run by that checkout's own `bench/contenders.py`, from that checkout (its code and `.dlt/` configuration).
    """
    name = f"{section}-{contender}-{table}-{scale:g}".replace(" ", "_")
    runs = settings.work / "runs"
    keep = target is not None
    if target is None:
        target = runs / name
        if target.exists():
            shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    result, log = runs / f"{name}.json", runs / f"{name}.log"
    result.unlink(missing_ok=True)
    repo = settings.baseline if contender == "baseline" and settings.baseline else REPO
    command = [sys.executable, str(repo / "bench" / "contenders.py"), "package" if contender == "baseline" else
               contender, "--raw", str(raw), "--target", str(target), "--table", table, "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    print(f"  {LABELS[contender]:38} {table:15} scale {scale:g} ...", end=" ", flush=True)
    with log.open("wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=repo, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    m = Measurement(section, contender, table, scale, peak_rss_mb=usage.ru_maxrss / 1024)
    if child.returncode != 0 or not result.exists():
        m.status, m.note = "failed", f"exit {child.returncode}: {_last_line(log)} (log: {log})"
    else:
        outcome = json.loads(result.read_text())
        if "unavailable" in outcome:
            m.status, m.note, m.peak_rss_mb = "n/a", outcome["unavailable"], None
        else:
            m.rows, m.wall_s, m.extra = outcome["rows"], outcome["wall_s"], outcome["extra"]
            notes = [f"{m.extra['rejected']:,} rejected"] if m.extra.get("rejected") else []
            notes += [f"{m.extra['failed_jobs']} failed load job(s)"] if m.extra.get("failed_jobs") else []
            m.note = ", ".join(notes)
    if not keep:
        shutil.rmtree(target)
    print(_cell(m.wall_s, "{:.1f} s") if m.status == "ok" else m.status, flush=True)
    return m


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def generate(settings: Settings, name: str, scale: float, tables: Sequence[str], *flags: str) -> Path:
    """Write raw input with the project's generator into `<work>/raw/<name>`."""
    out = settings.work / "raw" / name
    command = [sys.executable, str(GENERATOR), "--out", str(out), "--scale", f"{scale:g}",
               "--tables", ",".join(tables), *flags]
    print(f"  generating {name} (scale {scale:g}, {','.join(tables)})", flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def head_to_head(settings: Settings) -> list[Measurement]:
    """Orders CSV at `scale`: DuckDB bare against the package, and the package on dirty input, in `repeat` interleaved
    rounds; at `dlt_scale`: dlt's built-in readers and the package."""
    raw = generate(settings, f"orders-{settings.scale:g}", settings.scale, ["orders"], "--clean")
    dirty = generate(settings, f"orders-dirty-{settings.scale:g}", settings.scale, ["orders"],
                     "--dirty-fraction", str(DIRTY_FRACTION))
    found = []
    packages = [("orders", "package", raw), *([("orders", "baseline", raw)] if settings.baseline else [])]
    for round_ in range(settings.repeat):
        # The two packages take turns in running first, so that neither always finds the machine in the same state.
        runs = [("orders", "duckdb", raw), *(packages if round_ % 2 == 0 else packages[::-1]),
                ("dirty", "package", dirty)]
        measured = [measure(settings, section, contender, source, "orders", settings.scale)
                    for section, contender, source in runs]
        duck = measured[0]
        for m in measured:
            m.round = round_
            if m.section == "orders" and m is not duck and m.status == duck.status == "ok" and m.rows != duck.rows:
                m.note = f"rows differ from (1): {duck.rows:,}"
        found += measured
    contenders = ["dlt_read_csv", "dlt_read_csv_duckdb"]
    if settings.dlt_scale == settings.scale:
        small = raw
    else:
        small = generate(settings, f"orders-{settings.dlt_scale:g}", settings.dlt_scale, ["orders"], "--clean")
        contenders.insert(0, "package")
    found += [measure(settings, "orders small", c, small, "orders", settings.dlt_scale) for c in contenders]
    return found


def formats(settings: Settings) -> list[Measurement]:
    """Each delivery format: the package against DuckDB's own reader where it has one."""
    if settings.formats_scale is None:
        return []
    scale = settings.formats_scale
    raw = generate(settings, f"formats-{scale:g}", scale, list(FORMAT_TABLES), "--clean")
    return [measure(settings, "formats", c, raw, table, scale) for table in FORMAT_TABLES for c in ("package", "duckdb")]


def scaling(settings: Settings) -> list[Measurement]:
    """The package at `SCALING_FACTOR` times the scale, then a 1% update of that load (with --scaling)."""
    found = []
    if settings.scaling:
        big = settings.scale * SCALING_FACTOR
        raw = generate(settings, f"orders-{big:g}", big, ["orders"], "--clean")
        loaded = settings.work / "runs" / f"scaling-loaded-{big:g}"
        shutil.rmtree(loaded, ignore_errors=True)
        found.append(measure(settings, "scaling", "package", raw, "orders", big, target=loaded))
        update = write_update(raw, UPDATE_FRACTION)
        try:
            found.append(measure(settings, "update", "package", raw, "orders", big, target=loaded))
        finally:
            update.unlink()
            shutil.rmtree(loaded)
    return found


UPDATE_FRACTION = 0.01


def write_update(raw: Path, fraction: float) -> Path:
    """A new orders file changing `fraction` of the orders in `raw` (a later `updated_at`, new amount and note)."""
    import duckdb

    target = raw / "orders" / "orders_zz_update.csv"
    every = round(1 / fraction)
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * REPLACE (CAST(CAST(total_amount AS DECIMAL(12, 2)) + 1 AS VARCHAR) AS total_amount, "
            f"'updated by the benchmark' AS note, '2030-01-01T00:00:00+00:00' AS updated_at) "
            f"FROM read_csv('{raw.as_posix()}/orders/*.csv', header = true, all_varchar = true) "
            f"WHERE CAST(order_id AS BIGINT) % {every} = 0 "
            f"QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY updated_at DESC) = 1) "
            f"TO '{target.as_posix()}' (HEADER, DELIMITER ',')")
    return target


def worst(settings: Settings) -> list[Measurement]:
    """Each worst case (`bench/worst_cases.py`) loaded alone by the package with the registry's default limits."""
    from worst_cases import cases

    found = []
    for name, (table, what, write) in cases().items():
        raw = settings.work / "raw" / f"worst-{name}"
        if raw.exists():
            shutil.rmtree(raw)
        (raw / table).mkdir(parents=True)
        print(f"  writing {name}: {what}", flush=True)
        write(raw)
        m = measure(settings, f"worst-{name}", "package", raw, table, 0)
        m.section = "worst"
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(m.extra.get("reasons", {}).items()))
        m.note = f"{name}: {what}" + (f"; {reasons}" if reasons else "")
        found.append(m)
        shutil.rmtree(raw)
    return found


def find(found: Sequence[Measurement], section: str, contender: str, table: str = "orders") -> Measurement | None:
    """The measurement of `contender`; of repeated rounds, the one with the median wall time (the lower of two)."""
    ok = sorted((m for m in found if (m.section, m.contender, m.table) == (section, contender, table)
                 and m.status == "ok" and m.wall_s is not None), key=lambda m: m.wall_s or 0.0)
    return ok[(len(ok) - 1) // 2] if ok else None


def rounds(found: Sequence[Measurement], a: tuple[str, str], b: tuple[str, str]) -> list[float]:
    """Per round, the wall time of (section, contender) `a` divided by that of `b` (rounds where both ran)."""
    def walls(key: tuple[str, str]) -> dict[int, float]:
        return {m.round: m.wall_s for m in found if (m.section, m.contender) == key and m.table == "orders"
                and m.status == "ok" and m.wall_s}
    top, bottom = walls(a), walls(b)
    return [top[r] / bottom[r] for r in sorted(top) if r in bottom]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(a: Measurement | None, b: Measurement | None, attribute: str) -> float | None:
    """`attribute` of `a` divided by that of `b`; None when either is missing."""
    return None if a is None or b is None else ratio(getattr(a, attribute), getattr(b, attribute))


def ratios(found: Sequence[Measurement]) -> dict[str, dict[str, Any]]:
    """The comparisons the report prints, each with the numbers it came from."""
    pkg = find(found, "orders", "package")
    pkg_small = find(found, "orders small", "package") or (pkg if pkg and pkg.scale == _small_scale(found) else None)
    dlt = find(found, "orders small", "dlt_read_csv") or find(found, "orders small", "dlt_read_csv_duckdb")
    out: dict[str, dict[str, Any]] = {}

    def add(key: str, label: str, value: float | None, unit: str = "x", each: list[float] | None = None) -> None:
        out[key] = {"label": label, "value": value, "unit": unit, **({"rounds": each} if each else {})}

    scale, small = pkg.scale if pkg else None, _small_scale(found)
    paired = rounds(found, ("orders", "package"), ("orders", "duckdb"))
    add("package_vs_duckdb_wall", f"(2)/(1) wall time, orders CSV, scale {scale:g}" if scale else
        "(2)/(1) wall time, orders CSV", statistics.median(paired) if paired else None, each=paired)
    if find(found, "orders", "baseline"):
        base = rounds(found, ("orders", "baseline"), ("orders", "duckdb"))
        add("baseline_vs_duckdb_wall", "(2b)/(1) wall time, the --baseline checkout",
            statistics.median(base) if base else None, each=base)
        change = [(r - 1) * 100 for r in rounds(found, ("orders", "package"), ("orders", "baseline"))]
        add("package_vs_baseline_wall", "(2)/(2b) wall time: this checkout against the baseline",
            statistics.median(change) if change else None, "%", each=change)
    dlt_name = dlt.contender.removeprefix("dlt_") if dlt else "built-in"
    dlt_label = f"({'3' if dlt and dlt.contender == 'dlt_read_csv' else '3b'}) dlt {dlt_name}"
    add("dlt_vs_package_rows_per_s", f"{dlt_label} / (2) rows/s, both at scale {small:g} (smaller input)"
        if small else f"{dlt_label} / (2) rows/s", compare(dlt, pkg_small, "rows_per_s"))
    if scale and small and scale != small:
        add("dlt_small_vs_package_rows_per_s", f"{dlt_label} at scale {small:g} / (2) at scale {scale:g}, rows/s",
            compare(dlt, pkg, "rows_per_s"))
    for table in FORMAT_TABLES:
        p, d = find(found, "formats", "package", table), find(found, "formats", "duckdb", table)
        if p:
            add(f"format_{table}_package_vs_duckdb_rows_per_s", f"formats {table}: (2)/(1) rows/s",
                compare(p, d, "rows_per_s"))
    big = find(found, "scaling", "package")
    if big and pkg:
        add("scaling_rows", f"scaling: rows x{SCALING_FACTOR} scale", ratio(big.rows, pkg.rows))
        add("scaling_wall", "scaling: wall time growth", ratio(big.wall_s, pkg.wall_s))
        add("scaling_peak_rss", "scaling: peak RSS growth", ratio(big.peak_rss_mb, pkg.peak_rss_mb))
    update = find(found, "update", "package")
    if update and update.peak_rss_mb is not None:
        add("update_peak_rss", f"{UPDATE_FRACTION:.0%} update into the {big.rows if big else 0:,}-row tables: peak RSS",
            update.peak_rss_mb / 1024, " GB")
    dirty = find(found, "dirty", "package")
    if dirty and pkg:
        extra = [(r - 1) * 100 for r in rounds(found, ("dirty", "package"), ("orders", "package"))]
        add("dirty_extra_time", f"dirty ({DIRTY_FRACTION:.0%} bad rows) vs clean: extra wall time",
            statistics.median(extra) if extra else None, "%", each=extra)
        per_row = ratio(pkg.rows_per_s, dirty.rows_per_s)
        add("dirty_extra_time_per_row", "dirty vs clean: extra time per row (median runs)",
            None if per_row is None else (per_row - 1) * 100, "%")
    return out


def _small_scale(found: Sequence[Measurement]) -> float | None:
    return next((m.scale for m in found if m.section == "orders small"), None)


def machine() -> dict[str, Any]:
    """The machine and library versions the numbers were measured on."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gb": round(pages * page_size / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    for package in ("duckdb", "dlt", "pyarrow", "deltalake"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def _cell(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def render(settings: Settings, info: dict[str, Any], found: Sequence[Measurement],
           compared: dict[str, dict[str, Any]]) -> str:
    """The plain-text report."""
    lines = ["== Machine", "  " + "  ".join(f"{k}={v}" for k, v in info.items()), ""]
    header = (f"  {'contender':38} {'table':15} {'scale':>7} {'rows':>11} {'wall s':>8} {'rows/s':>11} {'peak MB':>8}"
              + ("  round" if settings.repeat > 1 else "") + "  note")
    sections: list[tuple[str, tuple[str, ...]]] = [
        ("== Worst cases (--worst-cases): files at and over the readers' limits", ("worst",))]
    sections = sections if settings.worst_cases else [("== Orders CSV head to head (--scale)", ("orders",)),
                ("== Orders CSV at --dlt-scale (dlt's built-in reader is slow; compared on rows/s)", ("orders small",)),
                ("== Per-format throughput", ("formats",)),
                ("== Scaling, an update of the big load, and dirty input", ("scaling", "update", "dirty"))]
    for title, names in sections:
        lines += [title, header]
        rows = [m for m in found if m.section in names]
        if not rows and "formats" in names:
            lines.append("  skipped (--no-formats)")
        if "scaling" in names and not settings.scaling:
            lines.append(f"  scaling skipped (pass --scaling to run the package at {SCALING_FACTOR}x --scale)")
        for m in rows:
            label = LABELS[m.contender] + (f" [{FORMAT_TABLES[m.table]}]" if m.section == "formats" else "")
            note = m.note if m.status != "ok" or m.note else ""
            round_ = f"  {m.round + 1:>5}" if settings.repeat > 1 else ""
            lines.append(f"  {label:38} {m.table:15} {m.scale:>7g} {_cell(m.rows, '{:,}'):>11} "
                         f"{_cell(m.wall_s, '{:.2f}'):>8} {_cell(m.rows_per_s, '{:,.0f}'):>11} "
                         f"{_cell(m.peak_rss_mb, '{:.0f}'):>8}{round_}  {note}".rstrip())
        lines.append("")
    lines.append("== Ratios")
    for item in compared.values():
        unit = item["unit"]
        formats = {"%": "{:+.1f} %", " GB": "{:.2f} GB"}
        shown = formats.get(unit, "{:.3g}x")
        value = "n/a" if item["value"] is None else shown.format(item["value"])
        each = item.get("rounds", [])
        spread = f"  (median of {len(each)} rounds: {', '.join(shown.format(v) for v in each)})" if len(each) > 1 else ""
        lines.append(f"  {item['label']:66} {value}{spread}")
    lines.append("")
    return "\n".join(lines)


def parse_settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, help="generator scale for the orders head to head (default 1000, "
                                                    "about 2M rows; --quick: 2)")
    parser.add_argument("--dlt-scale", type=float, help="scale for dlt's built-in reader (default 20; --quick: "
                                                        "--scale)")
    parser.add_argument("--formats", action=argparse.BooleanOptionalAction, default=True,
                        help="run the per-format section (default on)")
    parser.add_argument("--formats-scale", type=float, help="scale for the per-format section (default --scale; "
                                                            "--quick: 1)")
    parser.add_argument("--scaling", action="store_true",
                        help=f"also run the package at {SCALING_FACTOR}x --scale")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the head to head and the dirty run; ratios "
                                                              "are the median of the rounds (default 1)")
    parser.add_argument("--baseline", type=Path, help="another checkout of this project (a git worktree of the "
                                                      "base commit): its package runs in every round of the head "
                                                      "to head, beside this one")
    parser.add_argument("--quick", action="store_true", help="small smoke run (well under a minute)")
    parser.add_argument("--worst-cases", action="store_true",
                        help="measure only files at and over the readers' limits (bench/worst_cases.py)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work directory (default {DEFAULT_WORK})")
    args = parser.parse_args(argv)
    scale = args.scale or (2.0 if args.quick else 1000.0)
    dlt_scale = args.dlt_scale or (scale if args.quick else 20.0)
    formats_scale = args.formats_scale or (1.0 if args.quick else scale)
    if min(scale, dlt_scale, formats_scale) <= 0:
        parser.error("scales must be positive")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.baseline is not None and not (args.baseline / "bench" / "contenders.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a checkout of this project (no bench/contenders.py)")
    return Settings(scale=scale, dlt_scale=dlt_scale, formats_scale=formats_scale if args.formats else None,
                    scaling=args.scaling, work=args.work.resolve(), repeat=args.repeat, worst_cases=args.worst_cases,
                    baseline=args.baseline.resolve() if args.baseline else None)


def main(argv: Sequence[str] | None = None) -> None:
    """Generate the input, run every measurement, print the report and write `<work>/report.json`."""
    settings = parse_settings(argv)
    settings.work.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"benchmark work dir: {settings.work}", flush=True)
    found = worst(settings) if settings.worst_cases else head_to_head(settings) + formats(settings) + scaling(settings)
    compared = ratios(found)
    report = render(settings, info, found, compared)
    print("\n" + report)
    document = {"machine": info, "settings": {k: str(v) if isinstance(v, Path) else v
                                              for k, v in asdict(settings).items()},
                "measurements": [m.as_json() for m in found], "ratios": compared}
    path = settings.work / "report.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"report written to {path}")
    if any(m.status == "failed" for m in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
