#!/usr/bin/env bash
# Shared body of bench/setup_<peer>.sh: create bench/.venv-<peer>, a separate virtual environment for one
# serving peer of bench/serve_load.py, with onnxruntime, numpy and tokenizers pinned to requirements.lock so
# that the peer runs the same ONNX file with the same ONNX Runtime release and tokenizes like modelyard does.
# Sourced after the caller sets: peer (venv suffix), label (shown name), module (import to check),
# packages (array: what to install besides the pins), shown (space-separated distributions to report).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-$peer"
lock="$here/../requirements.lock"
python="${PYTHON:-python3.11}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash bench/setup_$peer.sh [--force]" >&2
    exit 2
fi

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import $module, onnxruntime, tokenizers" 2>/dev/null; then
    echo "bench/.venv-$peer already has $label; pass --force to re-create it"
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
"$venv/bin/python" -m pip install "${packages[@]}" "${pins[@]}"

SHOWN="$shown" PEER="$peer" "$venv/bin/python" - <<'PY'
import os
from importlib.metadata import version

names = os.environ["SHOWN"].split()
print(f"bench/.venv-{os.environ['PEER']} ready: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
