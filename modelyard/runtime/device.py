"""Device and CPU facts: thread counts, instruction sets, GPU availability, and the device choice.

The choice is the policy's ``[hardware] target`` ("cpu" or "gpu"); :func:`resolve_device` turns it into the
device a Runner is asked for ("cpu", "cuda:0"), and every Runner reports the device it actually runs on in its
``device`` attribute. :func:`gpu_runtime` says whether a GPU runtime is usable here and why not;
:func:`check_target` turns a GPU target on a machine without one into a one-line ConfigError."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, first_line


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model and the instruction sets that decide whether int8 pays off (AVX2, AVX-512, VNNI, AMX) and
    whether bf16 inference runs natively (``bf16``: AVX512_BF16 or AMX-BF16)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "model name" and value.strip():
                model = value.strip()
    isa = {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_int8" in flags or "amx_tile" in flags,
        "bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "neon_dotprod": "asimddp" in flags,
    }
    if isa["amx"] or isa["vnni"] or isa["neon_dotprod"]:
        note = (
            "This CPU has int8 dot-product instructions (VNNI/AMX/dot-product): int8 can pay off, "
            "most for large matrix multiplies; small models are dominated by per-call overhead."
        )
    else:
        note = (
            "This CPU has no VNNI, AMX or dot-product instructions: int8 matrix multiplies gain little "
            "here and can be slower than fp32; keep int8 only where it is measured faster."
        )
    return {
        "cpu": model,
        "cores": default_threads(),
        "machine": platform.machine(),
        "isa": isa,
        "int8_note": note,
    }


# ---------------------------------------------------------------------------------------------------
# device choice: "cpu" or "gpu" (the policy's [hardware] target), resolved to "cpu" or "cuda:N"

GPU_FIX = (
    "run on a machine with a CUDA GPU and a CUDA build of torch or onnxruntime (onnxruntime-gpu), "
    'or set target = "cpu" in the policy\'s [hardware] section'
)


def resolve_device(choice: str) -> str:
    """The device a Runner is asked to run on: ``"cpu"`` -> ``"cpu"``; ``"gpu"`` or ``"cuda"`` ->
    ``"cuda:0"``; ``"cuda:N"`` -> itself. Anything else is a ConfigError."""
    text = str(choice).strip().lower()
    if text == "cpu":
        return "cpu"
    if text in ("gpu", "cuda"):
        return "cuda:0"
    head, _, index = text.partition(":")
    if head == "cuda" and index.isdigit():
        return f"cuda:{int(index)}"
    raise ConfigError(f"device must be 'cpu', 'gpu' or 'cuda:N' (N a GPU index), got {choice!r}")


def device_index(device: str) -> int:
    """N of ``"cuda:N"`` (0 for ``"cpu"``)."""
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


@dataclass(frozen=True)
class GpuRuntime:
    """Whether a GPU runtime is usable here: torch with CUDA, or ONNX Runtime's CUDA execution provider able
    to open a session on a device; ``why_not`` says what is missing for each runtime (empty when usable)."""

    torch_cuda: bool
    ort_cuda: bool
    torch_note: str
    ort_note: str

    @property
    def usable(self) -> bool:
        return self.torch_cuda or self.ort_cuda

    @property
    def why_not(self) -> str:
        if self.usable:
            return ""
        return f"{self.torch_note}; {self.ort_note}"

    def reaches(self, fmt: str) -> bool:
        """Whether the runtime of a candidate format can use the GPU (ONNX Runtime for "onnx", torch for
        "torch" and "hf"; the OpenVINO runner runs on the CPU only)."""
        if fmt == "openvino":
            return False
        return self.ort_cuda if fmt == "onnx" else self.torch_cuda

    def note_for(self, fmt: str) -> str:
        if fmt == "openvino":
            return "the OpenVINO runner runs on the CPU only"
        return self.ort_note if fmt == "onnx" else self.torch_note


def _torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except Exception as exc:  # torch missing or broken
        return False, f"torch cannot be imported ({first_line(exc)})"
    try:
        if torch.cuda.is_available():
            return True, f"torch {torch.__version__} sees {torch.cuda.device_count()} CUDA device(s)"
    except Exception as exc:  # pragma: no cover - a broken CUDA driver
        return False, f"torch's CUDA check failed ({first_line(exc)})"
    if getattr(torch.version, "cuda", None) is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    return False, f"torch {torch.__version__} is a CUDA build but sees no CUDA device"


def _tiny_onnx_model() -> bytes:
    """An Identity graph, serialised: enough for ONNX Runtime to place a session on a device."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _ort_cuda() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # onnxruntime missing or broken
        return False, f"onnxruntime cannot be imported ({first_line(exc)})"
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return False, (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has {', '.join(available)})"
        )
    try:  # the provider is built in; can it open a session on a device?
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(
            _tiny_onnx_model(), sess_options=so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        used = sess.get_providers()
    except Exception as exc:
        return False, f"onnxruntime's CUDAExecutionProvider cannot open a session ({first_line(exc)})"
    if "CUDAExecutionProvider" not in used:
        return False, "onnxruntime's CUDAExecutionProvider is built in but sees no CUDA device"
    return True, f"onnxruntime {ort.__version__} runs sessions on CUDAExecutionProvider"


@lru_cache(maxsize=1)
def gpu_runtime() -> GpuRuntime:
    """Probe once per process whether torch or ONNX Runtime can run on a CUDA GPU here, and why not."""
    torch_ok, torch_note = _torch_cuda()
    ort_ok, ort_note = _ort_cuda()
    return GpuRuntime(torch_ok, ort_ok, torch_note, ort_note)


def check_target(target: str) -> None:
    """Raise a one-line ConfigError when ``target`` is "gpu" and no GPU runtime is usable on this machine."""
    if resolve_device(target) == "cpu":
        return
    status = gpu_runtime()
    if not status.usable:
        raise ConfigError(
            f'policy [hardware] target = "gpu" but no GPU runtime is usable on this machine '
            f"({status.why_not}); {GPU_FIX}"
        )
