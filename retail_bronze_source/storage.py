"""Where files live: a local folder or a prefix of an object store, with its credentials resolved the dlt way.

A `Store` is opened once per location and handed to every client that touches it, so that fsspec (raw files, the
rejects CSVs, the lake's own files), dlt's filesystem destination (the change log) and delta-rs (the Delta input and
the Delta mirror) all use the same credentials:

- Credentials come from dlt's config providers, for the protocol of the URL (`AwsCredentials` for `s3://`, GCP
  credentials for `gs://`, Azure credentials for `az://`, ...), in the section of the location: the raw root's in
  `[sources.retail_bronze.credentials]`, the lake's in `[destination.retail_bronze_lake.credentials]` (and, as dlt
  does, the parent sections `[sources.credentials]`, `[credentials]`), or their environment variables
  (`SOURCES__RETAIL_BRONZE__CREDENTIALS__AWS_ACCESS_KEY_ID`, ...). `endpoint_url` points at an S3-compatible server;
  an `http://` endpoint allows plain HTTP in every client.
- Nothing configured (or only some fields, such as `endpoint_url`): each client takes the rest from its own default
  chain: the plain `AWS_*` variables (`AWS_ENDPOINT_URL` included) and profiles.
- Retries are bounded for every client (`settings.OBJECT_STORE_*`): a transient fault is retried, a persistent one
  ends the step within seconds instead of minutes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.configuration.specs import CredentialsConfiguration
from dlt.common.storages.configuration import FilesystemConfiguration
from dlt.common.storages.fsspec_filesystem import fsspec_from_config
from fsspec import AbstractFileSystem

from . import settings
from .redact import redact

RAW_SECTION = ("sources", "retail_bronze")
"""Config section of the raw root's location settings: `[sources.retail_bronze.credentials]`."""
LAKE_SECTION = ("destination", "retail_bronze_lake")
"""Config section of the lake's location settings: `[destination.retail_bronze_lake.credentials]`, the named dlt
filesystem destination the change log is written through."""
LOCAL_PROTOCOLS = frozenset({"file", "local"})


@dataclass(frozen=True)
class Store:
    """A folder: a local directory (`url` an absolute path) or an object-store prefix (`url` like `s3://bucket/p`)."""

    url: str
    fs: AbstractFileSystem
    root: str
    """The folder as `fs` spells it (no trailing `/`)."""
    credentials: CredentialsConfiguration | None = None
    """The credentials resolved from dlt's config (possibly partial); None for local folders and where nothing was
    configured."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """dlt's `kwargs` and `client_kwargs` of the location (fsspec arguments), for dlt's filesystem destination."""

    @property
    def is_local(self) -> bool:
        return protocol_of(self.url) in LOCAL_PROTOCOLS

    @property
    def protocol(self) -> str:
        return protocol_of(self.url)

    @property
    def local_path(self) -> Path:
        """The local directory; only for local stores."""
        if not self.is_local:
            raise ValueError(f"{self} is not on the local disk")
        return Path(self.root)

    def url_of(self, *parts: str) -> str:
        """The URL (or local path) of `parts` under the store, for delta-rs and dlt."""
        if self.is_local:
            return os.path.join(self.root, *parts)
        return "/".join([self.url.rstrip("/"), *parts])

    def path_of(self, *parts: str) -> str:
        """The path of `parts` under the store as `fs` spells it."""
        return "/".join([self.root, *parts]) if parts else self.root

    def child(self, *parts: str) -> Store:
        """The store of a folder under this one."""
        return Store(self.url_of(*parts), self.fs, self.path_of(*parts), self.credentials, self.options)

    def delta_options(self) -> dict[str, str]:
        """delta-rs `storage_options`: the credentials (if configured) and bounded retries."""
        if self.is_local:
            return {}
        options: dict[str, str] = {"max_retries": str(settings.OBJECT_STORE_RETRIES),
                                   "retry_timeout": f"{settings.OBJECT_STORE_RETRY_TIMEOUT_SECONDS}s"}
        if self.protocol == "s3":
            options.update(_s3_delta_options(self.credentials))
        elif self.credentials is not None and hasattr(self.credentials, "to_object_store_rs_credentials"):
            options.update(self.credentials.to_object_store_rs_credentials())
        return options

    def __str__(self) -> str:
        return redact(self.url)


def protocol_of(url: str) -> str:
    """The protocol of a location: `file` for local paths (with or without `file://`)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and len(head) > 1 else "file"


def open_store(location: str | Path, section: tuple[str, ...]) -> Store:
    """The store at `location` (a local path or an fsspec URL), its credentials resolved from dlt's config in
    `section` (see the module docstring)."""
    text = str(location)
    if protocol_of(text) in LOCAL_PROTOCOLS:
        local = text.split("://", 1)[1] if "://" in text else text
        root = os.path.abspath(os.path.expanduser(local))
        return Store(root, fsspec.filesystem("file"), root)
    url = text.rstrip("/")
    config = _resolve(url, section)
    _bound_retries(config)
    fs, root = fsspec_from_config(config)
    if config.protocol == "s3":
        fs.retries = settings.OBJECT_STORE_S3FS_RETRIES  # s3fs retries on top of botocore: a class attribute only
    options = {name: value for name, value in (("kwargs", config.kwargs), ("client_kwargs", config.client_kwargs))
               if value}
    return Store(url, fs, root.rstrip("/"), config.credentials, options)


