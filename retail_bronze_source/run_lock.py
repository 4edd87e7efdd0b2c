"""An exclusive, inter-process lock per run target, so two runs against one warehouse or lake never interleave."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from . import settings


class RunLocked(Exception):
    """Another run held the lock for longer than the timeout; the message names the holder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError) as error:
        return f"unknown holder ({type(error).__name__})"
    if not info:
        return "unknown holder"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


@contextmanager
def run_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock file `path` for the duration of the block, waiting up to `timeout` seconds for it.

    The lock is an `flock` on the file, released by the kernel when the holder exits, even when killed; the file's
    content names the holder for the message another run prints.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLocked(f"another run holds {path} ({_holder(path)}); waited {timeout:g} s") from None
                time.sleep(settings.LOCK_POLL_SECONDS)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
