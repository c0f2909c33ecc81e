"""Optimization passes. Importing this package registers every pass with the pass registry."""

from modelyard.optimize.passes import bf16, distill, export, fp16, int8, openvino, prune  # noqa: F401
