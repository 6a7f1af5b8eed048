"""The service (:class:`InferenceServer`) and its entry points :func:`build_server` and
:func:`serve` (what ``pyconcepts serve`` runs)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

from pyconcepts.export.onnx import OnnxExplainer
from pyconcepts.serve.handler import Handler
from pyconcepts.serve.images import decode_image, overlay_png
from pyconcepts.serve.limits import ByteBudget, Limits


class InferenceServer(ThreadingHTTPServer):
    """The service: a ThreadingHTTPServer answering the endpoints for one ONNX export.

    Build it with :func:`build_server`; ``serve_forever()`` runs it, ``shutdown()`` stops it.
    ``max_pixels`` and ``max_body_bytes`` are the limits in force (:class:`Limits`' or derived
    from the export's input size). Shared by the connections: ``slots`` (``max_concurrency``
    images decoded and explained at once; of them ``inferences``, :meth:`Limits.inferences`,
    run the model at once), ``body_budget`` (``max_concurrency ×
    max_body_bytes`` body bytes held at once) and
    ``connections`` (``max_connections`` open at once, each with its thread: one more is
    answered 503 by the accepting thread and closed, so idle connections cannot pile up
    threads).
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
        self.max_pixels = limits.pixels_for(self.input_chw[1:])
        self.max_body_bytes = limits.body_bytes_for(self.input_chw[1:])
        self.slots = threading.BoundedSemaphore(limits.max_concurrency)
        self.inferences = threading.BoundedSemaphore(limits.inferences())
        self.body_budget = ByteBudget(limits.max_concurrency * self.max_body_bytes)
        self.connections = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection while fewer than ``max_connections`` are open."""
        if not self.connections.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else will give the place back
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 and close, written by the accepting thread with a short send timeout (the
        answer fits any socket buffer, so a client that does not read cannot stall it)."""
        n = self.limits.max_connections
        body = json.dumps({"error": f"too many open connections (max_connections={n})"})
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(1.0)
            request.sendall((head + body).encode())
        except OSError:
            pass  # the client is gone
        finally:
            self.shutdown_request(request)

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
        images = decode_image(data, (height, width), self.max_pixels)
        with self.inferences:  # decoding overlaps; model runs queue for the cores
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
        if heatmap_png:  # the explained class's combined map (None where a method has none)
            combined = result.class_map(0)
            answer["heatmap_png"] = (
                None if combined is None else overlay_png(images[0], combined.numpy())
            )
        return answer


def build_server(
    model: Union[str, Path, OnnxExplainer],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Optional[Limits] = None,
    quiet: bool = False,
    threads: Optional[int] = None,
) -> InferenceServer:
    """The service for ``model`` (an ONNX export's path, or a loaded OnnxExplainer), bound to
    ``host``:``port`` (0 = any free port: see ``server.server_address``), not yet serving.
    ``threads``: onnxruntime's threads per model run for a path (None: one per core)."""
    if isinstance(model, OnnxExplainer):
        explainer = model
    else:
        explainer = OnnxExplainer(model, threads=threads)
    return InferenceServer((host, port), explainer, limits or Limits(), quiet)


def serve(
    model: Union[str, Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Optional[Limits] = None,
    quiet: bool = False,
    threads: Optional[int] = None,
) -> None:
    """Run the service for ``model`` until interrupted (Ctrl-C); ``threads`` as in
    :func:`build_server`."""
    server = build_server(model, host, port, limits, quiet, threads)
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
