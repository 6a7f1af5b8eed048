"""One HTTP/1.1 connection of the service: routing, reading a request within its deadline,
and JSON answers (errors included)."""

from __future__ import annotations

import io
import json
import math
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import urlsplit

from pyconcepts.serve.request import (
    JSON_TYPE,
    RequestError,
    body_length,
    content_type,
    parse_json_request,
)

if TYPE_CHECKING:
    from pyconcepts.serve.server import InferenceServer

_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


class DeadlineReader(io.RawIOBase):
    """The receiving side of a connection, which waits for data at most until ``deadline``
    (a ``time.monotonic()`` value; then ``TimeoutError``) and at most ``timeout`` per receive.

    http.server reads the request line and headers itself, with a timeout per socket
    operation only, so a client sending a byte now and then could hold a connection, or an
    explain slot, indefinitely; reading through this bounds the time of the whole request."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self.sock = sock
        self.timeout = timeout
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within the timeout")
        self.sock.settimeout(min(left, self.timeout))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout)  # for the answer's writes


class Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive); errors close it after a JSON answer.

    Each request, from the moment the connection is ready for it (accepted, or the previous
    answer sent) to its last body byte, must arrive within ``Limits.timeout``. An explain slot
    is taken only once the whole body has arrived, so clients that send headers and no body
    hold a thread each but no slot."""

    server: InferenceServer
    protocol_version = "HTTP/1.1"
    server_version = "pyconcepts-serve"
    disable_nagle_algorithm = True
    _started: Optional[float] = None
    _responded = False
    _unread_body = False
    _expects_continue = False

    def version_string(self) -> str:
        return self.server_version  # without the Python version

    def setup(self) -> None:
        super().setup()
        timeout = self.server.limits.timeout
        self.connection.settimeout(timeout)
        self.rfile.close()  # the buffered reader http.server made; the socket stays open
        self.receiver = DeadlineReader(self.connection, timeout)
        self.rfile = io.BufferedReader(self.receiver)

    def handle_one_request(self) -> None:
        self._started, self._responded, self._unread_body = None, False, False
        self._expects_continue = False
        self.receiver.deadline = time.monotonic() + self.server.limits.timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        self._started = time.perf_counter()
        if not super().parse_request():
            return False
        if self.request_version == self.default_request_version:  # "GET /path": HTTP/0.9
            self.send_error(
                HTTPStatus.BAD_REQUEST,
                f"request line: expected 'METHOD PATH HTTP/1.1', got {self.requestline!r:.200}",
            )
            return False
        length = self.headers.get("Content-Length", "0").strip()
        self._unread_body = "Transfer-Encoding" in self.headers or length != "0"
        return True

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the headers pass the checks (see :meth:`_explain`)."""
        self._expects_continue = True
        return True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            path = urlsplit(self.path).path
            routes = ROUTES.get(path)
            if routes is None:
                raise RequestError(
                    HTTPStatus.NOT_FOUND, f"unknown path {path!r}: expected one of {list(ROUTES)}"
                )
            route = routes.get(method)
            if route is None:
                allowed = ", ".join(routes)
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{method} {path}: expected {allowed}",
                    {"Allow": allowed},
                )
            self._send_json(HTTPStatus.OK, route(self), close=self._unread_body)
        except RequestError as exc:
            self._fail(exc.status, str(exc), exc.headers)
        except TimeoutError:
            self._fail(HTTPStatus.REQUEST_TIMEOUT, "timed out reading the request")
        except ConnectionError:
            self.close_connection = True  # the client went away: nobody to answer
        except Exception as exc:  # never a dropped connection: answer 500, keep serving
            for line in traceback.format_exc().splitlines():
                self.log_error("%s", line)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__})")

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        """Errors found by http.server itself (request line, headers, method) as JSON too,
        always with an HTTP/1.1 status line: http.server has not set the request's version
        yet when the request line itself is refused, and would send the body alone."""
        if self.request_version == self.default_request_version:
            self.request_version = self.protocol_version
        self._fail(HTTPStatus(code), message or HTTPStatus(code).phrase)

    # ---- endpoints ------------------------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        return self.server.health()

    def _metadata(self) -> dict[str, Any]:
        return self.server.metadata()

    def _explain(self) -> dict[str, Any]:
        media = content_type(self.headers.get("Content-Type", ""))
        length = body_length(self.headers, self.server.max_body_bytes)
        if self._expects_continue:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        body = self._read_body(length)
        try:
            if not self.server.slots.acquire(blocking=False):
                raise RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"busy: {self.server.limits.max_concurrency} requests in progress, retry later",
                    {"Retry-After": "1"},
                )
            try:
                if media == JSON_TYPE:
                    data, top_k, heatmap_png = parse_json_request(
                        body, self.server.limits.max_json_depth
                    )
                    return self.server.explain_image(data, top_k, heatmap_png)
                return self.server.explain_image(body)
            finally:
                self.server.slots.release()
        finally:
            self.server.body_budget.give(length)

    # ---- request body ---------------------------------------------------------------------
    def _read_body(self, length: int) -> bytes:
        """Exactly ``length`` bytes, before the request's deadline, counted in the server's
        body budget as they arrive (the caller gives ``length`` back; a failed read gives back
        what it took)."""
        budget = self.server.body_budget
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(min(2**16, length - got))
                if not chunk:
                    raise RequestError(
                        HTTPStatus.BAD_REQUEST,
                        f"body: expected {length} bytes (Content-Length), got {got} before the end",
                    )
                if not budget.take(len(chunk)):
                    raise RequestError(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        f"busy: {budget.total} bytes of request bodies in progress, retry later",
                        {"Retry-After": "1"},
                    )
                chunks.append(chunk)
                got += len(chunk)
        except BaseException:
            budget.give(got)
            raise
        self._unread_body = False
        return b"".join(chunks)

    # ---- responses ------------------------------------------------------------------------
    def _send_json(
        self,
        status: HTTPStatus,
        payload: dict[str, Any],
        headers: Optional[Mapping[str, str]] = None,
        close: bool = False,
    ) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only
            self.wfile.write(body)
        if close and self._unread_body:
            self._linger()

    def _fail(
        self, status: HTTPStatus, message: str, headers: Optional[Mapping[str, str]] = None
    ) -> None:
        """Answer an error as JSON and close the connection."""
        self.close_connection = True
        if self._responded:  # the answer had started: all we can do is close
            return
        try:
            self._send_json(status, {"error": message}, headers, close=True)
        except OSError:
            pass  # the client is gone

    def _linger(self) -> None:
        """Half-close and drain what the client still sends (bounded in bytes and time), so
        that it reads the error answer rather than a connection reset."""
        limits = self.server.limits
        deadline = time.monotonic() + min(limits.timeout, 2.0)
        budget = self.server.max_body_bytes
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(2**16)
                if not chunk:
                    return
                budget -= len(chunk)
        except OSError:
            pass  # timed out, or the client is gone: the connection closes either way

    # ---- logging --------------------------------------------------------------------------
    def log_request(self, code: Union[int, str] = "-", size: Union[int, str] = "-") -> None:
        elapsed = (
            "-" if self._started is None else f"{1e3 * (time.perf_counter() - self._started):.1f}"
        )
        self.log_message(
            '"%s" %s %s ms', self.requestline, int(code) if code != "-" else code, elapsed
        )

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            line = (format % args).translate(_CONTROL_CHARS)
            sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {line}\n")


Route = Callable[[Handler], dict[str, Any]]
ROUTES: dict[str, dict[str, Route]] = {
    "/health": {"GET": Handler._health},
    "/metadata": {"GET": Handler._metadata},
    "/explain": {"POST": Handler._explain},
}
