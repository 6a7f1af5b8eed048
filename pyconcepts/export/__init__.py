"""ONNX export and onnxruntime serving (needs the ``[onnx]`` or ``[gpu]`` extra)."""

from pyconcepts.export.onnx import OnnxExplainer, default_providers, export_module

__all__ = ["OnnxExplainer", "default_providers", "export_module"]
