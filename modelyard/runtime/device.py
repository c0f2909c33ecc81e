"""Device and CPU facts: thread counts, instruction sets, GPU availability."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model and the instruction sets that decide whether int8 pays off (AVX2, AVX-512, VNNI, AMX)."""
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


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch missing or broken
        return False