def _resolve(url: str, section: tuple[str, ...]) -> FilesystemConfiguration:
    """dlt's filesystem configuration of `url`: complete when the credentials are configured, else partial (the
    clients take what is missing from their own default chain)."""
    try:
        return resolve_configuration(FilesystemConfiguration(), sections=section, explicit_value={"bucket_url": url})
    except ConfigFieldMissingException:
        return resolve_configuration(FilesystemConfiguration(), sections=section, explicit_value={"bucket_url": url},
                                     accept_partial=True)


def _bound_retries(config: FilesystemConfiguration) -> None:
    """Bounded retries for the S3 clients: botocore's standard mode with `OBJECT_STORE_RETRIES` attempts in all, and
    bounded connect and read timeouts (s3fs's own retry loop on top is set on the file system, see `open_store`)."""
    if config.protocol != "s3":
        return
    kwargs = dict(config.kwargs or {})
    kwargs["config_kwargs"] = {
        "retries": {"mode": "standard", "total_max_attempts": settings.OBJECT_STORE_RETRIES},
        "connect_timeout": settings.OBJECT_STORE_CONNECT_TIMEOUT_SECONDS,
        "read_timeout": settings.OBJECT_STORE_READ_TIMEOUT_SECONDS,
        **kwargs.get("config_kwargs", {})}
    config.kwargs = kwargs


def _s3_delta_options(credentials: Any) -> dict[str, str]:
    """delta-rs options for S3 from the configured credentials, or from the plain `AWS_*` variables it reads itself;
    an `http://` endpoint allows plain HTTP, as dlt does for its own clients."""
    fields = dict(credentials) if credentials is not None else {}
    options = {key: str(value) for key, value in {
        "aws_access_key_id": fields.get("aws_access_key_id"),
        "aws_secret_access_key": fields.get("aws_secret_access_key"),
        "aws_session_token": fields.get("aws_session_token"),
        "aws_region": fields.get("region_name"),
        "aws_endpoint_url": fields.get("endpoint_url"),
        "aws_profile": fields.get("profile_name"),
    }.items() if value}
    endpoint = options.get("aws_endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
        os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://"):
        options["aws_allow_http"] = "true"
    if "aws_region" not in options and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        options["aws_region"] = settings.OBJECT_STORE_DEFAULT_REGION
    return options


class StoreError(Exception):
    """A location that cannot be used (unreachable endpoint, missing bucket, refused credentials, no permission) or
    an object-store operation that failed after its retries; the message is one line naming the location."""


class StoreStepFailed(StoreError):
    """An object-store operation failed part way through a run (after its retries); the next run completes it."""


def describe_error(error: BaseException) -> str:
    """One line saying why an object-store call failed, from the error chain (s3fs turns botocore's errors into
    `OSError`s and keeps them as the cause)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        response = getattr(item, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "InvalidClientTokenId"):
                return f"the credentials were refused ({code})"
            if code == "NoSuchBucket":
                return "the bucket does not exist (NoSuchBucket)"
            if code in ("AccessDenied", "403") or status == 403:
                return f"permission denied ({code or status})"
            if code or status:
                return f"{code or 'HTTP'} {status or ''}".strip()
    names = {type(item).__name__ for item in chain}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return "no credentials found (configure them as the README's object storage section says)"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
                "ServerDisconnectedError", "ReadTimeoutError", "ConnectionClosedError"}:
        endpoint = next((str(getattr(i, "kwargs", {}).get("endpoint_url")) for i in chain
                         if getattr(i, "kwargs", {}).get("endpoint_url")), "")
        return f"cannot reach the endpoint{' ' + endpoint if endpoint else ''} ({type(chain[-1]).__name__})"
    text = " ".join(str(chain[-1]).split())
    return f"{type(chain[-1]).__name__}: {text[:200]}" if text else type(chain[-1]).__name__


def check_readable(store: Store, what: str) -> None:
    """Raise `StoreError` unless `store` is a folder that can be listed (`what` names it in the message)."""
    try:
        found = store.fs.isdir(store.root) or (not store.is_local and bool(store.fs.ls(store.root, detail=False)))
    except FileNotFoundError:
        found = False
    except Exception as error:  # any client failure becomes the one-line message; the cause is kept
        raise StoreError(redact(f"cannot read the {what} {store} ({describe_error(error)})")) from error
    if not found:
        raise StoreError(redact(f"the {what} {store} does not exist"))


def check_writable(store: Store, what: str) -> None:
    """Raise `StoreError` unless an object can be written to, read from and deleted in `store`; the probe object is
    removed again (`what` names the location in the message)."""
    probe = store.path_of("_retail_bronze", f"probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        if store.is_local:
            os.makedirs(os.path.dirname(probe), exist_ok=True)
        store.fs.pipe_file(probe, b"retail_bronze")
        if store.fs.cat_file(probe) != b"retail_bronze":
            raise StoreError(f"the {what} {store} did not give back what was written to it")
        store.fs.rm_file(probe)
    except StoreError:
        raise
    except Exception as error:  # any client failure becomes the one-line message; the cause is kept
        raise StoreError(redact(f"cannot write to the {what} {store} ({describe_error(error)})")) from error


@contextmanager
def store_step(store: Store, operation: str) -> Iterator[None]:
    """Turn an object-store failure during `operation` into a one-line `StoreStepFailed` naming the location."""
    if store.is_local:
        yield
        return
    try:
        yield
    except StoreError:
        raise
    except Exception as error:  # any client failure (dlt wraps them in its step errors) becomes the one line
        raise StoreStepFailed(redact(f"{operation} on {store} failed ({describe_error(error)}); the next run completes "
                                     "it")) from error
