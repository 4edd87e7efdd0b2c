"""Tests of `scripts/generate_raw_data.py`: determinism, size, scaling and a ground truth that an independent check confirms."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import itertools
import json
import re
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import load_generator

from retail_bronze_source import reasons
from retail_bronze_source.readers.formats import EXTENSION_FORMATS
from retail_bronze_source.registry import RETAIL_TABLES, TableSpec

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "generate_raw_data.py"
SPECS = {spec.name: spec for spec in RETAIL_TABLES}


gen = load_generator()


def _convert(type_: pa.DataType, raw: Any) -> Any:
    """A raw value as the Python value of a contract type; raises on anything lossy."""
    if isinstance(raw, bool) and not pa.types.is_boolean(type_):
        raise ValueError("boolean for a non-boolean column")
    if pa.types.is_integer(type_):
        if isinstance(raw, int) or (isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw)):
            return int(raw)
        raise ValueError(raw)
    if pa.types.is_floating(type_):
        return float(raw)
    if pa.types.is_decimal(type_):
        number = Decimal(str(raw))
        if not number.is_finite():
            raise ValueError(raw)
        places = -int(number.as_tuple().exponent)
        # Text may show no more places than the scale; a stored decimal only needs an exact value (12.3400 is 12.34).
        if places > type_.scale and (isinstance(raw, str) or number != round(number, type_.scale)):
            raise ValueError(raw)
        return number
    if pa.types.is_boolean(type_):
        if raw in (True, False):
            return raw
        return {"true": True, "false": False}[raw]
    if pa.types.is_date(type_):
        if isinstance(raw, dt.datetime):
            return raw.date()
        return raw if isinstance(raw, dt.date) else dt.date.fromisoformat(raw)
    if pa.types.is_timestamp(type_):
        if isinstance(raw, dt.datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=dt.UTC)  # README: naive stored times are UTC
        stamp = dt.datetime.fromisoformat(raw)
        if stamp.tzinfo is None:
            raise ValueError("timestamp without offset")
        return stamp
    return json.dumps(raw) if isinstance(raw, dict | list) else str(raw)


def _checks(field: pa.Field) -> dict[str, str]:
    """The checks a contract field carries in its metadata."""
    return {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}


def _check(field: pa.Field, meta: dict[str, str], raw: Any) -> tuple[str | None, Any]:
    """The reason code a raw value violates (or None) and its converted value, given the field's `_checks`."""
    if raw is None or raw == "":
        return (None if field.nullable else reasons.NOT_NULL), None
    try:
        value = _convert(field.type, raw)
    except (ValueError, TypeError, KeyError, ArithmeticError):
        return reasons.TYPE_MISMATCH, None
    if "accepted_values" in meta and value not in json.loads(meta["accepted_values"]):
        return reasons.ACCEPTED_VALUES, value
    if ("min" in meta and value < _convert(field.type, meta["min"])) or (
            "max" in meta and value > _convert(field.type, meta["max"])):
        return reasons.OUT_OF_RANGE, value
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        return reasons.PATTERN_MISMATCH, value
    if meta.get("json") == "true":
        try:
            json.loads(value)
        except ValueError:
            return reasons.TYPE_MISMATCH, value
    return None, value


