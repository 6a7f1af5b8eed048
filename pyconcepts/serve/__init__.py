"""HTTP inference service for an ONNX export: ``pyconcepts serve model.onnx``.

Standard library only (:class:`http.server.ThreadingHTTPServer`) around
:class:`~pyconcepts.export.OnnxExplainer`. Endpoints: ``GET /health``, ``GET /metadata`` and
``POST /explain`` (a raw PNG/JPEG body, or JSON ``{"image": "<base64>", "top_k": 5,
"heatmap_png": false}``). Every answer is JSON; every error is JSON ``{"error": "..."}`` with a
4xx/5xx status. The model is loaded once, at start-up; no endpoint reads files. Limits, what
they bound and the hardening they give: docs/serving.md.

Modules: :mod:`~pyconcepts.serve.limits` (limits, option validation, body budget),
:mod:`~pyconcepts.serve.request` (headers and JSON bodies), :mod:`~pyconcepts.serve.images`
(decoding and overlays), :mod:`~pyconcepts.serve.handler` (one connection) and
:mod:`~pyconcepts.serve.server` (the service and its entry points).
"""

from pyconcepts.serve.images import decode_image, overlay_png
from pyconcepts.serve.limits import Limits, cli_limits
from pyconcepts.serve.request import RequestError, check_json_depth, parse_json_request
from pyconcepts.serve.server import InferenceServer, build_server, serve

__all__ = [
    "InferenceServer",
    "Limits",
    "RequestError",
    "build_server",
    "check_json_depth",
    "cli_limits",
    "decode_image",
    "overlay_png",
    "parse_json_request",
    "serve",
]
