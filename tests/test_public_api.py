"""The public surface: a sorted __all__, every name importable, and no heavy imports at import time."""

from __future__ import annotations

import subprocess
import sys

import modelyard


def test_all_is_sorted_and_complete() -> None:
    assert modelyard.__all__ == sorted(modelyard.__all__)
    for name in modelyard.__all__:
        assert hasattr(modelyard, name), name
    public = {
        n
        for n in vars(modelyard)
        if not n.startswith("_") and not isinstance(getattr(modelyard, n), type(sys))
    }
    assert public == set(modelyard.__all__) - {"__version__"}


def test_import_is_light() -> None:
    code = "import sys, modelyard; print(' '.join(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""