class Recheck:
    """An independent, plain-Python reading of a generated raw root with the pipeline's numbering conventions."""

    def __init__(self, root: Path) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.rejects: list[dict[str, Any]] = []
        self.valid: dict[str, list[tuple[str, int, str | None, dict[str, Any]]]] = defaultdict(list)
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.parent != root):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("returns/"):
                continue
            self._file(root, rel, SPECS[rel.split("/")[0]])
        if (root / "returns").is_dir():
            self._file(root, "returns", SPECS["returns"])
        self._duplicates()

    def _reject(self, spec: TableSpec, rel: str, row: int | None, code: str, column: str | None = None,
                sheet: str | None = None) -> None:
        self.rejects.append({"table_name": spec.name, "src_filename": rel, "src_row_number": row, "src_sheet": sheet,
                             "reason_code": code, "column_name": column})

    def _file(self, root: Path, rel: str, spec: TableSpec) -> None:
        fmt = "delta" if rel == "returns" else EXTENSION_FORMATS.get(Path(rel).suffix)
        if fmt not in spec.formats:
            return self._file_reject(spec, rel, reasons.UNSUPPORTED_FILE)
        try:
            records = list(getattr(self, f"_{fmt}")(root / rel, spec))
        except _FileReject as exc:
            return self._file_reject(spec, rel, exc.code)
        rejected = 0
        fields = [(f, _checks(f)) for f in spec.schema]
        for sheet, row, record in records:
            checked = {} if isinstance(record, str) else {f.name: _check(f, meta, record.get(f.name)) for f, meta in fields}
            problems = [(record, None)] if isinstance(record, str) else [
                (code, name) for name, (code, _) in checked.items() if code]
            for code, column in problems:
                self._reject(spec, rel, row, code, column, sheet)
            if problems:
                rejected += 1
            else:
                self.valid[spec.name].append((rel, row, sheet, {name: value for name, (_, value) in checked.items()}))
        self.files[rel] = {"table": spec.name, "rows": len(records), "valid": len(records) - rejected,
                           "rejected": rejected, "file_reject": None}

    def _file_reject(self, spec: TableSpec, rel: str, code: str) -> None:
        self.files[rel] = {"table": spec.name, "rows": 0, "valid": 0, "rejected": 0, "file_reject": code}
        self._reject(spec, rel, None, code)

    @staticmethod
    def _csv(path: Path, spec: TableSpec) -> Any:
        try:
            content = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _FileReject(reasons.FILE_ENCODING) from exc
        if not content:
            return
        reader = csv.reader(io.StringIO(content, newline=""), strict=True)
        header = next(reader)
        if any(not f.nullable and f.name not in header for f in spec.schema):
            raise _FileReject(reasons.MISSING_REQUIRED_COLUMN)
        row = 0
        while True:
            row += 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error:
                yield None, row, reasons.MALFORMED_ROW
                return
            if len(record) != len(header):
                yield None, row, reasons.TOO_MANY_COLUMNS if len(record) > len(header) else reasons.TOO_FEW_COLUMNS
            else:
                yield None, row, dict(zip(header, record, strict=True))

    @staticmethod
    def _jsonl(path: Path, spec: TableSpec) -> Any:
        def strict(constant: str) -> None:
            raise ValueError(constant)

        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line, parse_constant=strict)
            except ValueError:
                yield None, number, reasons.INVALID_JSON
                continue
            yield None, number, value if isinstance(value, dict) else reasons.NOT_AN_OBJECT

    @staticmethod
    def _parquet(path: Path, spec: TableSpec) -> Any:
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise _FileReject(reasons.FILE_UNREADABLE) from exc
        return ((None, i, row) for i, row in enumerate(rows, start=1))

    @staticmethod
    def _delta(path: Path, spec: TableSpec) -> Any:
        from deltalake import DeltaTable

        rows = pa.table(DeltaTable(str(path)).to_pyarrow_table()).to_pylist()
        return ((None, i, row) for i, row in enumerate(rows, start=1))

    @staticmethod
    def _xlsx(path: Path, spec: TableSpec) -> Any:
        from openpyxl import load_workbook

        workbook = load_workbook(path, read_only=True, data_only=True)
        for sheet in workbook.worksheets:
            rows = sheet.iter_rows(values_only=True)
            header = next(rows)
            for i, values in enumerate(rows, start=1):
                yield sheet.title, i, dict(zip(header, values, strict=True))

    def _duplicates(self) -> None:
        for name, rows in self.valid.items():
            spec = SPECS[name]
            groups = defaultdict(list)
            for entry in rows:
                values = entry[3]
                groups[tuple(values[c] for c in spec.primary_key), values.get(spec.sequence_column or "")].append(entry)
            conflicts = {id(e) for group in groups.values() if any(e[3] != group[0][3] for e in group) for e in group}
            for rel, row, sheet, _ in (e for e in rows if id(e) in conflicts):
                self._reject(spec, rel, row, reasons.DUPLICATE_KEY, ",".join(spec.primary_key), sheet)
                self.files[rel]["valid"] -= 1
                self.files[rel]["rejected"] += 1
            self.valid[name] = [e for e in rows if id(e) not in conflicts]

    def valid_rows(self) -> dict[str, int]:
        """Valid rows per table, every table with a file included."""
        return {t: len(self.valid.get(t, [])) for t in sorted({f["table"] for f in self.files.values()})}

    def latest(self) -> dict[str, int]:
        """Distinct keys of the valid rows of every merge table."""
        return {t: len({tuple(e[3][c] for c in SPECS[t].primary_key) for e in rows})
                for t, rows in sorted(self.valid.items()) if SPECS[t].write_disposition == "merge"}


