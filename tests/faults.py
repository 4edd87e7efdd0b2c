"""A fault-injecting HTTP proxy for loopback: the failures of object storage, scripted per request.

`FaultProxy(upstream)` listens on 127.0.0.1 and forwards every HTTP/1.1 request to `upstream` unchanged (the Host
header too, so SigV4 signatures made for the proxy's address still verify). `inject()` scripts what happens to the
n-th request matching a method and a path pattern:

- `error`: answer `status` (500 or 503) with an S3-style XML error body; the request never reaches the server;
- `reset`: reset the connection (TCP RST) without forwarding;
- `delay`: forward, then hold the answer for `seconds` (a slow server or network);
- `stall`: hold the request for `seconds`, then forward it (it reaches the server late: after other clients' requests,
  or after its own client gave up and retried);
- `drop_response`: forward, let the server apply it, then reset the connection: the client never hears back.

Every exchange is recorded (`exchanges`) with its method, target, request headers, status and injected fault, so that
a test can assert what a client really sent (an `If-None-Match` on a commit, the number of retries).
Bodies are buffered whole: the proxy is for test-sized objects, not for large transfers.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

Action = Literal["error", "reset", "delay", "stall", "drop_response"]
MAX_HEAD = 64 * 1024
"""Bytes allowed in a request or response head before the proxy gives up on the connection."""
S3_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
             503: ("SlowDown", "Please reduce your request rate.")}


@dataclass
class Fault:
    """A scripted fault: `action` on the `nth` matching request and the `times - 1` after it (`times=None`: all)."""

    action: Action
    method: str | None = None
    path: str | None = None
    nth: int = 1
    times: int | None = 1
    status: int = 503
    seconds: float = 0.0
    matched: int = 0
    fired: int = 0

    def _take(self, method: str, target: str) -> bool:
        """Count a request that matches; True when this one gets the fault."""
        if self.method is not None and method.upper() != self.method.upper():
            return False
        if self.path is not None and re.search(self.path, target) is None:
            return False
        self.matched += 1
        if self.matched < self.nth or (self.times is not None and self.matched >= self.nth + self.times):
            return False
        self.fired += 1
        return True


@dataclass
class Exchange:
    """One request through the proxy: what the client sent and the status relayed back (None: no answer)."""

    method: str
    target: str
    headers: dict[str, str]
    status: int | None = None
    fault: Action | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


class _Closed(Exception):
    """The peer closed the connection (or sent something that is not HTTP)."""


def _read_head(stream: BinaryIO) -> list[bytes]:
    lines: list[bytes] = []
    size = 0
    while True:
        line = stream.readline(MAX_HEAD)
        if not line:
            raise _Closed
        size += len(line)
        if size > MAX_HEAD:
            raise _Closed
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue
        lines.append(line.rstrip(b"\r\n"))


def _headers(lines: list[bytes]) -> list[tuple[str, str]]:
    pairs = []
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _Closed
        pairs.append((name.strip(), value.strip()))
    return pairs


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise _Closed
    return data


def _read_chunked(stream: BinaryIO) -> bytes:
    """A chunked body as it came (sizes, chunks and trailers), to be relayed unchanged."""
    raw = bytearray()
    while True:
        size_line = stream.readline(MAX_HEAD)
        if not size_line:
            raise _Closed
        raw += size_line
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = stream.readline(MAX_HEAD)
                if not trailer:
                    raise _Closed
                raw += trailer
                if trailer in (b"\r\n", b"\n"):
                    return bytes(raw)
        raw += _read_exact(stream, size + 2)


def _read_body(stream: BinaryIO, headers: list[tuple[str, str]]) -> bytes:
    if (_get(headers, "transfer-encoding") or "").lower().endswith("chunked"):
        return _read_chunked(stream)
    length = _get(headers, "content-length")
    return _read_exact(stream, int(length)) if length else b""


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _error_response(status: int, target: str, head_only: bool) -> bytes:
    code, message = S3_ERRORS.get(status, ("InjectedFault", "A fault injected by the test proxy."))
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{target.split('?')[0]}</Resource><RequestId>fault-proxy</RequestId></Error>").encode()
    reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: fault-proxy\r\n\r\n").encode()
    return head if head_only else head + body


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of `upstream` (`http://host:port`), with scripted faults."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.faults: list[Fault] = []
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()
        if self._thread is not None:
            self._thread.join(5)

    def inject(self, action: Action, *, method: str | None = None, path: str | None = None, nth: int = 1,
               times: int | None = 1, status: int = 503, seconds: float = 0.0) -> Fault:
        """Script `action` for requests with `method` whose target (path and query) matches the regex `path`."""
        fault = Fault(action, method, path, nth, times, status, seconds)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget the scripted faults and the recorded exchanges."""
        with self._lock:
            self.faults.clear()
            self.exchanges.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Exchange]:
        """The recorded exchanges with `method` whose target matches the regex `path`."""
        with self._lock:
            return [e for e in self.exchanges if (method is None or e.method == method.upper())
                    and (path is None or re.search(path, e.target) is not None)]

    def _choose(self, method: str, target: str) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self.faults:
                if fault._take(method, target) and chosen is None:
                    chosen = fault
            return chosen

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._open.add(client)
        reader = client.makefile("rb")
        try:
            while self._exchange(client, reader):
                pass
        except (_Closed, OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._open.discard(client)
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                client.close()

    def _exchange(self, client: socket.socket, reader: BinaryIO) -> bool:
        """Relay one request and its answer; False when the client connection is done."""
        head = _read_head(reader)
        method, target, version = head[0].decode("latin-1").split(" ", 2)
        headers = _headers(head[1:])
        expects_continue = (_get(headers, "expect") or "").lower() == "100-continue"
        if expects_continue:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _read_body(reader, headers)
        exchange = Exchange(method, target, {k.lower(): v for k, v in headers})
        with self._lock:
            self.exchanges.append(exchange)
        fault = self._choose(method, target)
        exchange.fault = fault.action if fault else None
        try:
            if fault is not None and fault.action == "reset":
                _reset(client)
                return False
            if fault is not None and fault.action == "error":
                exchange.status = fault.status
                client.sendall(_error_response(fault.status, target, method == "HEAD"))
                return True
            if fault is not None and fault.action == "stall":
                time.sleep(fault.seconds)
            forwarded = [(k, v) for k, v in headers if k.lower() != "expect"]
            status, response, keep_alive = self._forward(method, target, version, forwarded, body)
            if fault is not None and fault.action == "drop_response":
                _reset(client)
                return False
            if fault is not None and fault.action == "delay":
                time.sleep(fault.seconds)
            exchange.status = status
            client.sendall(response)
            client_keep_alive = (_get(headers, "connection") or "").lower() != "close" and version == "HTTP/1.1"
            return keep_alive and client_keep_alive
        finally:
            exchange.seconds = time.monotonic() - exchange.started

    def _forward(self, method: str, target: str, version: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, bytes, bool]:
        """Send the request upstream on a connection of its own; the answer's status, raw bytes and keep-alive."""
        request = f"{method} {target} {version}\r\n".encode("latin-1")
        request += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n" + body
        with socket.create_connection(self.upstream, timeout=120) as upstream:
            upstream.sendall(request)
            stream = upstream.makefile("rb")
            while True:
                head = _read_head(stream)
                status = int(head[0].split(b" ", 2)[1])
                if status >= 200 or status == 101:
                    break
            response_headers = _headers(head[1:])
            if method == "HEAD" or status in (204, 304):
                payload = b""
                closes = False
            elif _get(response_headers, "transfer-encoding") or _get(response_headers, "content-length"):
                payload = _read_body(stream, response_headers)
                closes = False
            else:
                payload = stream.read()
                closes = True
            keep_alive = not closes and (_get(response_headers, "connection") or "").lower() != "close"
            return status, b"\r\n".join(head) + b"\r\n\r\n" + payload, keep_alive
