"""ONNX export of fitted explainers and onnxruntime serving with the same result objects.

Every explainer exports one graph: input ``images`` (float32 NCHW, dynamic batch) → its
``onnx_outputs``; ``logits`` and ``concept_scores`` always, ``heatmaps`` where the method has
them, method extras after. Graphs are traced from the pure-torch reference twins, so they hold
standard ONNX ops only and run in any onnxruntime.

Loading is restricted to our own exports (:class:`OnnxExplainer` treats the file as untrusted):
before any onnxruntime session exists, the file must be at most ``max_bytes``, parse as an ONNX
model, carry the pyconcepts metadata (method, version, outputs matching the graph), use only the
default ONNX domain and the operators in :data:`ALLOWED_OPS`, define no local functions, and keep
every tensor inside the file (no external data, whose paths could point anywhere on disk). The
session is then built from the bytes that were checked. Every export passes
``onnx.checker.check_model(full_check=True)``.

Exporter: the TorchScript-based exporter (``dynamo=False``) is the default — with torch 2.13 it
exports our graphs ~7× faster than the dynamo exporter, needs only ``onnx`` and matches it
numerically; ``exporter="dynamo"`` selects the other (needs ``onnxscript``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from pyconcepts.errors import LoadError
from pyconcepts.explanation import Explanation
from pyconcepts.inputs import check_image_batch
from pyconcepts.persistence import temp_file

# Operators of the exports of the five methods, with both exporters (tests/test_onnx_security.py
# checks that every method's export stays inside this set).
EXPORTED_OPS = frozenset({
    "Add", "And", "ArgMax", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Div", "Einsum", "Equal", "Expand", "Flatten", "Gather", "GatherElements",
    "GatherND", "Gemm", "GlobalAveragePool", "Greater", "GreaterOrEqual", "Identity", "MatMul",
    "Max", "MaxPool", "Mul", "OneHot", "Range", "ReduceMax", "ReduceMean", "ReduceSum", "Relu",
    "Reshape", "Resize", "Shape", "Slice", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
})  # fmt: skip
# Standard inference operators that other CNN backbones (BatchNorm not folded, MobileNet-style
# activations, average pooling) add when an explainer is fitted on them.
BACKBONE_OPS = frozenset({
    "AveragePool", "BatchNormalization", "Dropout", "GlobalMaxPool", "HardSigmoid", "HardSwish",
    "LeakyRelu", "Pad", "Sigmoid", "Softmax", "Squeeze",
})  # fmt: skip
ALLOWED_OPS = EXPORTED_OPS | BACKBONE_OPS
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_ONNX_BYTES = 512 * 2**20
# protobuf's limit on one serialised message: the most an ONNX file without external data holds
PROTOBUF_LIMIT_BYTES = 2**31 - 1
_METHOD = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _require(module: str, extra: str = "onnx") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for ONNX export/serving: pip install 'pyconcepts[{extra}]'"
        ) from exc


def export_module(
    module: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    output_names: Sequence[str],
    opset: int = 18,
    dynamic_batch: bool = True,
    metadata: Optional[dict[str, str]] = None,
    exporter: str = "torchscript",
) -> Path:
    """Export ``module`` (images → tuple of tensors) to ``path`` atomically, with metadata.

    A module whose weights (those a forward pass on the example reads) pass protobuf's 2 GiB is
    refused before tracing (every tensor stays inside the file, so it could not be written);
    one above :data:`MAX_ONNX_BYTES` is exported with a warning, since :class:`OnnxExplainer`
    loads it only with a larger ``max_bytes``."""
    onnx = _require("onnx")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter: expected 'torchscript' or 'dynamo', got {exporter!r}")
    target = Path(path)
    module = module.eval()
    example = example_input.float().cpu()
    traced = _checked_forward(module, example)  # its output shapes are declared below
    tmp = temp_file(target, ".onnx")
    try:
        kwargs: dict[str, Any] = {}
        if exporter == "dynamo":
            if dynamic_batch:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        elif dynamic_batch:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in ["images", *output_names]}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["images"],
                output_names=list(output_names),
                opset_version=opset,
                dynamo=exporter == "dynamo",
                **kwargs,
            )
        graph = onnx.load(tmp)
        traced = traced if isinstance(traced, (tuple, list)) else (traced,)
        _fix_output_dims(graph, [tuple(t.shape) for t in traced])
        for key, value in (metadata or {}).items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        from pyconcepts import __version__

        version = graph.metadata_props.add()
        version.key, version.value = "pyconcepts_version", __version__
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def weight_bytes(module: nn.Module, example: Optional[torch.Tensor] = None) -> int:
    """Bytes of ``module``'s parameters and buffers, each storage counted once: all of them,
    or with ``example`` only those its forward pass on ``example`` reads (an export keeps only
    those: MACE's dense-layer decoder, for one, is trained but never explains)."""
    return _weights_read(module, example)[0]


def _weights_read(module: nn.Module, example: Optional[torch.Tensor]) -> tuple[int, Any]:
    """:func:`weight_bytes` and the outputs of the forward pass on ``example`` (None without)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    outputs = None
    if example is not None:
        reads = _Reads(tensors)
        with reads, torch.no_grad():
            outputs = module(example)
        tensors = {i: tensors[i] for i in reads.seen}
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()
    }
    return sum(storages.values()), outputs


class _Reads(torch.overrides.TorchFunctionMode):
    """Records which of ``tensors`` (by id) a forward pass hands to torch functions."""

    def __init__(self, tensors: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.tensors, self.seen = tensors, set[int]()

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Optional[dict] = None
    ) -> Any:
        kwargs = kwargs or {}
        self._note([args, list(kwargs.values())])
        return func(*args, **kwargs)

    def _note(self, value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for item in value:
                self._note(item)
        elif isinstance(value, torch.Tensor) and id(value) in self.tensors:
            self.seen.add(id(value))


def _checked_forward(module: nn.Module, example: torch.Tensor) -> Any:
    """The module's outputs on ``example``, after checking the weights that pass reads against
    the size limits of :func:`export_module`."""
    size, outputs = _weights_read(module, example)
    gib = size / 2**30
    if size > PROTOBUF_LIMIT_BYTES:
        raise ValueError(
            f"module: the weights it explains with take {gib:.2f} GiB ({size:,} bytes), more "
            "than the 2 GiB an ONNX file can hold with every tensor inside it; explain fewer "
            "classes (the explainer's classes=) or read a smaller layer"
        )
    if size > MAX_ONNX_BYTES:
        warnings.warn(
            f"the export's weights take {gib:.2f} GiB, above OnnxExplainer's default max_bytes "
            f"({MAX_ONNX_BYTES // 2**20} MiB): load it with max_bytes={size + 2**26}",
            stacklevel=3,
        )
    return outputs


def _fix_output_dims(graph: Any, shapes: Sequence[tuple[int, ...]]) -> None:
    """Declare every output dimension but the batch axis (0) fixed, at its size in the traced
    example: the exporter names some dimensions it cannot prove constant (``Resize``,
    ``Flatten``) as symbols, though only the batch size varies for a graph of static
    ``[C, H, W]`` input. The full checker that runs next verifies the declared sizes against
    shape inference."""
    outputs = graph.graph.output
    if len(shapes) != len(outputs):
        raise ValueError(
            f"module: expected {len(outputs)} outputs (output_names), got {len(shapes)} tensors"
        )
    for output, shape in zip(outputs, shapes):
        dims = output.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(
                f"output {output.name!r}: the graph declares {len(dims)} dimensions, the traced "
                f"module returned shape {list(shape)}"
            )
        for dim, size in list(zip(dims, shape))[1:]:
            dim.dim_value = size  # replaces a symbolic dim_param (a oneof field)


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    ort = _require("onnxruntime")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxExplainer:
    """Serve an exported explainer with onnxruntime; ``explain`` returns the same
    :class:`~pyconcepts.explanation.Explanation` as the torch explainer.

    >>> served = OnnxExplainer("ibd.onnx")                     # doctest: +SKIP
    >>> served.explain(images).top_concepts(0)                 # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        providers: Optional[Sequence[str]] = None,
        max_bytes: int = MAX_ONNX_BYTES,
        extra_ops: Sequence[str] = (),
        threads: Optional[int] = None,
    ) -> None:
        """``extra_ops``: standard ONNX operators to allow beyond :data:`ALLOWED_OPS`, for an
        export of a backbone that uses others (e.g. ``["Erf", "Sqrt", "Pow"]`` for GELU and
        LayerNorm); the caller vouches for the file's origin when widening the set.
        ``threads``: onnxruntime's intra-op threads (None: its default, one per core) — set it
        when several sessions share a machine."""
        ort = _require("onnxruntime")
        p = Path(path)
        if not p.is_file():
            raise LoadError(f"{p}: no such file")
        data = _read_limited(p, max_bytes)
        meta = _check_model(p, data, ALLOWED_OPS | frozenset(extra_ops))
        options = ort.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                data, options, providers=list(providers or default_providers())
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LoadError(f"{p}: not a loadable ONNX model: {exc}") from exc
        self.path = p
        self.metadata = meta
        self.method = meta["pyconcepts_method"]
        self.layer = meta.get("pyconcepts_layer", "")
        self.concept_names: list[str] = _json_strings(p, meta, "pyconcepts_concepts")
        self.class_names: list[str] = _json_strings(p, meta, "pyconcepts_classes")
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        self.input_shape = tuple(d if isinstance(d, int) else None for d in shape)

    def run(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs by name for ``images``: a ``[B, C, H, W]`` tensor or array of floats,
        cast to float32 (the rule of :func:`pyconcepts.inputs.check_image_batch`, shared with
        the torch explainers: integers, an empty batch and NaN/inf are refused before
        onnxruntime runs)."""
        tensor = check_image_batch(images, torch.float32, allow_numpy=True)
        for axis, (want, got) in enumerate(zip(self.input_shape, tensor.shape)):
            if want is not None and want != got:
                raise ValueError(
                    f"images: expected shape {self.input_shape} (None = any), got "
                    f"{tuple(tensor.shape)} (axis {axis})"
                )
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        outputs = self.session.run(None, {"images": array})
        return dict(zip(self.output_names, outputs))

    def explain(self, images: torch.Tensor | np.ndarray) -> Explanation:
        """Run the graph and wrap its outputs as the same :class:`Explanation` as the torch
        explainer's ``explain`` (the prediction explained; outputs other than the layout's
        fields are its extras)."""
        out = {k: torch.from_numpy(v) for k, v in self.run(images).items()}
        logits, scores = out["logits"], out["concept_scores"]
        return Explanation.from_outputs(
            self.method,
            self.layer,
            self.concept_names or [f"concept_{i}" for i in range(scores.shape[1])],
            self.class_names or [f"class_{i}" for i in range(logits.shape[1])],
            out,
            logits.argmax(1),
        )


def _read_limited(p: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing files over ``max_bytes`` before reading them."""
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise LoadError(
                    f"{p}: {size} bytes is over the limit of {max_bytes} bytes (max_bytes)"
                )
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise LoadError(f"{p}: cannot be read: {exc}") from exc
    if len(data) > max_bytes:
        raise LoadError(f"{p}: grew over the limit of {max_bytes} bytes while it was read")
    return data