class _FileReject(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _sort(rejects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rejects, key=lambda r: json.dumps(r, sort_keys=True))


def _content(root: Path) -> dict[str, Any]:
    """Every output file's content: bytes for text, values for Parquet, XLSX and the Delta table."""
    from deltalake import DeltaTable
    from openpyxl import load_workbook

    content: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "returns" not in p.parts):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".parquet" and "truncated" not in path.name:
            content[rel] = pq.read_table(path)
        elif path.suffix == ".xlsx":
            workbook = load_workbook(path, read_only=True)
            content[rel] = {s.title: list(s.iter_rows(values_only=True)) for s in workbook.worksheets}
        else:
            content[rel] = path.read_bytes()
    content["returns"] = pa.table(DeltaTable(str(root / "returns")).to_pyarrow_table())
    return content


def test_same_seed_gives_identical_content(tmp_path: Path) -> None:
    first = _content((gen.generate(tmp_path / "a", seed=7), tmp_path / "a")[1])
    second = _content((gen.generate(tmp_path / "b", seed=7), tmp_path / "b")[1])
    assert first.keys() == second.keys()
    for rel, value in first.items():
        assert value == second[rel], rel
    gen.generate(tmp_path / "c", seed=8)
    assert (tmp_path / "c/orders/orders_2024-03-01.csv").read_bytes() != first["orders/orders_2024-03-01.csv"]


def test_ground_truth_matches_an_independent_reading(tmp_path: Path) -> None:
    expected = gen.generate(tmp_path, seed=42)
    assert json.loads((tmp_path / "_expected.json").read_text()) == expected
    check = Recheck(tmp_path)
    assert check.files == expected["files"]
    assert _sort(check.rejects) == _sort(expected["rejects"])
    assert check.valid_rows() == expected["valid_rows"]
    assert check.latest() == expected["latest"]


def test_every_reason_code_is_planted_once_per_kind(tmp_path: Path) -> None:
    expected = gen.generate(tmp_path)
    codes = {r["reason_code"] for r in expected["rejects"]}
    # LOAD_FAILED needs a destination that refuses a job, COLUMN_TYPE_CHANGED and COLUMN_NAME_CONFLICT mostly a run
    # with --evolve-schema, VALIDATION_FAILED a defect, OUTSIDE_RAW_ROOT a link leading out of the raw root
    # (tests/test_discovery.py), LIMIT_EXCEEDED files over the readers' limits (tests/test_limits.py)
    assert codes == reasons.ALL - {reasons.LOAD_FAILED, reasons.COLUMN_TYPE_CHANGED, reasons.COLUMN_NAME_CONFLICT,
                                   reasons.VALIDATION_FAILED, reasons.OUTSIDE_RAW_ROOT, reasons.LIMIT_EXCEEDED}
    per_row = defaultdict(list)
    for r in expected["rejects"]:
        per_row[r["src_filename"], r["src_sheet"], r["src_row_number"]].append(r["reason_code"])
    assert sorted(per_row["orders/orders_2024-03-01.csv", None, 13]) == [reasons.ACCEPTED_VALUES, reasons.PATTERN_MISMATCH]
    duplicates = [r for r in expected["rejects"] if r["reason_code"] == reasons.DUPLICATE_KEY]
    assert len({r["src_filename"] for r in duplicates}) == 2
    assert expected["files"]["customers/customers_empty.csv"] == {
        "table": "customers", "rows": 0, "valid": 0, "rejected": 0, "file_reject": None}
    assert expected["files"]["orders/orders_2024-03-08.csv"]["rows"] == 0
    assert expected["latest"]["customers"] == expected["files"]["customers/customers_1.csv"]["valid"]
    assert expected["latest"]["customers"] < expected["valid_rows"]["customers"]


