"""The command line: where `--raw` comes from when it is not given, and no credential of a URL is ever printed or
written."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, make_sandbox, query

from retail_bronze_source.cli import main

PASSWORD = "s3cr3t-pw"
TOKEN = "t0k3n-value"


def _raw(root: Path, files: int) -> Path:
    """A raw root whose customers folder holds `files` files, so a dry run tells which root it read."""
    (root / "customers").mkdir(parents=True)
    for i in range(files):
        shutil.copy(SAMPLE / "customers" / "customers_2.csv", root / "customers" / f"c{i}.csv")
    return root


def _dry_run(project: Path, *args: str, env: dict[str, str]) -> str:
    """The customers line of a dry run started in `project` (where dlt looks for `.dlt/`)."""
    clean = {k: v for k, v in os.environ.items() if k != "SOURCES__RETAIL_BRONZE__RAW_URL"}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--dry-run", "--tables", "customers",
         "--pipelines-dir", str(project / "pipelines"), *args],
        cwd=project, env={**clean, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("customers")]
    return line.split()[1]


@pytest.mark.slow
def test_raw_comes_from_the_command_line_then_the_environment_then_dlt_config(tmp_path: Path) -> None:
    from_config, from_env, from_args = _raw(tmp_path / "a", 1), _raw(tmp_path / "b", 2), _raw(tmp_path / "c", 3)
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "config.toml").write_text(f'[sources.retail_bronze]\nraw_url = "{from_config}"\n')
    env = {"SOURCES__RETAIL_BRONZE__RAW_URL": str(from_env)}
    assert _dry_run(project, env={}) == "1"
    assert _dry_run(project, env=env) == "2"
    assert _dry_run(project, "--raw", str(from_args), env=env) == "3"


def test_raw_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOURCES__RETAIL_BRONZE__RAW_URL", str(tmp_path / "missing_raw"))
    assert main(["--dry-run", "--pipelines-dir", str(tmp_path / "pipelines")]) == 2
    assert capsys.readouterr().err == f"error: the raw root {tmp_path / 'missing_raw'} does not exist\n"


@contextmanager
def _web_server(root: Path) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged to the test's output."""


def test_credentials_of_a_raw_url_are_never_printed_or_written(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    web = _raw(tmp_path / "web", 1)
    os.symlink(tmp_path / "nowhere.csv", web / "customers" / "gone.csv")  # listed, then 404 when fetched
    box = make_sandbox(tmp_path)
    options = ["--lake", str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
               "--tables", "customers"]
    with _web_server(web) as port:
        url = f"http://reader:{PASSWORD}@127.0.0.1:{port}"
        assert main(["--raw", f"{url}/missing?token={TOKEN}", *options]) == 2
        missing = capsys.readouterr()
        assert main(["--raw", url, *options]) == 0
        loaded = capsys.readouterr()
    assert missing.err == f"error: the raw root http://reader:***@127.0.0.1:{port}/missing?token=*** does not exist\n"
    assert [line.split()[:2] for line in loaded.out.splitlines() if line.startswith("customers")] == [["customers", "2"]]
    written = query(box.warehouse, "SELECT src_path FROM bronze.manifest_processed_files") + query(
        box.warehouse, "SELECT src_filename, reason_code, reason_detail FROM bronze.rejects")
    assert ("customers/gone.csv", "FILE_UNREADABLE", "cannot read customers/gone.csv: FileNotFoundError: customers/gone.csv") in written
    text = repr(written) + missing.out + missing.err + loaded.out + loaded.err
    text += "".join(p.read_text() for pattern in ("*.csv", "*.json", "*.html") for p in box.lake.rglob(pattern))
    text += repr(query(box.warehouse, "SELECT * FROM _retail_bronze.runs"))
    assert PASSWORD not in text and TOKEN not in text


def test_process_wide_tuning_is_the_command_lines_own(tmp_path: Path) -> None:
    # The command line freezes its imported objects out of the garbage collector; a library run leaves the host
    # process's collector as it found it.
    raw = _raw(tmp_path / "raw", 1)
    cli = ("import gc, sys; from retail_bronze_source.cli import main; "
           "code = main(['--dry-run', '--tables', 'customers', '--raw', sys.argv[1], '--pipelines-dir', sys.argv[2]]); "
           "print(code, gc.get_freeze_count())")
    library = ("import gc, sys; from pathlib import Path; from retail_bronze_source.run import Layout, run_bronze; "
               "out = Path(sys.argv[2]); run_bronze(Layout(raw_url=sys.argv[1], lake=out / 'lake', "
               "warehouse=out / 'w.duckdb'), table_names=['customers'], pipelines_dir=str(out / 'p')); "
               "print(0, gc.get_freeze_count())")
    found = []
    for script, out in ((cli, tmp_path / "cli"), (library, tmp_path / "library")):
        done = subprocess.run([sys.executable, "-c", script, str(raw), str(out)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        code, frozen = map(int, done.stdout.split()[-2:])
        found.append((code, frozen))
    (cli_code, cli_frozen), (_, library_frozen) = found
    assert cli_code == 0 and cli_frozen > 10_000
    assert library_frozen == 0
