"""Hugging Face Optimum's own ONNX Runtime dynamic-quantization pipeline, run as the benchmark's peer.

Runs INSIDE bench/.venv-optimum (created by bench/setup_optimum.sh), never in modelyard's venv: Optimum's
ONNX package pins transformers<4.58. It does not import modelyard.

What it does, following Optimum's documented recipe:
1. ``ORTModelForFeatureExtraction.from_pretrained(model_dir, export=True)``: Optimum's exporter, task
   feature-extraction (outputs ``last_hidden_state``, token embeddings; pooling is the caller's job);
2. ``ORTQuantizer`` + ``AutoQuantizationConfig.<isa>(is_static=False, per_channel=False)``, where <isa> is
   picked from this CPU's flags: avx512_vnni, else avx512, else avx2 (per-tensor, as Optimum's quantization
   guide writes it);
3. the same with ``per_channel=True`` (the constructors' own default), so the benchmark can compare like for
   like with our per-channel int8.

Output, under ``--out`` (default bench/out/optimum/): ``export/`` (Optimum's fp32 export),
``model_quantized.onnx`` (the default, per-tensor int8 model), ``per_channel/model_quantized.onnx`` and
``peer.json`` (versions, chosen configurations, timings).

Usage: bench/.venv-optimum/bin/python bench/optimum_peer.py --model-dir DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "optimum"
PACKAGES = ("optimum", "optimum-onnx", "transformers", "tokenizers", "torch", "onnxruntime", "onnx")


def cpu_flags() -> set[str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def pick_config(flags: set[str]) -> str:
    """The AutoQuantizationConfig constructor that fits this CPU (Optimum's docs name one per ISA)."""
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    raise SystemExit(
        "error: this CPU has no AVX2; Optimum's x86 dynamic-quantization configs target AVX2 or AVX-512"
    )


def run(model_dir: Path, out: Path) -> dict[str, Any]:
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"error: {model_dir} is not a Hugging Face model folder (no config.json)")
    if out.exists():
        shutil.rmtree(out)
    export_dir = out / "export"
    t0 = time.perf_counter()
    model = ORTModelForFeatureExtraction.from_pretrained(str(model_dir), export=True)
    model.save_pretrained(str(export_dir))
    export_s = time.perf_counter() - t0

    isa = pick_config(cpu_flags())
    quantizer = ORTQuantizer.from_pretrained(str(export_dir))
    made: dict[bool, tuple[Any, Path, float]] = {}
    for per_channel, save_dir in ((False, out), (True, out / "per_channel")):
        qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=per_channel)
        t0 = time.perf_counter()
        quantizer.quantize(quantization_config=qconfig, save_dir=str(save_dir))
        produced = sorted(save_dir.glob("*quantized*.onnx"))
        if len(produced) != 1:
            raise SystemExit(
                f"error: expected one quantized ONNX file in {save_dir}, found {[p.name for p in produced]}"
            )
        made[per_channel] = (qconfig, produced[0], time.perf_counter() - t0)
    qconfig, int8_file, quantize_s = made[False]

    return {
        "tool": "optimum",
        "versions": {n: version(n) for n in PACKAGES},
        "python": platform.python_version(),
        "model_dir": str(model_dir),
        "export": "ORTModelForFeatureExtraction.from_pretrained(export=True)",
        "quantization": f"AutoQuantizationConfig.{isa}(is_static=False, per_channel=False)",
        "quantization_config": {
            "isa": isa,
            "format": str(qconfig.format),
            "mode": str(qconfig.mode),
            "activations_dtype": str(qconfig.activations_dtype),
            "weights_dtype": str(qconfig.weights_dtype),
            "per_channel": bool(qconfig.per_channel),
            "reduce_range": bool(qconfig.reduce_range),
            "operators_to_quantize": list(qconfig.operators_to_quantize or []),
        },
        "fp32_file": str(export_dir / "model.onnx"),
        "int8_file": str(int8_file),
        "int8_per_channel_file": str(made[True][1]),
        "quantization_per_channel": f"AutoQuantizationConfig.{isa}(is_static=False, per_channel=True)",
        "output": "last_hidden_state (token embeddings; mean pooling + L2 normalize are the caller's)",
        "export_s": round(export_s, 2),
        "quantize_s": round(quantize_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out.resolve()
    manifest = run(args.model_dir.resolve(), out)
    (out / "peer.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"optimum peer: {manifest['quantization']} -> {manifest['int8_file']} "
        f"(export {manifest['export_s']} s, quantize {manifest['quantize_s']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