def test_text_files_carry_the_planted_formatting(tmp_path: Path) -> None:
    gen.generate(tmp_path)
    stores = (tmp_path / "stores/stores.csv").read_bytes()
    assert stores.startswith(b"\xef\xbb\xbfstore_id,") and stores.count(b"\r\n") == stores.count(b"\n")
    assert "Zürich".encode("latin-1") in (tmp_path / "stores/stores_legacy.csv").read_bytes()
    orders = (tmp_path / "orders/orders_2024-03-01.csv").read_text(encoding="utf-8")
    assert '"deliver after 6pm\nring twice"' in orders and '""leave it at the door""' in orders
    assert orders.count(",EXTRA\n") == 1
    assert (tmp_path / "orders/orders_2024-03-05.csv").read_text().endswith("and the file ends here\n")
    offsets = set(re.findall(r"T\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", orders))
    assert offsets == {"Z", "+00:00", "+02:00", "-05:00"}
    rows = list(csv.DictReader(io.StringIO(orders, newline="")))
    late = [r for r in rows if r["order_ts"].endswith("-05:00") and len(r) == 12]
    assert late and all(dt.datetime.fromisoformat(r["order_ts"]).astimezone(dt.UTC).date().isoformat() == r["order_dt"]
                        for r in late)
    assert any(r["order_ts"][:10] != r["order_dt"] for r in late)
    events = (tmp_path / "events/events_1.jsonl").read_text().split("\n")
    valid = [json.loads(line) for line in events if line.startswith('{"event_id"') and line.endswith("}")]
    stamps = [dt.datetime.fromisoformat(e["event_ts"]) for e in valid]
    assert any(a > b for a, b in itertools.pairwise(stamps))
    assert len(valid) > len({json.dumps(e) for e in valid})
    assert isinstance(valid[0]["properties"]["device"], dict)


def test_sample_is_small_and_scale_multiplies_rows(tmp_path: Path) -> None:
    small = gen.generate(tmp_path / "one")
    assert sum(p.stat().st_size for p in (tmp_path / "one").rglob("*") if p.is_file()) < 3_000_000
    big = gen.generate(tmp_path / "twenty", scale=20, tables=["orders", "order_items", "events", "sensors", "customers"])
    for table in ("orders", "order_items", "events", "sensors", "customers"):
        assert 19 <= big["valid_rows"][table] / small["valid_rows"][table] <= 21, table
    assert big["rejects"] and {r["table_name"] for r in big["rejects"]} <= set(big["valid_rows"])


def test_dirty_fraction_and_clean(tmp_path: Path) -> None:
    dirty = gen.generate(tmp_path / "dirty", dirty_fraction=0.05, tables=["orders"])
    orders = sum(f["rows"] for f in dirty["files"].values())
    assert 0.04 < (orders - dirty["valid_rows"]["orders"]) / orders < 0.07
    check = Recheck(tmp_path / "dirty")
    assert check.files == dirty["files"] and _sort(check.rejects) == _sort(dirty["rejects"])
    assert check.latest() == dirty["latest"]
    clean = gen.generate(tmp_path / "clean", clean=True)
    assert clean["rejects"] == []
    assert all(f["file_reject"] is None and f["rejected"] == 0 for f in clean["files"].values())
    assert Recheck(tmp_path / "clean").rejects == []
    with pytest.raises(ValueError, match="exclude"):
        gen.generate(tmp_path / "both", clean=True, dirty_fraction=0.1)


