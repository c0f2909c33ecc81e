#!/usr/bin/env bash
# Create bench/.venv-kserve: the separate virtual environment in which bench/serve_peers.py runs the KServe
# peer for bench/serve_load.py (KServe's Python model server, without Kubernetes, on 127.0.0.1).
#
# Why a second venv: KServe is only a point of comparison, never a dependency of modelyard, and it pins its
# own FastAPI/uvicorn/grpcio/protobuf. onnxruntime, numpy and tokenizers are pinned to the main venv's
# versions (requirements.lock) so that the peer runs the same ONNX file with the same ONNX Runtime release
# and tokenizes like modelyard does; protobuf stays below 7 (kserve's generated gRPC code needs it).
#
# Usage: bash bench/setup_kserve.sh            (create it if missing)
#        bash bench/setup_kserve.sh --force    (delete and re-create it)
#        PYTHON=/path/to/python3.11 bash bench/setup_kserve.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-kserve"
lock="$here/../requirements.lock"
python="${PYTHON:-python3.11}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash bench/setup_kserve.sh [--force]" >&2
    exit 2
fi

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import kserve, onnxruntime, tokenizers" 2>/dev/null; then
    echo "bench/.venv-kserve already has KServe; pass --force to re-create it"
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
"$venv/bin/python" -m pip install "kserve==0.21.*" "protobuf<7" "${pins[@]}"

"$venv/bin/python" - <<'PY'
from importlib.metadata import version

names = ("kserve", "fastapi", "uvicorn", "protobuf", "onnxruntime", "numpy", "tokenizers")
print("bench/.venv-kserve ready: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
