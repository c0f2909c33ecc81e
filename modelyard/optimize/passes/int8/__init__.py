"""int8 passes on ONNX candidates, with ONNX Runtime's quantization tools: ``int8-dynamic``
(``dynamic``), ``int8-static`` (``static``) and the accuracy-aware ``int8-auto`` (``auto``). Their configs
are in ``configs``, the ONNX Runtime wrappers in ``ort``, SmoothQuant smoothing in ``smooth`` and the
fidelity measurement and node-sensitivity search of ``int8-auto`` in ``sensitivity``.

Every produced file is loaded and run once before it is returned; a model ONNX Runtime refuses becomes
``PassSkipped`` with ORT's reason. Importing this package registers the three passes.
"""

from modelyard.optimize.passes.int8 import auto, dynamic, static  # noqa: F401