def test_clean_sensors_at_scale_have_no_rejects(tmp_path: Path) -> None:
    expected = gen.generate(tmp_path, scale=300, tables=["stores", "sensors"], clean=True)
    check = Recheck(tmp_path)
    assert check.rejects == [] and expected["rejects"] == []
    assert check.files == expected["files"]
    assert check.valid_rows() == expected["valid_rows"] == {"sensors": 360_000, "stores": 200}
    readings = [values for *_, values in check.valid["sensors"]]
    assert len({(r["sensor_id"], r["reading_ts"]) for r in readings}) == 360_000
    assert len({r["sensor_id"] for r in readings}) == 800
    assert {r["store_id"] for r in readings} == {values["store_id"] for *_, values in check.valid["stores"]}


def test_store_fleet_stays_bounded_and_sensor_keys_unique_at_scale_1000(tmp_path: Path) -> None:
    import pyarrow.csv as pv

    expected = gen.generate(tmp_path, scale=1000, tables=["stores", "sensors"], clean=True)
    assert expected["rejects"] == [] and expected["valid_rows"] == {"sensors": 1_200_000, "stores": 200}
    csv_file = pv.read_csv(tmp_path / "sensors/sensors_1.csv", convert_options=pv.ConvertOptions(
        column_types={"sensor_id": pa.string(), "reading_ts": pa.timestamp("us", tz="UTC")}))
    readings = pa.concat_tables([t.select(["sensor_id", "store_id", "reading_ts"]) for t in
                                 (csv_file, pq.read_table(tmp_path / "sensors/sensors_3.parquet"))])
    assert readings.num_rows == 1_200_000
    assert readings.group_by(["sensor_id", "reading_ts"]).aggregate([]).num_rows == 1_200_000
    assert pc.all(pc.match_substring_regex(readings["sensor_id"], r"^SN-[0-9]{5}$")).as_py()
    assert pc.min_max(readings["store_id"]).as_py() == {"min": 1, "max": 200}
    assert pc.max(gen.order_base(gen.Options(scale=1000))["store_id"]).as_py() <= 200


