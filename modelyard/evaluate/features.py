"""A model's representations of its inputs, for the backdoor scans and the data audit.

Classifiers with a PyTorch module (``torch`` and ``hf`` candidates) give the penultimate layer: the
input of the last ``nn.Linear`` module in module order (``module.named_modules()``), captured with a
forward hook. Embedders give their embedding. An ONNX classifier has no module to hook, so it gives
its logits, and the description says so (metrics.md 5.6 and 5.7 read representations this way).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, ConfigError, DataError

__all__ = ["penultimate_features"]

EMBEDDING = "embedding"
ONNX_LOGITS = "logits (the ONNX graph exposes no penultimate layer)"


def penultimate_features(candidate: Candidate, x: Any, *, batch_size: int = 256) -> tuple[np.ndarray, str]:
    """The (N, D) float32 representations of the N inputs ``x`` and a description of what they are.

    ``x`` is what ``candidate.preprocessor()`` takes: an array of inputs, or texts for a tokenized
    model. The description is ``"penultimate layer (input of NAME)"`` for classifiers with a PyTorch
    module, ``"embedding"`` for embedders, or the logits with the reason for an ONNX classifier (or for
    a module with no ``nn.Linear`` layer to hook). Runs in eval mode without gradients.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}; use e.g. 256.")
    try:
        n = len(x)
    except TypeError:
        raise DataError(
            f"inputs must be a sequence of items (array or list of texts), got {type(x).__name__}."
        ) from None
    if n == 0:
        raise DataError("cannot compute representations of an empty input set; pass at least one item.")
    if candidate.spec.task == "embedding" or candidate.format in ("onnx", "openvino"):
        return _runner_output(candidate, x, int(batch_size))
    return _hooked(candidate, x, int(batch_size))


def _as_rows(out: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] != n:
        raise ArtifactError(
            f"{what} has {arr.shape[0]} rows for {n} inputs; the model must keep the batch axis."
        )
    return arr.reshape(n, -1)


def _runner_output(candidate: Candidate, x: Any, batch_size: int) -> tuple[np.ndarray, str]:
    from modelyard.runtime.preprocess import predict

    out = predict(candidate.load(), candidate.preprocessor(), x, batch_size=batch_size)
    what = EMBEDDING if candidate.spec.task == "embedding" else ONNX_LOGITS
    return _as_rows(out, len(x), what), what


def _last_linear(module: Any) -> tuple[str, Any] | None:
    """The last module in module order that is a linear layer (``nn.Linear`` or a quantized ``Linear``)."""
    import torch

    found = None
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) or type(sub).__name__ == "Linear":
            found = (name, sub)
    return found


def _call(module: Any, feeds: dict[str, np.ndarray], names: list[str]) -> Any:
    """Call the module the way the torch Runner does: one input positionally, several by name."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items() if k in names}
    if len(names) == 1:
        return module(tensors[names[0]])
    return module(**tensors)


def _first_tensor(out: Any) -> Any:
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _hooked(candidate: Candidate, x: Any, batch_size: int) -> tuple[np.ndarray, str]:
    import torch

    module = candidate.torch_module()
    module.eval()
    preprocess = candidate.preprocessor()
    names = [t.name for t in candidate.spec.inputs]
    target = _last_linear(module)
    captured: list[Any] = []

    def grab(_mod: Any, inputs: tuple[Any, ...]) -> None:
        captured.append(inputs[0].detach())

    handle = target[1].register_forward_pre_hook(grab) if target is not None else None
    hidden: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch = x[start : start + batch_size]
                captured.clear()
                out = _first_tensor(_call(module, preprocess(batch), names))
                outputs.append(_as_rows(out.detach().float().numpy(), len(batch), "the model output"))
                if captured:  # a layer called several times per forward: its last call feeds the head
                    hidden.append(_as_rows(captured[-1].float().numpy(), len(batch), "the penultimate layer"))
    finally:
        if handle is not None:
            handle.remove()
    if target is None:
        return np.concatenate(outputs, axis=0), "logits (the module has no nn.Linear layer to hook)"
    if len(hidden) != len(outputs):
        return (
            np.concatenate(outputs, axis=0),
            f"logits (the last nn.Linear layer, {target[0]}, is not called by forward)",
        )
    return np.concatenate(hidden, axis=0), f"penultimate layer (input of {target[0]})"
