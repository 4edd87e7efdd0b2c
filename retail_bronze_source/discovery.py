"""File discovery: the raw inputs of a table, and the raw root as a boundary.

Nothing is opened here. On a local file system each match is examined first (`os.lstat`, `os.path.realpath`,
`os.stat`), and a match that must not be read becomes a `RawFile` with `refused` set, which the extractor records as a
file-level reject without opening it:

- a symbolic link leading outside the raw root, or a file under such a link (the raw root itself may be a link):
  `OUTSIDE_RAW_ROOT`, unless the table is declared with `allow_outside_raw_root=True`;
- a dangling or looping link: `FILE_UNREADABLE`;
- a FIFO, socket or device: `UNSUPPORTED_FILE` (opening a FIFO blocks until a writer comes, while the run holds its
  locks);
- a name that is not valid UTF-8 (Linux names are bytes): `UNSUPPORTED_FILE`, the name shown with `\\xNN` escapes, as
  no column or ledger key can hold it as it is.

Directories matched by a table's pattern, links to directories inside the raw root included, are not inputs. Object
stores have no links or special files; their paths are taken as listed. A local file may still be replaced between
discovery and reading: `RawFile.open` checks again what it opened (`RawFile.local_root`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from datetime import datetime
from typing import Any

from fsspec import AbstractFileSystem

from . import reasons
from .raw import RawFile
from .redact import redact
from .registry import TableSpec
from .storage import RAW_SECTION, Store, open_store

_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def discover_files(spec: TableSpec, raw: Store | str) -> list[RawFile]:
    """The raw inputs of `spec` under the raw root `raw` (a `Store`, or a local path or fsspec URL opened with the
    source's credentials), sorted by path; see the module docstring for the matches that come back refused."""
    store = raw if isinstance(raw, Store) else open_store(raw, RAW_SECTION)
    fs, root = store.fs, store.root
    local = store.is_local
    delta_options = None if local else store.delta_options()
    real_root = os.path.realpath(root) if local else ""
    confined = not spec.allow_outside_raw_root
    if spec.reads_directory:
        path = f"{root}/{spec.files}"
        if not fs.isdir(path):
            return []
        table = RawFile(fs=fs, path=path, rel_path=spec.files, confined=confined, storage_options=delta_options)
        if local and confined and not _inside(os.path.realpath(path), real_root):
            return [replace(table, refused=_outside(spec.files))]
        return [table]
    found: list[RawFile] = []
    real_dirs: dict[str, str] = {}
    for path, info in sorted(fs.glob(f"{root}/{spec.files}", detail=True).items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root) + 1:] if path.startswith(root + "/") else redact(path)
        if not local:
            mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
            found.append(RawFile(fs=fs, path=path, rel_path=rel, size=int(info.get("size") or 0),
                                 mtime=_as_timestamp(mtime), confined=confined, signature=file_signature(info)))
            continue
        file = _local_file(fs, path, rel, info, real_root, real_dirs, confined)
        if file is not None:
            found.append(file)
    return found


_CONTENT_TAGS = ("ETag", "etag", "md5Hash", "generation", "VersionId", "version_id")


def file_signature(info: dict[str, Any]) -> str | None:
    """`RawFile.signature` from an fsspec `info()` entry (or the same keys of an `os.stat`), or None when the file
    system gives nothing that changes with every write."""
    size = info.get("size")
    if "ino" in info and "created" in info and "mtime" in info:
        return f"local:{size}:{info['mtime']!r}:{info['created']!r}:{info['ino']}"
    tags = [f"{key}={info[key]}" for key in _CONTENT_TAGS if info.get(key)]
    if not tags:
        return None
    modified = info.get("LastModified") or info.get("last_modified") or info.get("mtime") or info.get("updated")
    return f"object:{size}:{modified}:{';'.join(tags)}"


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is the local file system (which has links, FIFOs and devices)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in _LOCAL_PROTOCOLS