def test_output_directory_is_replaced_only_when_generated(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign/keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="refusing"):
        gen.generate(tmp_path / "foreign", tables=["stores"])
    assert (tmp_path / "foreign/keep.txt").read_text() == "mine"
    gen.generate(tmp_path / "out", tables=["stores", "sensors"])
    gen.generate(tmp_path / "out", tables=["stores"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_expected.json", "_generated_by.txt", "stores"]


def test_append_returns_commit(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    gen.generate(tmp_path, tables=["returns"])
    summary = gen.append_returns_commit(tmp_path, seed=42, n=20)
    table = pa.table(DeltaTable(str(tmp_path / "returns")).to_pyarrow_table())
    assert summary["version"] == 1 and summary["rows"] == 20 and table.num_rows == 120
    assert len(summary["updated_ids"]) == 10 and set(summary["updated_ids"]) <= set(range(1, 101))
    assert summary["new_ids"] == list(range(101, 111))
    assert set(summary["deleted_ids"]) <= set(summary["updated_ids"])
    assert gen.append_returns_commit(tmp_path, seed=42, n=4)["version"] == 2


def test_command_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "raw"), "--tables", "stores,sensors",
                             "--seed", "3"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "stores" in result.stdout and "expected rejects" in result.stdout
    assert json.loads((tmp_path / "raw/_expected.json").read_text())["generator"]["seed"] == 3


def test_default_invocation_writes_the_committed_sample_byte_for_byte(tmp_path: Path) -> None:
    gen.main(["--out", str(tmp_path), "--seed", "42", "--scale", "1"])  # what `make sample` runs
    written = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    sample = ROOT / "data_raw"
    committed = {p.relative_to(sample).as_posix(): p.read_bytes() for p in sorted(sample.rglob("*")) if p.is_file()}
    assert written.keys() == committed.keys()
    assert [rel for rel in written if written[rel] != committed[rel]] == []


def _delivered(tmp_path: Path, rounds: int, **options: Any) -> tuple[Path, Path, dict[str, Any]]:
    """Deliveries written under `tmp_path/plan` and their rounds applied to `tmp_path/raw`."""
    document = gen.generate_deliveries(tmp_path / "plan", rounds=rounds, **options)
    for number in range(1, rounds + 1):
        gen.apply_round(tmp_path / "plan", number, tmp_path / "raw")
    return tmp_path / "plan", tmp_path / "raw", document


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deliveries_are_a_pure_function_of_seed_scale_and_knobs(tmp_path: Path) -> None:
    knobs = gen.random_knobs(7)
    first = _tree(_delivered(tmp_path / "a", 3, seed=7, knobs=knobs)[0])
    second = _tree(_delivered(tmp_path / "b", 3, seed=7, knobs=knobs)[0])
    assert first.keys() == second.keys() and [k for k in first if first[k] != second[k]] == []
    assert any(k.startswith("round_003/truth/") for k in first)
    other = _tree(_delivered(tmp_path / "c", 3, seed=8, knobs=knobs)[0])
    assert other["round_001/plan.json"] != first["round_001/plan.json"]
    fast = _tree(_delivered(tmp_path / "d", 3, seed=7, knobs=knobs, truth=False)[0])
    again = _tree(_delivered(tmp_path / "e", 3, seed=7, knobs=knobs, truth=False)[0])
    assert fast == again and not any("/truth/" in k for k in fast)
    assert {k for k in fast if "/files/" in k} == {k for k in first if "/files/" in k}
    # Only CSV is written another way: Parquet and JSON Lines files are the same bytes.
    assert [k for k in fast if "/files/" in k and not k.endswith(".csv") and fast[k] != first[k]] == []


def test_the_delivery_tables_agree_with_the_registry() -> None:
    for name, table in gen.CHAOS_TABLES.items():
        spec = SPECS[name]
        assert table.contract.equals(spec.schema, check_metadata=True), name
        assert (table.key, table.sequence, table.merge) == (spec.primary_key, spec.sequence_column,
                                                             spec.write_disposition == "merge"), name
        assert set(table.formats) == set(spec.formats), name
        assert table.derived == tuple(d.name for d in spec.derived), name
        assert all(EXTENSION_FORMATS[gen.EXTENSIONS[f]] == f for f in table.formats)


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="within"):
        gen.Knobs(late_rate=1.5)
    with pytest.raises(ValueError, match="unknown reason code"):
        gen.Knobs(dirty={"NOT_A_CODE": 0.1})
    assert gen.parse_dirty("type_mismatch=0.1, NOT_NULL=0") == {"TYPE_MISMATCH": 0.1, "NOT_NULL": 0.0}
    with pytest.raises(ValueError, match="CODE=RATE"):
        gen.parse_dirty("TYPE_MISMATCH")
    assert gen.random_knobs(3) == gen.random_knobs(3) and gen.random_knobs(3) != gen.random_knobs(4)


HOSTILE = gen.Knobs(rows=60, duplicate_rate=0.1, out_of_order=1.0, update_rate=0.3, late_rate=0.2,
                    redeliver_rate=0.3, change_rate=0.5, keep_mtime_rate=0.3, drift_rate=0.8,
                    dirty={**dict.fromkeys(gen.ROW_REASONS, 0.03), **dict.fromkeys(gen.FILE_REASONS, 0.25)})


def test_first_delivery_truth_matches_an_independent_reading(tmp_path: Path) -> None:
    """Round 1 loads every file at once, so a plain-Python reading of the raw root must find the same records,
    reject reasons (`DUPLICATE_KEY` aside: the reading compares typed values, the truth the canonical record) and
    loaded values as the ground truth, in every drift and fault the knobs plant."""
    plan, raw, document = _delivered(tmp_path, 1, seed=11, knobs=HOSTILE)
    truth = plan / "round_001" / "truth"
    check = Recheck(raw)
    manifest = {r["src_path"]: r for r in pq.read_table(truth / "manifest.parquet").to_pylist()}
    assert {p: f["rows"] for p, f in check.files.items()} == {p: r["row_count"] for p, r in manifest.items()}
    assert {p: f["file_reject"] for p, f in check.files.items() if f["file_reject"]} == {
        p: r for p in manifest for r in [_file_reject(truth, p)] if r}

    def keyed(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["src_filename"], r["src_row_number"] or 0, r["reason_code"], r["column_name"] or "")
                      for r in records if r["reason_code"] != reasons.DUPLICATE_KEY)

    truth_rejects = pq.read_table(truth / "rejects.parquet").to_pylist()
    assert keyed(check.rejects) == keyed(truth_rejects)
    codes = {r["reason_code"] for r in truth_rejects}
    assert codes >= {*gen.ROW_REASONS, reasons.UNSUPPORTED_FILE}
    assert document["rounds"][0]["tables"]["orders"]["reasons"]

    loaded = {(r["src_filename"], r["src_row_number"]): r for name in gen.CHAOS_TABLES
              for r in pq.read_table(truth / "changelog" / f"{name}.parquet").to_pylist()}
    compared = 0
    for name, rows in check.valid.items():
        fields = SPECS[name].schema
        for rel, row, _, values in rows:
            found = loaded.get((rel, row))
            if found is None:  # a version superseded in the load, or a DUPLICATE_KEY of the truth
                continue
            compared += 1
            for f in fields:
                expected, value = values[f.name], found[f.name]
                if f.metadata and f.metadata.get(b"json") and expected is not None:
                    expected, value = json.loads(expected), json.loads(value)
                assert value == expected, (rel, row, f.name)
    assert compared > 200


