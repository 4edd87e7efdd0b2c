"""One streaming reader per raw format, each `(file, chunk_size, **options) -> Iterator[RawChunk]`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .base import FileRejected, ParseReject, RawChunk, RawFile
from .csv import read_csv
from .delta import read_delta
from .jsonl import read_jsonl
from .parquet import read_parquet
from .xlsx import read_xlsx

Reader = Callable[..., Iterator[RawChunk]]

READERS: Mapping[str, Reader] = MappingProxyType(
    {"csv": read_csv, "parquet": read_parquet, "xlsx": read_xlsx, "jsonl": read_jsonl, "delta": read_delta}
)


def read(fmt: str, file: RawFile, chunk_size: int, options: Mapping[str, Any] | None = None) -> Iterator[RawChunk]:
    """Stream `file` with the reader of `fmt`."""
    return READERS[fmt](file, chunk_size, **(options or {}))


__all__ = ["READERS", "FileRejected", "ParseReject", "RawChunk", "RawFile", "Reader", "read"]
