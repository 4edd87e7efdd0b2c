"""The fault-injecting proxy, alone in front of the real SeaweedFS server: each fault does what it says, no more."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError
from faults import FaultProxy
from fsspec.core import url_to_fs
from s3_server import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as running:
        yield running


def _body(server: S3Server, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        assert error.response["Error"]["Code"] == "NoSuchKey"
        return None


def test_requests_pass_through_unchanged_and_are_recorded(s3_server: S3Server, s3_bucket: str,
                                                          proxy: FaultProxy) -> None:
    client = s3_server.client(endpoint_url=proxy.url)
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"x" * 70_000, IfNoneMatch="*")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"x" * 70_000
    assert client.head_object(Bucket=s3_bucket, Key="a/b.txt")["ContentLength"] == 70_000
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="a/")
    assert [o["Key"] for o in listed["Contents"]] == ["a/b.txt"]
    put = proxy.requests("PUT", r"/a/b\.txt$")
    assert len(put) == 1 and put[0].status == 200 and put[0].headers["if-none-match"] == "*"
    assert [e.method for e in proxy.requests()] == ["PUT", "GET", "HEAD", "GET"]


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
def test_error_answers_with_an_s3_error_and_never_reaches_the_server(s3_server: S3Server, s3_bucket: str,
                                                                      proxy: FaultProxy, status: int,
                                                                      code: str) -> None:
    proxy.inject("error", method="PUT", path=r"/k$", status=status)
    with pytest.raises(ClientError) as raised:
        s3_server.client(endpoint_url=proxy.url).put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert _body(s3_server, s3_bucket, "k") is None


def test_only_the_nth_matching_request_gets_the_fault(s3_server: S3Server, s3_bucket: str,
                                                      proxy: FaultProxy) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    fault = proxy.inject("error", method="GET", path=r"/k$", nth=2, status=500)
    client = s3_server.client(endpoint_url=proxy.url)
    client.head_object(Bucket=s3_bucket, Key="k")
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError, match="InternalError"):
        client.get_object(Bucket=s3_bucket, Key="k")
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
    assert (fault.matched, fault.fired) == (3, 1)


def test_a_persistent_fault_outlasts_the_clients_retries(s3_server: S3Server, s3_bucket: str,
                                                         proxy: FaultProxy) -> None:
    proxy.inject("error", method="PUT", status=503, times=None)
    client = s3_server.client(endpoint_url=proxy.url, retries={"total_max_attempts": 3, "mode": "standard"})
    with pytest.raises(ClientError, match="SlowDown"):
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert [e.status for e in proxy.requests("PUT")] == [503, 503, 503]


def test_transient_errors_are_retried_by_botocore_and_s3fs(s3_server: S3Server, s3_bucket: str,
                                                           proxy: FaultProxy) -> None:
    proxy.inject("error", method="PUT", path=r"/boto$", status=500, times=2)
    client = s3_server.client(endpoint_url=proxy.url, retries={"total_max_attempts": 3, "mode": "standard"})
    client.put_object(Bucket=s3_bucket, Key="boto", Body=b"1")
    proxy.inject("error", method="PUT", path=r"/fsspec$", status=503)
    fs, _ = url_to_fs(f"s3://{s3_bucket}", **s3_server.fsspec_options(endpoint_url=proxy.url))
    fs.pipe_file(f"{s3_bucket}/fsspec", b"2")
    assert [e.status for e in proxy.requests("PUT", r"/boto$")] == [500, 500, 200]
    assert [e.status for e in proxy.requests("PUT", r"/fsspec$")] == [503, 200]
    assert (_body(s3_server, s3_bucket, "boto"), _body(s3_server, s3_bucket, "fsspec")) == (b"1", b"2")


def test_reset_closes_the_connection_before_the_server_sees_the_request(s3_server: S3Server, s3_bucket: str,
                                                                        proxy: FaultProxy) -> None:
    proxy.inject("reset", method="PUT")
    with pytest.raises(ConnectionClosedError):
        s3_server.client(endpoint_url=proxy.url).put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert _body(s3_server, s3_bucket, "k") is None
    assert proxy.requests("PUT")[0].status is None


def test_drop_response_applies_the_write_but_the_client_never_hears_back(s3_server: S3Server, s3_bucket: str,
                                                                         proxy: FaultProxy) -> None:
    proxy.inject("drop_response", method="PUT")
    with pytest.raises(ConnectionClosedError):
        s3_server.client(endpoint_url=proxy.url).put_object(Bucket=s3_bucket, Key="k", Body=b"applied")
    assert _body(s3_server, s3_bucket, "k") == b"applied"


def test_delay_holds_the_answer(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    proxy.inject("delay", method="GET", seconds=0.4)
    client = s3_server.client(endpoint_url=proxy.url)
    started = time.monotonic()
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
    assert time.monotonic() - started >= 0.4
    timing_out = s3_server.client(endpoint_url=proxy.url, read_timeout=0.2)
    proxy.inject("delay", method="GET", seconds=0.6)
    with pytest.raises(Exception, match="Read timeout"):
        timing_out.get_object(Bucket=s3_bucket, Key="k")


def test_stall_lets_a_later_write_reach_the_server_first(s3_server: S3Server, s3_bucket: str,
                                                         proxy: FaultProxy) -> None:
    fault = proxy.inject("stall", method="PUT", seconds=1.0)
    stalled, direct = s3_server.client(endpoint_url=proxy.url), s3_server.client()
    late = threading.Thread(target=lambda: stalled.put_object(Bucket=s3_bucket, Key="k", Body=b"stalled"))
    late.start()
    while fault.fired == 0:
        time.sleep(0.01)
    direct.put_object(Bucket=s3_bucket, Key="k", Body=b"direct")
    assert _body(s3_server, s3_bucket, "k") == b"direct"
    late.join()
    assert _body(s3_server, s3_bucket, "k") == b"stalled"
