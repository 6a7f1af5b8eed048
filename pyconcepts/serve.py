"""HTTP inference service for an ONNX export: ``pyconcepts serve model.onnx``.

Standard library only (:class:`http.server.ThreadingHTTPServer`) around
:class:`~pyconcepts.export.OnnxExplainer`. Endpoints: ``GET /health``, ``GET /metadata`` and
``POST /explain`` (a raw PNG/JPEG body, or JSON ``{"image": "<base64>", "top_k": 5,
"heatmap_png": false}``). Every answer is JSON; every error is JSON ``{"error": "..."}`` with a
4xx/5xx status. The model is loaded once, at start-up; no endpoint reads files. Limits and the
hardening they give: docs/serving.md.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import numpy as np

from pyconcepts.export.onnx import OnnxExplainer

IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_TYPE = "application/json"
JSON_FIELDS = ("image", "top_k", "heatmap_png")


@dataclass(frozen=True)
class Limits:
    """Per-request limits of the service (all must be positive).

    Attributes:
        max_body_bytes: largest request body accepted (checked against Content-Length).
        max_concurrency: requests explained at once; more are answered 503.
        timeout: seconds per socket operation, and for reading a whole body.
        max_pixels: largest image (width × height) decoded.
        max_json_depth: most ``[``/``{`` in a JSON body, so the deepest nesting accepted.
    """

    max_body_bytes: int = 16 * 2**20
    max_concurrency: int = 32
    timeout: float = 30.0
    max_pixels: int = 4096 * 4096
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"Limits.{f.name}: expected a positive number, got {value!r}")


class RequestError(Exception):
    """A request the service refuses: answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: Optional[Mapping[str, str]] = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes → float32 ``[1, 3, H, W]`` in [0, 1]: RGB, resized (bilinear) to
    ``size`` = (H, W). Raises :class:`RequestError` (400) for an empty, undecodable or larger
    than ``max_pixels`` image; the size is checked from the header, before decoding."""
    from PIL import Image

    if not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty image: expected PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"image: expected at most {max_pixels} pixels, got {width}×{height}",
                )
            rgb = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except RequestError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types for bad input
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"image: expected a valid PNG or JPEG, got undecodable bytes "
            f"({type(exc).__name__}: {exc})",
        ) from exc
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Raise :class:`RequestError` (400) if ``body`` holds more than ``max_depth`` ``[``/``{``.

    Nesting can be no deeper than the number of arrays and objects, so this bounds the depth
    before ``json.loads`` recurses, in one linear pass (no string tracking, which regular
    expressions do in quadratic time on crafted input). A valid request holds one ``{``:
    base64 strings have no brackets."""
    containers = body.count(b"[") + body.count(b"{")
    if containers > max_depth:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"JSON: expected at most {max_depth} '[' or '{{' (the nesting limit), got {containers}",
        )


def parse_json_request(body: bytes, max_depth: int) -> tuple[bytes, int, bool]:
    """A JSON request body → (image bytes, top_k, heatmap_png); :class:`RequestError` (400)
    naming what was wrong."""
    check_json_depth(body, max_depth)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"JSON: invalid document ({exc})") from exc
    if not isinstance(doc, dict):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f'JSON: expected an object {{"image": ...}}, got {type(doc).__name__}',
        )
    unknown = sorted(set(doc) - set(JSON_FIELDS))
    if unknown:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"JSON: unknown fields {unknown}, expected {list(JSON_FIELDS)}"
        )
    image, top_k, heatmap_png = doc.get("image"), doc.get("top_k", 5), doc.get("heatmap_png", False)
    if not isinstance(image, str):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"image: expected a base64 string of PNG/JPEG bytes, got {type(image).__name__}",
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"top_k: expected a positive integer, got {top_k!r}"
        )
    if not isinstance(heatmap_png, bool):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"heatmap_png: expected true or false, got {heatmap_png!r}"
        )
    if image.startswith("data:"):  # a data URL: data:image/png;base64,<data>
        image = image.partition(",")[2]
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"image: expected standard base64, got invalid data ({exc})"
        ) from exc
    return data, top_k, heatmap_png


