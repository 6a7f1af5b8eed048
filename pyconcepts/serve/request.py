"""Parsing what a request carries: its Content-Type and Content-Length, and a JSON body.

Pure functions of header values and bytes, raising :class:`RequestError` (answered as JSON
``{"error": message}`` with its status); the handler (:mod:`pyconcepts.serve.handler`) reads
the socket.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from email.message import Message
from http import HTTPStatus
from typing import Optional

# image/jpg is not registered, but browsers and many clients send it for JPEG files.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
JSON_TYPE = "application/json"
JSON_FIELDS = ("image", "top_k", "heatmap_png")
# What `base64 FILE` and MIME wrap encoded lines with: removed before the strict decode.
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


class RequestError(Exception):
    """A request the service refuses: answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: Optional[Mapping[str, str]] = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def content_type(value: str) -> str:
    """The media type of a Content-Type header value, if the service takes it; else 415."""
    media = value.partition(";")[0].strip().lower()
    if media not in (*IMAGE_TYPES, JSON_TYPE):
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type: expected one of {[*IMAGE_TYPES, JSON_TYPE]}, got {media or 'none'!r}",
        )
    return media


def body_length(headers: Message, limit: int) -> int:
    """The body's length from the request's headers, refusing what the service does not read:
    411 for a Transfer-Encoding (chunked bodies) or no Content-Length, 415 for a compressed
    body, 400 unless exactly one non-negative decimal Content-Length, 413 over ``limit``
    (judged from the number of digits first, so that no length is too long to convert), 400
    for an empty body."""
    if "Transfer-Encoding" in headers:
        raise RequestError(
            HTTPStatus.LENGTH_REQUIRED,
            f"Transfer-Encoding {headers['Transfer-Encoding']!r:.80} is not supported: "
            "expected a body with a Content-Length",
        )
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding: expected an uncompressed body, got {encoding!r:.80}",
        )
    values = headers.get_all("Content-Length") or []
    if not values:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header")
    value = values[0].strip()
    if len(values) > 1 or not (value.isascii() and value.isdigit()):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"Content-Length: expected one non-negative integer, got {[v[:40] for v in values]}",
        )
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        got = digits if len(digits) <= 20 else f"a {len(digits)}-digit number"
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body: expected at most {limit} bytes, got Content-Length {got}",
        )
    if digits == "0":
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty body: expected an image or JSON")
    return int(digits)


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
    return decode_base64(image), top_k, heatmap_png


def decode_base64(image: str) -> bytes:
    """Standard base64, optionally after a ``data:...;base64,`` prefix and wrapped in lines
    (spaces, tabs and line breaks are ignored); any other character is a 400."""
    if image.startswith("data:"):  # a data URL: data:image/png;base64,<data>
        image = image.partition(",")[2]
    try:
        return base64.b64decode(image.translate(_BASE64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"image: expected standard base64, got invalid data ({exc})"
        ) from exc
