"""The service's limits (:class:`Limits`), the validation of the ``serve`` command's numeric
options (:func:`cli_limits`), and the shared budget of request-body bytes (:class:`ByteBudget`).
What the limits bound, per request and in total: docs/serving.md."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, fields
from typing import Optional

MAX_TIMEOUT = 86_400.0  # one day: longer bounds nothing in practice (and inf overflows sockets)
MAX_PORT = 65_535
# The default pixel limit, in input images of the export: 16 × H × W (4× each side).
PIXELS_PER_INPUT = 16
# The default body limit, per pixel of the pixel limit: the largest honest image of that size,
# a 16-bit RGBA PNG stored uncompressed (8 bytes a pixel), in base64 (4/3) inside JSON.
BODY_BYTES_PER_PIXEL = 8 * 4 / 3
BODY_SLACK = 64 * 2**10  # PNG/JPEG headers, ancillary chunks, the JSON around the image


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Limits:
    """Per-request limits of the service. Every field is validated on construction.

    Attributes:
        max_body_bytes: largest request body accepted (checked against Content-Length before
            reading); the bodies being read at once hold at most ``max_concurrency`` × this.
            ``None`` (default) = what the largest accepted image can need: 8 × 4/3 bytes per
            pixel of the pixel limit (a 16-bit RGBA PNG stored uncompressed, in base64) +
            64 KiB — 8.23 MiB for a 224 × 224 export, 0.73 MiB for 64 × 64 — so that the bodies,
            which dominate the service's worst-case memory, are bounded by the images.
        max_concurrency: images decoded and explained at once; more are answered 503.
        max_inferences: of those, how many run the model at once (the others wait for their
            turn); ``None`` (default) = the machine's CPU count. onnxruntime already spreads
            one run over every core, so more runs at once oversubscribe the cores: on 2 cores
            the old 32 gave 0.73–0.87× the throughput of 2 (docs/serving.md).
        max_connections: connections open at once (each holds a thread, idle ones for at
            most ``timeout``); one more is answered 503 and closed without a thread.
        timeout: seconds for one whole request to arrive (the wait for it on a kept-alive
            connection, its request line, headers and body), and per socket write.
        max_pixels: largest image (width × height, from the image's header) decoded; ``None``
            (default) = 16 × the export's input height × width.
        max_json_depth: most ``[``/``{`` in a JSON body, so the deepest nesting accepted.
    """

    max_body_bytes: Optional[int] = None
    max_concurrency: int = 32
    max_inferences: Optional[int] = None
    max_connections: int = 256
    timeout: float = 30.0
    max_pixels: Optional[int] = None
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "timeout":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not (ok and math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
                    raise ValueError(
                        f"timeout: expected a finite number of seconds in (0, {MAX_TIMEOUT:g}], "
                        f"got {value!r}"
                    )
            elif not (_is_int(value) and value > 0):
                if f.name in ("max_pixels", "max_body_bytes", "max_inferences") and value is None:
                    continue  # derived: from the export's input size, or the CPU count
                raise ValueError(f"{f.name}: expected a positive integer, got {value!r}")

    def pixels_for(self, input_hw: tuple[int, int]) -> int:
        """The pixel limit for an export whose input is ``input_hw`` = (H, W)."""
        if self.max_pixels is not None:
            return self.max_pixels
        return PIXELS_PER_INPUT * input_hw[0] * input_hw[1]

    def inferences(self) -> int:
        """The number of model runs at once (``max_inferences``, else the CPU count)."""
        return self.max_inferences or os.cpu_count() or 1

    def body_bytes_for(self, input_hw: tuple[int, int]) -> int:
        """The body limit for an export whose input is ``input_hw`` = (H, W)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return math.ceil(BODY_BYTES_PER_PIXEL * self.pixels_for(input_hw)) + BODY_SLACK


def cli_limits(
    port: int,
    max_body_mib: Optional[float],
    max_concurrency: int,
    timeout: float,
    max_connections: int,
    max_inferences: Optional[int] = None,
) -> Limits:
    """The ``serve`` command's numeric options, validated, as :class:`Limits` (``max_body_mib``
    None: derived from the export's input size). Raises ``ValueError`` naming the option (the
    command prints it on one line and exits 2)."""
    if not (_is_int(port) and 0 <= port <= MAX_PORT):
        raise ValueError(f"--port: expected an integer in [0, {MAX_PORT}], got {port!r}")
    if max_body_mib is not None and not (math.isfinite(max_body_mib) and max_body_mib * 2**20 >= 1):
        raise ValueError(
            f"--max-body-mib: expected a finite number of MiB, at least one byte, "
            f"got {max_body_mib!r}"
        )
    return Limits(
        max_body_bytes=None if max_body_mib is None else int(max_body_mib * 2**20),
        max_concurrency=max_concurrency,
        max_inferences=max_inferences,
        max_connections=max_connections,
        timeout=timeout,
    )


class ByteBudget:
    """Bytes of request bodies held at once, across connections, up to ``total``.

    A body is counted as its bytes arrive (not from its Content-Length), so connections that
    announce bodies and send nothing hold nothing; a chunk that does not fit is refused and the
    request answered 503."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes if they fit; whether they did."""
        with self._lock:
            if self.held + n > self.total:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes taken earlier."""
        with self._lock:
            self.held -= n
