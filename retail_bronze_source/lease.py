"""A lease on a lake in an S3 bucket, so that runs on different machines never write one lake at the same time.

`flock` (`run_lock`) serializes the runs of one machine; a bucket has no locks, so a run takes a lease object,
`<lake>/_retail_bronze/lease.json`, with S3's conditional writes:

- taken with `PUT If-None-Match: *` (only one run can create it);
- renewed by a heartbeat thread every `LEASE_TTL_SECONDS / 3` with `PUT If-Match: <its ETag>`;
- released with `DELETE If-Match: <its ETag>`;
- a lease older than its time to live (`LastModified` + ttl, compared with the server's clock, never the local one)
  belongs to a dead run and is taken over with `PUT If-Match: <the stale ETag>`, so of several runs taking it over
  exactly one wins; a lease of a process of this host that no longer exists is taken over at once.

The body names the holder (pid, host, start) for the message of a run that waits, and carries a random nonce, so that
two bodies never share an ETag. A run whose heartbeat finds the lease taken by another (it stalled for longer than the
time to live) stops before its next write to the lake (`LakeLease.check`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from fsspec.asyn import sync

from . import settings
from .run_lock import RunLocked
from .storage import Store

logger = logging.getLogger(__name__)

LEASE_KEY = ("_retail_bronze", "lease.json")


class LeaseLost(Exception):
    """Another run took this run's lease over (this run stalled for longer than the lease's time to live)."""


def _status(error: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind an s3fs error (s3fs turns botocore's `ClientError` into `OSError`)."""
    for candidate in (error, error.__cause__, error.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            info = response.get("Error", {})
            return str(info.get("Code", "")), int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return "", 0


def _precondition_failed(error: BaseException) -> bool:
    code, status = _status(error)
    return status == 412 or code == "PreconditionFailed"


def _missing(error: BaseException) -> bool:
    code, status = _status(error)
    return isinstance(error, FileNotFoundError) or status == 404 or code in ("NoSuchKey", "404")


class LakeLease:
    """A held lease (see the module docstring)."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.bucket, _, prefix = store.root.partition("/")
        self.key = "/".join([p for p in (prefix, *LEASE_KEY) if p])
        self.holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat()}"
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.store.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)  # type: ignore[no-any-return]

    def _body(self) -> bytes:
        return json.dumps({"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                           "ttl_seconds": self.ttl, "nonce": secrets.token_hex(8)}).encode()

    def try_take(self) -> str | None:
        """Take the lease if it is free or expired; None when taken, else a description of its holder."""
        try:
            self.etag = self._call("put_object", Body=self._body(), IfNoneMatch="*")["ETag"]
            return None
        except OSError as error:
            if not _precondition_failed(error):
                raise
        try:
            current = self._call("get_object")
        except OSError as error:
            if _missing(error):
                return "a run releasing it"  # released between the two calls: the next attempt takes it
            raise
        body = sync(self.store.fs.loop, current["Body"].read)  # s3fs's client is asynchronous
        try:
            lease = json.loads(body)
        except ValueError:
            lease = {}
        ttl = float(lease.get("ttl_seconds") or settings.LEASE_TTL_SECONDS)
        expires = current["LastModified"] + timedelta(seconds=ttl)
        now = parsedate_to_datetime(current["ResponseMetadata"]["HTTPHeaders"]["date"])
        if now < expires and not _dead_here(lease):
            return f"{lease.get('holder', 'an unknown run')}, until {expires.astimezone(UTC):%H:%M:%S} UTC"
        try:
            self.etag = self._call("put_object", Body=self._body(), IfMatch=current["ETag"])["ETag"]
            logger.warning("took over the lake lease of %s (expired or dead)", lease.get("holder", "an unknown run"))
            return None
        except OSError as error:
            if not _precondition_failed(error):
                raise
            return "another run taking it over at the same time"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name="lake-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with self._lock:
                    self.etag = self._call("put_object", Body=self._body(), IfMatch=self.etag)["ETag"]
            except OSError as error:
                if _precondition_failed(error):
                    self.lost = f"the lease {self.store.url_of(*LEASE_KEY)} was taken over by another run"
                    logger.error("%s; this run stops before its next write to the lake", self.lost)
                    return
                logger.warning("renewing the lake lease failed (%s); retrying", type(error).__name__)

    def check(self) -> None:
        """Raise `LeaseLost` if another run took the lease over."""
        if self.lost:
            raise LeaseLost(f"{self.lost}: this run stopped before writing to the lake again; run again")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self.etag is None:
            return
        try:
            with self._lock:
                self._call("delete_object", IfMatch=self.etag)
        except OSError as error:  # the lease expires by itself; a failed release only delays the next run
            logger.warning("releasing the lake lease failed (%s); it expires in %g s", type(error).__name__,
                           self.ttl)


def _dead_here(lease: dict[str, Any]) -> bool:
    """Whether the lease's holder is a process of this host that no longer exists."""
    if lease.get("host") != socket.gethostname() or not isinstance(lease.get("pid"), int):
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def lake_lease(store: Store, timeout: float, ttl: float | None = None) -> Iterator[LakeLease]:
    """Hold the lease of the lake `store` (on S3) for the block, waiting up to `timeout` seconds for it; raise
    `RunLocked` naming the holder when it stays taken."""
    lease = LakeLease(store, ttl or settings.LEASE_TTL_SECONDS)
    deadline = time.monotonic() + timeout
    while True:
        holder = lease.try_take()
        if holder is None:
            break
        if time.monotonic() >= deadline:
            raise RunLocked(f"another run holds the lake {store} ({holder}); waited {timeout:g} s")
        time.sleep(settings.LEASE_POLL_SECONDS)
    lease.start()
    try:
        yield lease
    finally:
        lease.release()
