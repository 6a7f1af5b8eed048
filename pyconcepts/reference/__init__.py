"""Pure-torch reference twins of every op in ``pyconcepts.ops``: same names, same signatures.

Used by the tests (kernel vs reference vs an independent oracle), by ONNX export (standard ONNX
ops only) and as the fallback for dtypes or devices the compiled core does not cover.
One module per op family, mirroring ``pyconcepts.ops``.
"""
