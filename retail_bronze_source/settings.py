"""Every tuning knob of the package, with why it has its value. These shape speed and memory, never results: the
readers' limits on what a file may be are policies and live in `limits`.

Values that depend on the machine are functions, read when used (never fixed at import).
"""

from __future__ import annotations

import os

DEFAULT_CHUNK_SIZE = 128 * 1024
"""Rows read and validated at once. Two files are staged at a time and each holds about three chunks, so this bounds
the extraction's memory; larger chunks were barely faster and peaked higher."""


def staging_threads() -> int:
    """Files read and validated at once: every stage releases the GIL, so two files keep two cores busy."""
    return min(2, os.cpu_count() or 1)


REJECTS_BATCH_BYTES = 64 << 20
"""Reject records of consecutive files are handed to dlt together up to this size: dlt computes and validates the
table hints of every item it is given, which for a dirty load cost more than writing its records."""
HASH_BLOCK_BYTES = 8 << 20
"""Block size when a file's bytes are hashed for its fingerprint: large reads, one buffer reused."""

DUCKDB_MEMORY_LIMIT = "256MB"
"""Memory of every DuckDB connection the package opens (validation, key resolution, the warehouse load, the Delta
mirror's sorting): DuckDB spills to disk beyond it, which keeps the whole run within a known budget."""
WAREHOUSE_BLOCK_ALLOCATOR = "256MB"
"""DuckDB keeps this much of the warehouse load's memory for the connection instead of returning it to the system
after each task and faulting it in again (about half the load's kernel time)."""
WAREHOUSE_PARALLELISM = "table-sequential"
"""dlt's load parallelism for the warehouse: one job per table at a time. Two appends to one DuckDB table from two
connections both commit, but the later one is compressed again on one thread when the file closes; one after the
other, each append uses every core."""

PARALLEL_BATCH_ROWS = 16 * 1024
"""Rows per Arrow batch handed to DuckDB's validation query: it scans batches in parallel, so one chunk's query uses
every core when the other staging thread is idle, and small batches stay in the CPU caches."""
CONTRACT_GROUP_COLUMNS = 128
"""Contract columns parsed and checked per DuckDB query: the planning of one query grows faster than its width."""
RESCUE_GROUP_COLUMNS = 256
"""Columns outside the contract turned into `_rescued_data` per DuckDB `json_object`."""
HASH_BATCH_ROWS = 16 * 1024
"""Rows per DataFusion partition of the row hash: partitions are hashed in parallel, and the intermediate arrays of the
canonical form exist for one partition at a time."""
HASH_BATCH_BYTES = 16 << 20
"""Bytes of canonical text built at once for records too wide for one DataFusion expression."""
HASH_FLAT_COLUMNS = 512
"""Records up to this many columns are hashed in one DataFusion expression; wider ones in Arrow, slice by slice."""
HASH_GROUP_COLUMNS = 256
"""Columns per slice of a wide record's canonical form."""

BATCH_ROWS = 128 * 1024
"""Rows per Arrow batch streamed between engines (destination reads, restores, promotions, Delta writes): bounded
memory, batches large enough to keep the engines busy."""

PARQUET_SAMPLE_ROWS = 10_000
"""Rows of the first data a Parquet file receives that decide its encoding and compression per column."""
PARQUET_MAX_DISTINCT_SHARE = 0.25
"""A column is dictionary encoded when its sample holds at most this share of distinct values."""
PARQUET_COMPRESSION_PROBE_BYTES = 256 * 1024
PARQUET_MIN_COMPRESSION_GAIN = 0.1
"""A column whose sampled values Snappy shrinks by less than this share is written uncompressed (row hashes)."""
PARQUET_ROW_GROUP_ROWS = 128 * 1024
"""Rows per row group: enough row groups per file for DuckDB and Delta readers to read in parallel."""
TARGET_FILE_SIZE = 200 * 1024 * 1024
"""Size at which a package file is closed and the next begins; also the target of the Delta mirror's compaction."""
MIN_ROWS_PER_PARQUET_FILE = 500_000
"""Fewer rows per file make DuckDB's load slower than encoding one file on one thread."""


def parallel_parquet_files() -> int:
    """Package files a table's rows are encoded to in parallel, at most: one per core, two at most."""
    return min(2, os.cpu_count() or 1)


DELTA_MAX_OPEN_FILES = 32
"""Files a partitioned Delta append keeps open at once; beyond that many partitions the rows are sorted first."""
DELTA_WRITER_THREADS = 2
"""Threads encoding Parquet row groups of a partitioned append (the main thread reads and splits the package)."""
DELTA_MAX_PENDING_ROWS = 2 * BATCH_ROWS
"""Rows held across all partitions before they are written out as row groups (bounds the append's memory)."""
DELTA_MAX_ROWS_PER_FILE = 4 * 1024 * 1024
"""Rows per Delta data file written by an append."""
DELTA_SMALL_FILES_THRESHOLD = 32
"""A Delta table with at least this many files, averaging under a quarter of `TARGET_FILE_SIZE`, is compacted after a
run."""

JSON_BLOCK_BYTES = 1 << 20
JSON_BYTES_PER_ROW = 64
"""JSON Lines and JSON arrays are read in blocks of `chunk_size` rows of this size, at least `JSON_BLOCK_BYTES`."""
TRANSCODE_BLOCK_BYTES = 1 << 20
"""Bytes decompressed or transcoded to UTF-8 at a time for a text file."""

LOCK_POLL_SECONDS = 0.2
"""How often a run waiting for another run's lock, or for a warehouse open elsewhere, tries again."""

OBJECT_STORE_RETRIES = 4
"""Attempts of one object-store request (botocore's standard retry mode, delta-rs's `max_retries`): a transient 5xx,
reset or timeout is retried with backoff, a persistent one fails the step within seconds."""
OBJECT_STORE_S3FS_RETRIES = 2
"""s3fs's own retry loop around botocore's (each of its attempts is `OBJECT_STORE_RETRIES` botocore attempts)."""
OBJECT_STORE_RETRY_TIMEOUT_SECONDS = 30
"""delta-rs gives up retrying one request after this long."""
OBJECT_STORE_CONNECT_TIMEOUT_SECONDS = 10
OBJECT_STORE_READ_TIMEOUT_SECONDS = 60
OBJECT_STORE_DEFAULT_REGION = "us-east-1"
"""The region delta-rs signs with when none is configured anywhere (botocore's own default, so every client signs
alike; S3-compatible servers accept any)."""

LEASE_TTL_SECONDS = 30.0
"""Time to live of a lake's lease on object storage (`lease`): renewed every third of it while a run holds it; a
killed run's lease blocks other machines at most this long."""
LEASE_POLL_SECONDS = 1.0