def _file_reject(truth: Path, path: str) -> str | None:
    records = pq.read_table(truth / "rejects.parquet").to_pylist()
    return next((r["reason_code"] for r in records if r["src_filename"] == path and r["src_row_number"] is None), None)


def test_deliveries_plant_what_the_knobs_ask_for(tmp_path: Path) -> None:
    plan, raw, _ = _delivered(tmp_path, 4, seed=3, knobs=HOSTILE)
    actions = [item for n in range(1, 5) for item in json.loads((plan / f"round_{n:03d}" / "plan.json").read_text())["files"]]
    kinds = {(item["action"], item["keep_mtime"]) for item in actions}
    assert kinds >= {("add", False), ("replace", False), ("redeliver", False), ("replace", True)}
    log = pq.read_table(plan / "round_004" / "truth" / "manifest_log.parquet").to_pylist()
    assert any(r["replaced_fingerprint"] for r in log)
    assert any(r["status"] == "empty" for r in log) and any(r["extra_columns"] for r in log)
    reverted = [(r["src_path"], r["file_fingerprint"]) for r in log]
    assert len(reverted) > len(set(reverted))  # a file delivered again with an earlier version's bytes
    orders = pq.read_table(plan / "round_004" / "truth" / "changelog" / "orders.parquet")
    versions = orders.group_by("order_id").aggregate([("updated_at", "count_distinct")])
    assert pc.max(versions["updated_at_count_distinct"]).as_py() > 1
    state = pq.read_table(plan / "round_004" / "truth" / "tables" / "orders.parquet")
    assert state.group_by("order_id").aggregate([]).num_rows == state.num_rows
    same_size = [item for item in actions if item["keep_mtime"]]
    assert same_size and all(item["size"] == (raw / item["path"]).stat().st_size for item in same_size[-1:])


def test_apply_round_delivers_and_dates_files(tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    gen.generate_deliveries(plan, rounds=2, seed=5, knobs=HOSTILE, truth=False)
    raw = tmp_path / "raw"
    gen.apply_round(plan, 1, raw)
    before = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    items = gen.apply_round(plan, 2, raw)
    for item in items:
        path = raw / item["path"]
        if item["action"] == "add":
            assert path not in before
        elif item["keep_mtime"]:
            assert path.stat().st_mtime_ns == before[path]
        else:
            assert path.stat().st_mtime_ns > before[path]
        if item["action"] != "redeliver":
            assert path.read_bytes() == (plan / "round_002" / "files" / item["path"]).read_bytes()


def test_command_line_deliveries(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--deliveries", "2", "--out", str(tmp_path / "plan"),
                             "--seed", "3", "--dirty", "TYPE_MISMATCH=0.2", "--late-rate", "0.5"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "TYPE_MISMATCH=" in result.stdout and "records/s" in result.stdout
    document = json.loads((tmp_path / "plan" / "_chaos.json").read_text())
    assert document["generator"]["knobs"]["late_rate"] == 0.5
    assert document["generator"]["knobs"]["dirty"]["TYPE_MISMATCH"] == 0.2
    applied = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "plan"), "--apply-round", "1",
                              "--raw", str(tmp_path / "raw")], capture_output=True, text=True, check=False)
    assert applied.returncode == 0 and "add" in applied.stdout
    assert {p.parent.name for p in (tmp_path / "raw").glob("*/*")} == set(gen.CHAOS_TABLES)


