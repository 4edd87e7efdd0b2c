"""One streaming reader per raw format, each `(file, chunk_size, **options) -> Iterator[RawChunk]`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ..raw import FileRejected, ParseReject, RawChunk, RawFile
from .csv import read_csv, read_tsv, read_txt
from .delta import read_delta
from .json import read_json
from .jsonl import read_jsonl
from .options import options_for
from .parquet import read_parquet
from .xlsx import read_xlsx

Reader = Callable[..., Iterator[RawChunk]]

READERS: Mapping[str, Reader] = MappingProxyType({
    "csv": read_csv, "tsv": read_tsv, "txt": read_txt, "parquet": read_parquet, "xlsx": read_xlsx,
    "jsonl": read_jsonl, "json": read_json, "delta": read_delta,
})


def read(fmt: str, file: RawFile, chunk_size: int, options: Mapping[str, Any] | None = None) -> Iterator[RawChunk]:
    """Stream `file` with the reader of `fmt`, given the options of `options` that `fmt` takes (a table of several
    formats declares the options of all of them)."""
    return READERS[fmt](file, chunk_size, **options_for(fmt, options or {}))


__all__ = ["READERS", "FileRejected", "ParseReject", "RawChunk", "RawFile", "Reader", "read"]
