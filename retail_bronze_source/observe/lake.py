"""The one door of this package's observability files to the lake: `<lake>/_retail_bronze/...` (run records, the
report) and the lake's own files it reads (change log listings, Delta commit logs).

Every access goes through the lake's `Store` (its fsspec filesystem, with the lake's credentials), so that a lake on an
object store needs no other code. A file is written atomically: on a local disk to a temporary name and renamed, on an
object store in one PUT (an object is never seen half written).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec

from ..storage import LAKE_SECTION, Store, open_store

LakeRoot = Store
"""A lake, opened once (`lake_store`) and handed to every function here."""
META_DIR = "_retail_bronze"
"""The lake folder of the package's own files (`sink.json`, `runs/`, `report/`)."""


def lake_store(lake: Store | str | Path) -> Store:
    """The lake as a `Store`: given, or opened with the credentials of `[destination.retail_bronze_lake]`."""
    return lake if isinstance(lake, Store) else open_store(lake, LAKE_SECTION)


def _fs(lake: LakeRoot) -> tuple[fsspec.AbstractFileSystem, str]:
    return lake.fs, lake.root


def write_lake_file(lake: LakeRoot, relative: str, data: bytes) -> str:
    """Write `data` to `<lake>/<relative>` atomically; return the path written."""
    fs, root = _fs(lake)
    target = f"{root}/{relative}"
    if lake.is_local:
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        fs.pipe_file(temporary, data)
        fs.mv(temporary, target)
    else:
        fs.pipe_file(target, data)
    return target


def read_lake_file(lake: LakeRoot, relative: str) -> bytes | None:
    """The bytes of `<lake>/<relative>`, None when there is no such file."""
    fs, root = _fs(lake)
    try:
        return bytes(fs.cat_file(f"{root}/{relative}"))
    except FileNotFoundError:
        return None


def list_lake_files(lake: LakeRoot, folder: str, suffix: str = "") -> list[str]:
    """The names (not paths) of the files directly in `<lake>/<folder>` ending in `suffix`, sorted; none when the
    folder does not exist."""
    fs, root = _fs(lake)
    try:
        entries = fs.ls(f"{root}/{folder}", detail=True)
    except FileNotFoundError:
        return []
    names = (str(entry["name"]).rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.get("type") == "file")
    return sorted(name for name in names if name.endswith(suffix))


def lake_file_sizes(lake: LakeRoot, folder: str, prefix: str) -> dict[str, int]:
    """Name -> size of the files in `<lake>/<folder>` whose name starts with `prefix`."""
    fs, root = _fs(lake)
    try:
        entries = fs.ls(f"{root}/{folder}", detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "file" and name.startswith(prefix):
            found[name] = int(entry.get("size") or 0)
    return found


def open_lake_file(lake: LakeRoot, relative: str) -> fsspec.core.OpenFile:
    """An fsspec file object of `<lake>/<relative>` for reading (Parquet footers, for example)."""
    fs, root = _fs(lake)
    return fs.open(f"{root}/{relative}", "rb")