@functools.lru_cache(maxsize=1)
def _jet() -> np.ndarray:
    from matplotlib import colormaps

    return np.asarray(colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32)


def overlay_png(image: np.ndarray, heatmap: np.ndarray) -> str:
    """Base64 PNG of ``heatmap`` [H, W] (min-max scaled, jet colours) blended half-and-half
    over ``image`` [3, H, W] in [0, 1]."""
    from PIL import Image

    low, high = float(np.min(heatmap)), float(np.max(heatmap))
    scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    colour = _jet()[np.clip(np.round(scaled * 255), 0, 255).astype(np.intp)]
    blend = 0.5 * image.transpose(1, 2, 0) + 0.5 * colour
    buffer = io.BytesIO()
    Image.fromarray(np.round(blend * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class InferenceServer(ThreadingHTTPServer):
    """The service: a ThreadingHTTPServer answering the endpoints for one ONNX export.

    Build it with :func:`build_server`; ``serve_forever()`` runs it, ``shutdown()`` stops it.
    """

    daemon_threads = True
    request_queue_size = 128  # connections waiting for accept() under bursts

    def __init__(
        self,
        address: tuple[str, int],
        explainer: OnnxExplainer,
        limits: Limits,
        quiet: bool = False,
    ) -> None:
        dims = [d for d in explainer.input_shape[1:] if d is not None]
        if len(explainer.input_shape) != 4 or len(dims) != 3 or dims[0] != 3:
            raise ValueError(
                f"{explainer.path}: expected a static RGB input [B, 3, H, W], "
                f"got {explainer.input_shape} (None = dynamic)"
            )
        self.explainer = explainer
        self.limits = limits
        self.quiet = quiet
        self.input_chw = (int(dims[0]), int(dims[1]), int(dims[2]))
        self.slots = threading.BoundedSemaphore(limits.max_concurrency)
        super().__init__(address, _Handler)

    def health(self) -> dict[str, Any]:
        """The answer of ``GET /health``."""
        return {
            "status": "ok",
            "method": self.explainer.method,
            "inputs": list(self.input_chw),
            "concepts": len(self.explainer.concept_names),
        }

    def metadata(self) -> dict[str, Any]:
        """The answer of ``GET /metadata``: what the export says about itself."""
        e = self.explainer
        return {
            "method": e.method,
            "layer": e.layer,
            "inputs": list(self.input_chw),
            "class_names": e.class_names,
            "concept_names": e.concept_names,
            "output_names": e.output_names,
            "pyconcepts_version": e.metadata.get("pyconcepts_version", ""),
        }

    def explain_image(
        self, data: bytes, top_k: int = 5, heatmap_png: bool = False
    ) -> dict[str, Any]:
        """The answer of ``POST /explain`` for PNG/JPEG bytes ``data``."""
        _, height, width = self.input_chw
        images = decode_image(data, (height, width), self.limits.max_pixels)
        result = self.explainer.explain(images)
        scores = result.concept_scores[0]
        values, ids = scores.topk(min(top_k, scores.numel()))
        target = int(result.targets[0])
        answer: dict[str, Any] = {
            "method": result.method,
            "prediction": {"class": target, "name": result.class_names[target]},
            "logits": result.logits[0].tolist(),
            "top_concepts": [
                {"index": int(i), "name": result.concept_names[int(i)], "score": float(v)}
                for v, i in zip(values, ids)
            ],
        }
        if heatmap_png:  # None where the method has no per-concept maps at input resolution
            maps = result.heatmaps
            answer["heatmap_png"] = None
            if maps is not None and maps.shape[1:] == (scores.numel(), height, width):
                answer["heatmap_png"] = overlay_png(images[0], maps[0, int(ids[0])].numpy())
        return answer


Route = Callable[["_Handler"], dict[str, Any]]
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


class _Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive); errors close it after a JSON answer."""

    server: InferenceServer
    protocol_version = "HTTP/1.1"
    server_version = "pyconcepts-serve"
    disable_nagle_algorithm = True
    _started: Optional[float] = None
    _responded = False
    _unread_body = False

    def version_string(self) -> str:
        return self.server_version  # without the Python version

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.timeout)

    def handle_one_request(self) -> None:
        self._started, self._responded, self._unread_body = None, False, False
        super().handle_one_request()

    def parse_request(self) -> bool:
        self._started = time.perf_counter()
        parsed = super().parse_request()
        if parsed:
            length = self.headers.get("Content-Length", "0").strip()
            self._unread_body = "Transfer-Encoding" in self.headers or length != "0"
        return parsed

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
            self.log_error("%s", traceback.format_exc())
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__})")

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        """Errors found by http.server itself (request line, headers, method) as JSON too."""
        self._fail(HTTPStatus(code), message or HTTPStatus(code).phrase)

    # ---- endpoints ------------------------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        return self.server.health()

    def _metadata(self) -> dict[str, Any]:
        return self.server.metadata()

    def _explain(self) -> dict[str, Any]:
        content_type = self.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if content_type not in (*IMAGE_TYPES, JSON_TYPE):
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type: expected one of {[*IMAGE_TYPES, JSON_TYPE]}, "
                f"got {content_type or 'none'!r}",
            )
        length = self._body_length()
        if not self.server.slots.acquire(blocking=False):
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"busy: {self.server.limits.max_concurrency} requests in progress, retry later",
                {"Retry-After": "1"},
            )
        try:
            body = self._read_body(length)
            if content_type == JSON_TYPE:
                data, top_k, heatmap_png = parse_json_request(
                    body, self.server.limits.max_json_depth
                )
                return self.server.explain_image(data, top_k, heatmap_png)
            return self.server.explain_image(body)
        finally:
            self.server.slots.release()

    # ---- request body ---------------------------------------------------------------------
    def _body_length(self) -> int:
        """The body's length from the headers, refusing what this service does not read."""
        if "Transfer-Encoding" in self.headers:
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED,
                f"Transfer-Encoding {self.headers['Transfer-Encoding']!r} is not supported: "
                "expected a body with a Content-Length",
            )
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Encoding: expected an uncompressed body, got {encoding!r}",
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header")
        value = values[0].strip()
        if len(values) > 1 or not (value.isascii() and value.isdigit()):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"Content-Length: expected one non-negative integer, got {values}",
            )
        length = int(value)
        limit = self.server.limits.max_body_bytes
        if length > limit:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body: expected at most {limit} bytes, got Content-Length {length}",
            )
        if length == 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty body: expected an image or JSON")
        return length

    def _read_body(self, length: int) -> bytes:
        """Exactly ``length`` bytes, within the request timeout."""
        deadline = time.monotonic() + self.server.limits.timeout
        chunks, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(2**16, length - got))
            if not chunk:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"body: expected {length} bytes (Content-Length), got {got} before the end",
                )
            chunks.append(chunk)
            got += len(chunk)
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
        budget = limits.max_body_bytes
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