def test_fast_command_line_writes_the_same_bytes_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trees = []
    for name in ("a", "b"):
        gen.main(["--deliveries", "2", "--fast", "--rows", "300", "--seed", "5", "--dirty-rate", "0.05",
                  "--out", str(tmp_path / name)])
        trees.append(_tree(tmp_path / name))
    assert "records/s" in capsys.readouterr().out
    assert {k.split("/")[2] for k in trees[0] if "/files/" in k} == set(gen.CHAOS_TABLES)
    assert trees[0].keys() == trees[1].keys() and [k for k in trees[0] if trees[0][k] != trees[1][k]] == []


def test_fast_files_do_not_depend_on_the_render_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--fast` renders a file a chunk of records at a time, splicing in per chunk the records with planted values,
    the unparseable ones and the blank lines: chunks of 7 records give the bytes of a single chunk, and JSON Lines
    and Parquet files are the bytes the truth mode writes."""
    knobs = dataclasses.replace(HOSTILE, rows=150, sparse_keys=0.3)
    gen.generate_deliveries(tmp_path / "whole", rounds=2, seed=13, knobs=knobs, truth=False)
    gen.generate_deliveries(tmp_path / "truth", rounds=2, seed=13, knobs=knobs)
    monkeypatch.setattr(gen, "RENDER_CHUNK_ROWS", 7)
    gen.generate_deliveries(tmp_path / "chunked", rounds=2, seed=13, knobs=knobs, truth=False)
    whole, chunked, truth = (_tree(tmp_path / name) for name in ("whole", "chunked", "truth"))
    files = [k for k in whole if "/files/" in k]
    assert any(k.endswith(".jsonl") and whole[k].count(b"\n") > 50 for k in files)
    assert whole == chunked
    assert [k for k in files if not k.endswith(".csv") and whole[k] != truth[k]] == []


def test_a_file_missing_a_required_column_lacks_a_contract_column() -> None:
    knobs = gen.Knobs(drift_rate=1.0, sparse_keys=0.5, dirty={"MISSING_REQUIRED_COLUMN": 1.0})
    for name, table in gen.CHAOS_TABLES.items():
        required = {f.name for f in table.contract if not f.nullable}
        for seed in range(40):
            for fmt in table.formats:
                spec = gen._draw_spec(table, fmt, 10, knobs, gen.Rng(seed, f"{name}/{fmt}"))
                assert spec.missing_required in required and spec.missing_required not in spec.columns
                assert list(table.contract.names) == table.typed.names  # the contract is never changed
                if fmt == "jsonl":
                    first = spec.columns[0]
                    assert first in required or (first in spec.extras and not spec.sparse_keys)


@pytest.mark.slow
def test_fast_deliveries_read_as_many_records_as_written(tmp_path: Path) -> None:
    """`--fast` writes CSV with Arrow's writer (typed columns, faulty records last): a dry run of the command line
    must read every record the generator wrote, and find the reasons it planted."""
    knobs = dataclasses.replace(HOSTILE, change_rate=0.0, redeliver_rate=0.0)
    _, raw, document = _delivered(tmp_path, 1, seed=9, scale=3, knobs=knobs, truth=False)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(raw),
                             "--dry-run", "--tables", ",".join(gen.CHAOS_TABLES)],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    total = next(line.split() for line in result.stdout.splitlines() if line.startswith("total"))
    assert int(total[2]) == document["rounds"][0]["records_written"] > 1000
    orders = next(line for line in result.stdout.splitlines() if line.startswith("orders"))
    assert all(code in orders for code in ("TYPE_MISMATCH", "TOO_MANY_COLUMNS", "TOO_FEW_COLUMNS"))
