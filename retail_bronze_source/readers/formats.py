"""What the extractor needs to know of a format, asked of the readers rather than written into the extractor: which
format a file name is read as, whether rows live in sheets, whether a table is a directory read as a whole, and how
a file version is fingerprinted and read again from where it was left."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Literal, cast

from .. import reasons, settings
from ..raw import FileRejected, RawFile
from .delta import delta_version
from .streams import COMPRESSED_EXTENSIONS

FileFormat = Literal["csv", "tsv", "txt", "parquet", "xlsx", "jsonl", "json", "delta"]

_TEXT_EXTENSIONS: Mapping[str, FileFormat] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
}

EXTENSION_FORMATS: Mapping[str, FileFormat] = MappingProxyType({
    **_TEXT_EXTENSIONS,
    **{ext + packed: fmt for ext, fmt in _TEXT_EXTENSIONS.items() for packed in COMPRESSED_EXTENSIONS},
    ".parquet": "parquet", ".xlsx": "xlsx", ".xlsm": "xlsx", ".xls": "xlsx",
})
"""File name endings (see `file_suffix`) and the format each one is read as. `.xls` goes to the Excel reader, which
reads a workbook that is really XLSX and rejects a legacy BIFF one as `UNSUPPORTED_FILE` saying what to do."""

SHEET_FORMATS: frozenset[str] = frozenset({"xlsx"})
"""Formats whose rows live in sheets: a row's position in its file includes its sheet (`src_sheet`)."""
DIRECTORY_FORMATS: frozenset[str] = frozenset({"delta"})
"""Formats whose input is a table directory with versions, read whole the first time and then from the version read
last (the table's `files` names the directory)."""

_DELTA_VERSION = "delta-version:"
_DELTA_LOG = "delta-log:"


def file_suffix(name: str) -> str:
    """The lower-case ending of `name` that `EXTENSION_FORMATS` is keyed by: `.csv`, or `.csv.gz` for a compressed
    file (the last two suffixes when the last one is a compression)."""
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED_EXTENSIONS:
        return suffixes[-2] + suffixes[-1]
    return suffixes[-1] if suffixes else ""


def format_of(table_name: str, accepted: tuple[str, ...], file: RawFile) -> str:
    """The format `file` is read as; raises `UNSUPPORTED_FILE` when the table does not accept it."""
    directories = [fmt for fmt in accepted if fmt in DIRECTORY_FORMATS]
    if directories:
        return directories[0]
    suffix = file_suffix(file.rel_path)
    fmt = EXTENSION_FORMATS.get(suffix)
    if fmt is None or fmt not in accepted:
        raise FileRejected(reasons.UNSUPPORTED_FILE,
                           f"'{suffix or file.rel_path}' files are not accepted for table {table_name} "
                           f"(accepted: {', '.join(accepted)})")
    return fmt


def fingerprint(fmt: str, file: RawFile) -> str:
    """A fingerprint of the file's content: SHA-256 of its bytes, or the version of a Delta table. Raises `OSError`
    when the file cannot be read now, `FileRejected` when the reader refuses it."""
    if fmt == "delta":
        return f"{_DELTA_VERSION}{delta_version(file)}"
    digest = hashlib.sha256()
    # One buffer read into again and again: a new block per read would be fresh memory for the kernel to zero.
    block = memoryview(bytearray(settings.HASH_BLOCK_BYTES))
    with file.open() as handle:
        # fsspec's file objects are `io.IOBase` files with `readinto`.
        while size := cast(io.BufferedIOBase, handle).readinto(block):
            digest.update(block[:size])
    return f"sha256:{digest.hexdigest()}"


def refused_fingerprint(fmt: str, file: RawFile) -> str:
    """A fingerprint of a file the reader refuses to open, so that the same refusal is not repeated while the file
    stays as it is: a Delta table by the names and sizes of its log entries, any other file by its size."""
    if fmt != "delta":
        return f"unreadable:size={file.size}"
    digest = hashlib.sha256()
    try:
        entries = file.fs.ls(f"{file.path.rstrip('/')}/_delta_log", detail=True)
    except OSError as error:
        return f"{_DELTA_LOG}unlisted:{type(error).__name__}"
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        digest.update(f"{PurePosixPath(str(entry['name'])).name}:{entry.get('size')};".encode())
    return f"{_DELTA_LOG}{digest.hexdigest()}"


def resume_options(fmt: str, loaded_fingerprint: str | None) -> dict[str, Any]:
    """Reader options that read only what a new version adds to the one fingerprinted `loaded_fingerprint` (Delta:
    the commits after that version); empty when the new version is read whole."""
    if fmt == "delta" and loaded_fingerprint and loaded_fingerprint.startswith(_DELTA_VERSION):
        return {"starting_version": int(loaded_fingerprint[len(_DELTA_VERSION):])}
    return {}


def reads_increments(fmt: str) -> bool:
    """Whether a new version of an input is read as the increment over the loaded one (never a changed file)."""
    return fmt in DIRECTORY_FORMATS
