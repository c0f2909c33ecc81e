#!/usr/bin/env bash
# Create bench/.venv-optimum: the separate virtual environment in which bench/optimum_peer.py runs
# Hugging Face Optimum's ONNX export and dynamic quantization for bench/optimize_minilm.py.
#
# Why a second venv: optimum-onnx[onnxruntime] 0.1.0 requires transformers<4.58, while modelyard uses
# transformers 5.x; installing it into the main venv would downgrade transformers, tokenizers and
# huggingface_hub. Optimum only *produces* the int8 ONNX file here; the benchmark times that file with
# the same ONNX Runtime code (main venv) as every other config.
#
# torch is pinned exactly: a looser requirement lets pip pick a multi-GB CUDA build; 2.13.0 resolves to
# the CPU wheel that pip finds in its local find-links folder. onnxruntime and onnx are pinned to the
# main venv's versions so both venvs quantize with the same ONNX Runtime release.
#
# Usage: bash bench/setup_optimum.sh            (create it if missing)
#        bash bench/setup_optimum.sh --force    (delete and re-create it)
#        PYTHON=/path/to/python3.11 bash bench/setup_optimum.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-optimum"
python="${PYTHON:-python3.11}"

TORCH_VERSION="2.13.0"
OPTIMUM_ONNX_VERSION="0.1.0"
ORT_VERSION="1.32.0"
ONNX_VERSION="1.23.2"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash bench/setup_optimum.sh [--force]" >&2
    exit 2
fi

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import optimum.onnxruntime" 2>/dev/null; then
    echo "bench/.venv-optimum already has Optimum; pass --force to re-create it"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install \
    "torch==$TORCH_VERSION" \
    "optimum-onnx[onnxruntime]==$OPTIMUM_ONNX_VERSION" \
    "onnxruntime==$ORT_VERSION" \
    "onnx==$ONNX_VERSION"

"$venv/bin/python" - <<'EOF'
from importlib.metadata import version

names = ("optimum", "optimum-onnx", "transformers", "tokenizers", "torch", "onnxruntime", "onnx")
print("bench/.venv-optimum ready: " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
