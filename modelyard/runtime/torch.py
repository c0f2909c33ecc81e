"""PyTorch runner and loading of PyTorch modules from safe formats."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError, ConfigError
from modelyard.runtime.base import RunnerSpec
from modelyard.runtime.device import GPU_FIX, gpu_runtime, resolve_device


def resolve_factory(ref: str) -> Any:
    """Import ``package.module:function`` and return the callable."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"factory reference {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} for factory {ref!r}: {exc}; check it is on PYTHONPATH"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{ref!r}: module {module_name!r} has no callable {attr!r}")
    return fn


DTYPES = ("float32", "bfloat16")  # what a candidate's meta["torch_dtype"] may ask for


def torch_dtype(meta: dict[str, Any]) -> Any:
    """The ``torch.dtype`` a candidate's ``meta["torch_dtype"]`` asks its module to run in (None: as built)."""
    import torch

    name = meta.get("torch_dtype")
    if name is None:
        return None
    if name not in DTYPES:
        raise ArtifactError(f"candidate meta torch_dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, str(name))


def module_dtype(module: Any) -> str:
    """The floating dtype of a module's first floating parameter or buffer ("float32" when it has none)."""
    import itertools

    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    return "float32"


def load_torch_module(path: Path, meta: dict[str, Any]) -> Any:
    """Load a module saved as safetensors state dict + factory, TorchScript or torch.export.

    ``meta["torch_dtype"]`` ("bfloat16"): the factory's module is cast to that dtype before the state dict
    is loaded (safetensors only). Callers are responsible for the security scan (TorchScript and
    torch.export archives carry pickles).
    """
    import torch

    kind = meta.get("torch_kind", "safetensors")
    dtype = torch_dtype(meta)
    if dtype is not None and kind != "safetensors":
        raise ArtifactError(f"torch_dtype is supported for safetensors modules only, not {kind!r}")
    if kind == "safetensors":
        from safetensors.torch import load_file

        factory = resolve_factory(str(meta.get("factory", "")))
        module = factory(**dict(meta.get("factory_kwargs") or {}))
        if dtype is not None:
            module = module.to(dtype)
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ArtifactError(f"cannot read safetensors file {path}: {exc}") from None
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ArtifactError(
                f"state dict in {path} does not fit the module built by {meta.get('factory')}: "
                f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}; check the factory and its arguments"
            )
        return module.eval()
    if kind == "torchscript":
        return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    if kind == "export":
        return torch.export.load(str(path)).module()
    raise ArtifactError(f"unknown torch artifact kind {kind!r}; expected safetensors, torchscript or export")


class TorchRunner:
    """Runs a ``torch.nn.Module`` in inference mode, on the CPU by default.

    Single-input modules get the input positionally; multi-input modules get keyword arguments. ``device``:
    "cpu", "gpu" or "cuda:N"; a CUDA device torch cannot reach here is a ConfigError. ``self.device`` is the
    device the module's computation runs on ("cpu" or "cuda:N"); outputs always come back as float32 numpy
    arrays. A module whose weights are bfloat16 gets its floating inputs cast to bfloat16.
    """

    def __init__(
        self, module: Any, *, spec: RunnerSpec, threads: int | None = None, device: str = "cpu"
    ) -> None:
        import torch

        wanted = resolve_device(device)
        if wanted != "cpu" and not torch.cuda.is_available():
            raise ConfigError(f"torch cannot run on {wanted} here ({gpu_runtime().torch_note}); {GPU_FIX}")
        if threads:
            torch.set_num_threads(threads)
        self._torch_device = torch.device(wanted)
        self.device = str(self._torch_device)
        self.module = module if wanted == "cpu" else module.to(self._torch_device)
        self.spec = spec
        self.dtype = module_dtype(self.module)
        self._float_dtype = getattr(torch, self.dtype)
        self._input_names = [t.name for t in spec.inputs]

    def describe(self) -> dict[str, Any]:
        """torch's version and how the module runs: weight dtype, threads, device (read back from torch)."""
        import torch

        return {
            "name": "torch",
            "version": str(torch.__version__),
            "settings": {
                "dtype": self.dtype,
                "threads": int(torch.get_num_threads()),
                "interop_threads": int(torch.get_num_interop_threads()),
                "device": self.device,
                "mode": "eager, inference_mode",
            },
        }

    def _tensor(self, array: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array))
        if t.is_floating_point() and t.dtype != self._float_dtype:
            t = t.to(self._float_dtype)
        return t.to(self._torch_device)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self._input_names if n not in feeds]
        if missing and len(self._input_names) == 1:
            raise ArtifactError(f"missing input {missing[0]!r}")
        tensors = {k: self._tensor(v) for k, v in feeds.items() if k in self._input_names}
        with torch.inference_mode():
            if len(self._input_names) == 1:
                out = self.module(tensors[self._input_names[0]])
            else:
                out = self.module(**tensors)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, tuple | list):
            out = out[0]
        return {self.spec.output_name: out.detach().float().cpu().numpy()}
