#!/usr/bin/env bash
# Create bench/.venv-litserve: the separate virtual environment in which bench/serve_peers.py runs the
# LitServe peer for bench/serve_load.py.
#
# Why a second venv: LitServe is only a point of comparison, never a dependency of modelyard, and it brings
# its own FastAPI/uvicorn/pyzmq requirements. onnxruntime, numpy and tokenizers are pinned to the main
# venv's versions (requirements.lock) so that the peer runs the same ONNX file with the same ONNX Runtime
# release and tokenizes like modelyard does; LitServe itself is the latest release.
#
# Usage: bash bench/setup_litserve.sh            (create it if missing)
#        bash bench/setup_litserve.sh --force    (delete and re-create it)
#        PYTHON=/path/to/python3.11 bash bench/setup_litserve.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-litserve"
lock="$here/../requirements.lock"
python="${PYTHON:-python3.11}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash bench/setup_litserve.sh [--force]" >&2
    exit 2
fi

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import litserve, onnxruntime, tokenizers" 2>/dev/null; then
    echo "bench/.venv-litserve already has LitServe; pass --force to re-create it"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

# The main venv's pins, read from the lock so that the two never drift apart.
pin() {
    local line
    line="$(grep -i -E "^$1==" "$lock" || true)"
    if [[ -z "$line" ]]; then
        echo "error: $1 is not pinned in requirements.lock" >&2
        exit 1
    fi
    echo "$line"
}
pins=("$(pin onnxruntime)" "$(pin numpy)" "$(pin tokenizers)")

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install litserve "${pins[@]}"

"$venv/bin/python" - <<'PY'
from importlib.metadata import version

names = ("litserve", "fastapi", "uvicorn", "onnxruntime", "numpy", "tokenizers")
print("bench/.venv-litserve ready: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