def _check_model(p: Path, data: bytes, allowed: frozenset[str]) -> dict[str, str]:
    """Checks that ``data`` is a self-contained pyconcepts export using allowed operators only;
    returns its metadata. Nothing here runs the graph or opens another file."""
    onnx = _require("onnx")
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LoadError(f"{p}: not an ONNX model: {exc}") from exc
    meta = {e.key: e.value for e in model.metadata_props}
    method = meta.get("pyconcepts_method", "")
    if not _METHOD.fullmatch(method):
        raise LoadError(
            f"{p}: not a pyconcepts export (pyconcepts_method metadata: expected a method name, "
            f"got {method!r:.80})"
        )
    if not meta.get("pyconcepts_version"):
        raise LoadError(f"{p}: not a pyconcepts export (no pyconcepts_version metadata)")
    graph = model.graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if inputs != ["images"]:
        raise LoadError(f"{p}: expected one graph input 'images', got {inputs}")
    outputs = [o.name for o in graph.output]
    declared = _json_strings(p, meta, "pyconcepts_outputs")
    if declared != outputs or not {"logits", "concept_scores"} <= set(outputs):
        raise LoadError(
            f"{p}: graph outputs {outputs} do not match the pyconcepts_outputs metadata "
            f"{declared} (which must include 'logits' and 'concept_scores')"
        )
    for key in ("pyconcepts_concepts", "pyconcepts_classes"):
        _json_strings(p, meta, key)
    domains = sorted({o.domain for o in model.opset_import} - set(DEFAULT_DOMAINS))
    if domains:
        raise LoadError(f"{p}: imports operator domains {domains}; only the default ONNX domain")
    if model.functions:
        names = [f"{f.domain}::{f.name}" for f in model.functions]
        raise LoadError(f"{p}: defines local functions {names}; pyconcepts exports have none")
    ops: set[str] = set()
    for g in _graphs(graph):
        for node in g.node:
            if node.domain not in DEFAULT_DOMAINS:
                raise LoadError(f"{p}: node {node.name!r} is in domain {node.domain!r}")
            ops.add(node.op_type)
        for tensor in _tensors(g):
            _check_internal(p, tensor)
    if ops - allowed:
        raise LoadError(
            f"{p}: uses operators {sorted(ops - allowed)} outside the allowed set "
            "(pyconcepts.export.onnx.ALLOWED_OPS; widen it with extra_ops=...)"
        )
    return meta


