"""The file ledger: which inputs of a table are new, changed or unchanged, by their content.

The ledger maps each input's path (relative to the raw root) to the fingerprint of the version loaded last (SHA-256 of
its bytes; a Delta table's version) and the file system's signature of that version (`RawFile.signature`). A file is
skipped without being read again only when its signature is unchanged (it was not written since); otherwise it is
fingerprinted, and skipped when the content is the same. What the ledger records:
- a file loaded, or rejected for its content (bad bytes, a missing column), under its fingerprint: the same content is
  never examined again, a changed one is;
- a file refused without being opened (a link out of the raw root, a FIFO) under a fingerprint of the refusal;
- nothing for a file that could not be read this time (permissions, I/O, gone): the next run reads it again.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from . import reasons
from .raw import FileRejected, RawFile
from .readers.formats import fingerprint, format_of, reads_increments, refused_fingerprint, resume_options
from .registry import TableSpec

Ledger = MutableMapping[str, Any]


class ChangedFileError(Exception):
    """A file already loaded changed, and its table is declared with `changed_files="fail"`."""


@dataclass(frozen=True)
class Decision:
    """What a load does with one input."""

    action: str
    """`unchanged` (nothing), `stage` (read it), `reject` (record a file-level reject), `skip` (record a changed
    version without loading it, `changed_files="skip"`)."""
    fingerprint: str = ""
    fmt: str = ""
    replaced: str | None = None
    """Fingerprint of the version loaded before: the file is a re-delivery (or a Delta table's increment)."""
    rejected: FileRejected | None = None
    transient: bool = False
    """A failure to read the file this time: recorded in the manifest, never in the ledger."""
    options: dict[str, Any] = field(default_factory=dict)
    """Reader options for this input (the table's, and where the format reads increments, where to start)."""


def decide(spec: TableSpec, file: RawFile, ledger: Ledger) -> Decision:
    """What to do with `file` given what `ledger` recorded (fingerprints the file unless its signature says it was not
    written since; updates the recorded signature of an unchanged file)."""
    seen = ledger.get(file.rel_path)
    loaded = str(seen["fingerprint"]) if seen else None
    if seen and not spec.reads_directory and file.signature is not None and seen.get("signature") == file.signature:
        return Decision("unchanged")
    if file.refused is not None:
        print_ = f"refused:{file.refused[0]}:size={file.size}"
        if print_ == loaded:
            return Decision("unchanged")
        return Decision("reject", print_, replaced=loaded, rejected=FileRejected(*file.refused))
    fmt = ""
    unsupported: FileRejected | None = None
    try:
        fmt = format_of(spec.name, spec.formats, file)
    except FileRejected as rejected:
        unsupported = rejected
    try:
        print_ = fingerprint(fmt, file)
    except OSError as error:
        detail = f"cannot read {file.rel_path}: {type(error).__name__}: {error.strerror or error}"
        return Decision("reject", f"unreadable:size={file.size}:signature={file.signature}", fmt,
                        rejected=FileRejected(reasons.FILE_UNREADABLE, detail), transient=True)
    except FileRejected as rejected:
        print_ = refused_fingerprint(fmt, file)
        if print_ == loaded:
            return Decision("unchanged")
        return Decision("reject", print_, fmt, replaced=loaded, rejected=rejected)
    if print_ == loaded:
        assert seen is not None
        seen["signature"] = file.signature
        return Decision("unchanged")
    if loaded is not None and not reads_increments(fmt) and spec.changed_files != "reload":
        if spec.changed_files == "fail":
            raise ChangedFileError(f"{file.rel_path} changed after it was loaded ({loaded} -> {print_}) and table "
                                   f"{spec.name} is declared with changed_files='fail'")
        return Decision("skip", print_, fmt, replaced=loaded)
    if unsupported is not None:
        return Decision("reject", print_, fmt, replaced=loaded, rejected=unsupported)
    return Decision("stage", print_, fmt, replaced=loaded,
                    options={**spec.reader_options, **resume_options(fmt, loaded)})


def record(ledger: Ledger, file: RawFile, fingerprint_: str) -> None:
    """Record a version of `file` as loaded (or rejected for its content)."""
    ledger[file.rel_path] = {"fingerprint": fingerprint_, "signature": file.signature}
