"""Real servers and a real browser for the tests, from Debian's packages, without root and without touching the
system: Prometheus, the Pushgateway, node-exporter and Chromium.

`python tests/services.py install` (`make services`, which `make test` runs first) fetches the packages with
`apt-get download` (the ones the machine lacks, as `apt-get -s install` lists them, plus the four programs
themselves), unpacks them with `dpkg-deb -x` into `.cache/services/root/` (git-ignored) and runs them from there with
their libraries on `LD_LIBRARY_PATH`. Where the machine's package lists are missing (a fresh image), they are
fetched into the cache first (`apt-get update` with private state directories, which needs no root). The pytest
fixtures install on first use the same way, so one test file runs alone too.

`Service` starts a program on a free 127.0.0.1 port, waits until it answers and stops it afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RETAIL_BRONZE_SERVICES_CACHE", REPO / ".cache" / "services"))
PROGRAMS = {
    "chromium": ("chromium", "usr/lib/chromium/chromium"),
    "prometheus": ("prometheus", "usr/bin/prometheus"),
    "pushgateway": ("prometheus-pushgateway", "usr/bin/prometheus-pushgateway"),
    "node_exporter": ("prometheus-node-exporter", "usr/bin/prometheus-node-exporter"),
}
"""Program -> (Debian package, its path inside the package)."""
EXTRA_PACKAGES = ("fonts-dejavu-core",)
"""Fonts for the browser's screenshots (taken from the machine when it has them)."""
FORMAT = 2


class ServicesUnavailable(RuntimeError):
    """The packages could not be fetched or unpacked; the message says what failed."""


@dataclass(frozen=True)
class Installed:
    """Where the unpacked programs are and the environment they run with."""

    root: Path
    programs: dict[str, Path]
    env: dict[str, str]

    def program(self, name: str) -> Path:
        return self.programs[name]


def _apt(args: Sequence[str], options: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *options, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})


def _private_lists(cache: Path) -> list[str]:
    """apt options for package lists of our own (fetched with `apt-get update`, no root needed)."""
    state, archives = cache / "apt" / "lists", cache / "apt" / "cache"
    (state / "partial").mkdir(parents=True, exist_ok=True)
    (archives / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return [f"-oDir::State::Lists={state}", f"-oDir::Cache={archives}", "-oDebug::NoLocking=1"]


def _needed(packages: Sequence[str], options: Sequence[str]) -> list[str] | None:
    """The packages an install of `packages` would add to this machine; None when apt does not know them."""
    done = _apt(["-s", "install", "--no-install-recommends", *packages], ["-oDebug::NoLocking=1", *options])
    if done.returncode != 0:
        return None
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("Inst ")]


def _library_dirs(root: Path) -> list[str]:
    return sorted({str(p.parent) for p in root.rglob("*.so*") if p.is_file()})


def _fonts_conf(cache: Path, root: Path) -> Path:
    conf = cache / "fonts.conf"
    dirs = "".join(f"<dir>{d}</dir>" for d in ("/usr/share/fonts", str(root / "usr" / "share" / "fonts")))
    sans = "<alias><family>sans-serif</family><prefer><family>DejaVu Sans</family></prefer></alias>"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    '<include ignore_missing="yes">/etc/fonts/fonts.conf</include>'
                    f"{dirs}{sans}<cachedir>{cache / 'fontconfig'}</cachedir></fontconfig>")
    return conf


def _installed(cache: Path) -> Installed | None:
    marker = cache / "installed.json"
    if not marker.exists():
        return None
    data = json.loads(marker.read_text())
    programs = {name: Path(path) for name, path in data["programs"].items()}
    if data.get("format") != FORMAT or set(programs) != set(PROGRAMS) or not all(p.exists() for p in programs.values()):
        return None
    return Installed(Path(data["root"]), programs, data["env"])


def install(cache: Path = CACHE) -> Installed:
    """The programs, fetched and unpacked into `cache` on first use (later calls only read the marker)."""
    found = _installed(cache)
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ServicesUnavailable("apt-get and dpkg-deb are needed to fetch the test services (a Debian machine)")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _installed(cache)
        if found is not None:
            return found
        return _install(cache)


def _install(cache: Path) -> Installed:
    wanted = [package for package, _ in PROGRAMS.values()]
    options: list[str] = []
    needed = _needed([*wanted, *EXTRA_PACKAGES], options)
    if needed is None:
        options = _private_lists(cache)
        update = _apt(["update"], options)
        needed = _needed([*wanted, *EXTRA_PACKAGES], options)
        if needed is None:
            raise ServicesUnavailable(f"apt cannot find {', '.join(wanted)}; apt-get update said: "
                                      f"{(update.stderr or update.stdout).strip()[-2000:]}")
    debs, root = cache / "debs", cache / "root"
    shutil.rmtree(debs, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    debs.mkdir(parents=True)
    packages = sorted({*wanted, *needed})
    fetched = _apt(["download", *packages], options, cwd=debs)
    if fetched.returncode != 0:
        raise ServicesUnavailable(f"apt-get download failed: {fetched.stderr.strip()[-2000:]}")
    for deb in sorted(debs.glob("*.deb")):
        unpacked = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if unpacked.returncode != 0:
            raise ServicesUnavailable(f"dpkg-deb -x {deb.name} failed: {unpacked.stderr.strip()}")
    programs = {name: root / path for name, (_, path) in PROGRAMS.items()}
    missing = [str(p) for p in programs.values() if not p.exists()]
    if missing:
        raise ServicesUnavailable(f"unpacked, but missing: {', '.join(missing)}")
    env = {"LD_LIBRARY_PATH": ":".join(_library_dirs(root)), "FONTCONFIG_FILE": str(_fonts_conf(cache, root))}
    installed = Installed(root, programs, env)
    (cache / "installed.json").write_text(json.dumps({
        "format": FORMAT, "root": str(root), "programs": {k: str(v) for k, v in programs.items()}, "env": env}))
    shutil.rmtree(debs, ignore_errors=True)
    return installed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


@dataclass
class Service:
    """A program started on 127.0.0.1: its URL and process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def service(installed: Installed, name: str, args: Sequence[str], port: int, ready_path: str, log_dir: Path,
            timeout: float = 60.0) -> Iterator[Service]:
    """Run `name` with `args` until the block ends; it must answer `ready_path` on `port` within `timeout`."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(installed.program(name)), *args], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **installed.env}, cwd=log_dir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServicesUnavailable(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                http_get(url + ready_path, timeout=2)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise ServicesUnavailable(f"{name} did not answer on {url} in {timeout:g} s: "
                                              f"{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield Service(name, url, process, log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
"""A browser that never reaches the network on its own; `--no-sandbox` as tests may run as root."""


def chromium(installed: Installed, args: Sequence[str], profile: Path, timeout: float = 120) -> str:
    """Run headless Chromium once with `args` (and a new profile); return what it printed on stdout."""
    done = subprocess.run([str(installed.program("chromium")), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **installed.env})
    if done.returncode != 0:
        raise ServicesUnavailable(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def main(argv: Sequence[str]) -> int:
    if argv[:1] != ["install"]:
        print("usage: python tests/services.py install", file=sys.stderr)
        return 2
    try:
        found = install()
    except ServicesUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"test services in {found.root}: {', '.join(sorted(found.programs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