def _graphs(graph: Any) -> list[Any]:
    """``graph`` and every subgraph of its nodes' attributes, recursively."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                found.extend(_graphs(sub))
    return found


def _tensors(graph: Any) -> list[Any]:
    """Every tensor stored in ``graph`` (not its subgraphs): initializers, sparse initializers
    and tensor attributes of nodes."""
    found = [*graph.initializer]
    for sparse in graph.sparse_initializer:
        found += [sparse.values, sparse.indices]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found.extend(attr.tensors)
            if attr.HasField("sparse_tensor"):
                found += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
            for sparse in attr.sparse_tensors:
                found += [sparse.values, sparse.indices]
    return found


def _check_internal(p: Path, tensor: Any) -> None:
    onnx = _require("onnx")
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
        raise LoadError(
            f"{p}: tensor {tensor.name!r} keeps its data in an external file ({where!r:.200}); "
            "pyconcepts exports are self-contained"
        )


def _json_strings(p: Path, meta: dict[str, str], key: str) -> list[str]:
    """The metadata entry ``key`` as a JSON list of strings ([] when absent)."""
    try:
        value = json.loads(meta.get(key, "[]"))
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"{p}: metadata {key}: corrupt JSON: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LoadError(f"{p}: metadata {key}: expected a JSON list of strings, got {value!r:.80}")
    return value