def raw_root_spellings(file: RawFile) -> list[str]:
    """The ways error messages of readers, deltalake and pyarrow spell the raw root of `file`: the path as the file
    system spells it, its resolved path and their `file://` URLs (deltalake also writes `file:/path`)."""
    if not file.path.endswith(f"/{file.rel_path}"):
        return []
    root = file.path[: -len(file.rel_path) - 1]
    roots = {root}
    if is_local(file.fs):
        roots.add(os.path.realpath(root))
    else:
        roots.add(file.fs.unstrip_protocol(root))
    for path in list(roots):
        if path.startswith("/"):
            roots.update({f"file://{path}", f"file:{path}"})
    return sorted(roots)


def _local_file(fs: AbstractFileSystem, path: str, rel: str, info: dict[str, Any], real_root: str,
                real_dirs: dict[str, str], confined: bool) -> RawFile | None:
    """The `RawFile` of a local match, refused when it must not be read; None for a link to a directory.

    `info` is fsspec's (from `lstat`): a regular file that is no link needs only its folder resolved (once per
    folder); links and special files are examined again."""
    shown = _shown_name(rel)
    parent, name = os.path.split(path)
    if parent not in real_dirs:
        real_dirs[parent] = os.path.realpath(parent)
    real = os.path.join(real_dirs[parent], name)
    plain = not info.get("islink") and stat.S_ISREG(int(info.get("mode") or 0)) and shown == rel
    if plain and (not confined or _inside(real, real_root)):
        return RawFile(fs=fs, path=path, rel_path=rel, size=int(info.get("size") or 0),
                       mtime=_as_timestamp(info.get("mtime")), confined=confined, local_root=real_root,
                       signature=file_signature(info))
    try:
        link = os.lstat(path)
    except OSError as error:
        return RawFile(fs=fs, path=path, rel_path=shown,
                       refused=(reasons.FILE_UNREADABLE, f"{shown} cannot be examined: {error.strerror}"))
    if stat.S_ISLNK(link.st_mode):
        real = os.path.realpath(path)
    if confined and not _inside(real, real_root):
        return RawFile(fs=fs, path=path, rel_path=shown, size=link.st_size, mtime=link.st_mtime, confined=confined,
                       refused=_outside(shown))
    try:
        target = os.stat(path)
    except OSError as error:
        detail = f"{shown} is a symbolic link that cannot be followed: {error.strerror}"
        return RawFile(fs=fs, path=path, rel_path=shown, size=link.st_size, mtime=link.st_mtime, confined=confined,
                       refused=(reasons.FILE_UNREADABLE, detail))
    if stat.S_ISDIR(target.st_mode):
        return None
    file = RawFile(fs=fs, path=path, rel_path=shown, size=target.st_size, mtime=target.st_mtime, confined=confined,
                   local_root=real_root, signature=file_signature({"size": target.st_size, "mtime": target.st_mtime,
                                                                   "created": target.st_ctime, "ino": target.st_ino}))
    if not stat.S_ISREG(target.st_mode):
        return replace(file, size=0, refused=(reasons.UNSUPPORTED_FILE,
                                              f"{shown} is a {_kind(target.st_mode)}, not a regular file; it is not "
                                              "opened"))
    if shown != rel:
        return replace(file, refused=(reasons.UNSUPPORTED_FILE,
                                      f"the name {shown} is not valid UTF-8 (shown with \\xNN escapes); rename the "
                                      "file to load it"))
    return file


def _shown_name(rel: str) -> str:
    """`rel` as text that UTF-8 can hold: bytes of a name that is not UTF-8 (surrogate escapes) as `\\xNN`."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")
    return rel


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _outside(rel: str) -> tuple[str, str]:
    return (reasons.OUTSIDE_RAW_ROOT, f"{rel} is a symbolic link, or lies under one, leading outside the raw root; it "
                                      "is not read (a table reads such files only when declared with "
                                      "allow_outside_raw_root=True)")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _as_timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)
