"""Staging directories on local disk, and the clean-up of those a killed run left behind.

Every step that stages files (the extractor, the resource's Parquet writers, the partition-wise Delta upsert) stages in
`staging_dir`, a directory under one root per user, `<tmp>/retail_bronze-<uid>/` (mode 0700, created if missing),
named after its owner process: `<pid>-<process start time>.<label>.<random>`. A normal end removes it. A SIGKILL
cannot, so each new staging directory first removes the directories whose owner process is gone: another run's
directories, on this or any other target, are left alone while it lives, and a pid reused by another process is told
apart by its start time (Linux `/proc`; elsewhere the pid alone).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_OWNER = re.compile(r"^(?P<pid>\d+)-(?P<start>\d+)\.")


@contextmanager
def staging_dir(label: str) -> Iterator[Path]:
    """A new private directory for staged files, removed when the block ends; stale ones are removed first."""
    root = staging_root()
    safe_label = re.sub(r"[^A-Za-z0-9_-]", "_", label)[:64]
    if root is None:
        with tempfile.TemporaryDirectory(prefix=f"retail_bronze_{safe_label}_") as plain:
            yield Path(plain)
        return
    remove_stale(root)
    with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-{_start_time(os.getpid()) or 0}.{safe_label}.",
                                     dir=root) as owned:
        yield Path(owned)


def staging_root() -> Path | None:
    """This user's staging root, created if missing; None (staging falls back to plain temporary directories, which a
    kill leaves behind) when the path is taken by something this user must not trust: a link, a file, a directory of
    another user or one others can write to."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"retail_bronze-{uid}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError as error:
        logger.warning("staging root %s is not usable (%s); killed runs leave their staging behind", root, error)
        return None
    trusted = (stat.S_ISDIR(info.st_mode) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
               and (not hasattr(os, "getuid") or info.st_uid == uid))
    if not trusted:
        logger.warning("staging root %s is not a private directory of this user; killed runs leave their staging "
                       "behind", root)
        return None
    return root


def remove_stale(root: Path) -> list[Path]:
    """Remove the staging directories under `root` whose owner process is gone; return them. Entries not named by
    `staging_dir` are left alone."""
    removed = []
    for entry in sorted(root.iterdir()):
        owner = _OWNER.match(entry.name)
        if owner is None or _alive(int(owner["pid"]), int(owner["start"])):
            continue
        # A concurrent run may be removing the same directory: what is left is checked below instead.
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            logger.warning("could not remove %s, the staging of a run that ended without cleaning up", entry)
        else:
            removed.append(entry)
    return removed


def _alive(pid: int, start: int) -> bool:
    """Whether process `pid`, started at `start` (0: unknown), still runs."""
    now = _start_time(pid)
    if now is not None:
        return start in (0, now)
    if Path("/proc/self/stat").exists():
        return False  # /proc lists every process: this one is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # a process this user may not signal holds the pid
    return True


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux `/proc/<pid>/stat`), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name before it, in parentheses, may hold spaces.
    return int(text.rsplit(")", 1)[1].split()[19])