ROUTES: dict[str, dict[str, Route]] = {
    "/health": {"GET": _Handler._health},
    "/metadata": {"GET": _Handler._metadata},
    "/explain": {"POST": _Handler._explain},
}


def build_server(
    model: Union[str, Path, OnnxExplainer],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Optional[Limits] = None,
    quiet: bool = False,
) -> InferenceServer:
    """The service for ``model`` (an ONNX export's path, or a loaded OnnxExplainer), bound to
    ``host``:``port`` (0 = any free port: see ``server.server_address``), not yet serving."""
    explainer = model if isinstance(model, OnnxExplainer) else OnnxExplainer(model)
    return InferenceServer((host, port), explainer, limits or Limits(), quiet)


def serve(
    model: Union[str, Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Optional[Limits] = None,
    quiet: bool = False,
) -> None:
    """Run the service for ``model`` until interrupted (Ctrl-C)."""
    server = build_server(model, host, port, limits, quiet)
    port = server.server_address[1]
    print(f"serving {server.explainer.method} from {model} on http://{host}:{port}", flush=True)
    if host not in ("127.0.0.1", "localhost"):
        print(
            f"warning: listening on {host}, reachable from other machines; there is no "
            "authentication or TLS: put a reverse proxy in front",
            file=sys.stderr,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
