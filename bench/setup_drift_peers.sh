#!/usr/bin/env bash
# Create the two virtual environments in which bench/drift_peers.py runs the drift peers of bench/drift.py:
#
#   bench/.venv-evidently   Evidently 0.7.x (DataDriftPreset)
#   bench/.venv-nannyml     NannyML 0.13.x (UnivariateDriftCalculator, CBPE)
#
# Why separate venvs: they are benchmark peers only, never dependencies of modelyard, and they are heavy
# (~1 GB and ~2 GB: NannyML pulls lightgbm, FLAML, xgboost with a CUDA NCCL wheel and plotting stacks).
# `pip install evidently` resolves pandas 3, on which Evidently 0.7's import fails, so pandas is pinned
# below 3. NannyML imports statsmodels without declaring it, so statsmodels is installed beside it.
#
# NannyML sends usage analytics (Segment) unless NML_DISABLE_USAGE_LOGGING is set: this script sets it
# before its import check, and bench/drift_peers.py sets it before importing nannyml.
#
# Usage: bash bench/setup_drift_peers.sh                    (create both if missing)
#        bash bench/setup_drift_peers.sh evidently|nannyml  (only one)
#        bash bench/setup_drift_peers.sh [NAME] --force     (delete and re-create)
#        PYTHON=/path/to/python3.11 bash bench/setup_drift_peers.sh
set -euo pipefail
export NML_DISABLE_USAGE_LOGGING=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"

EVIDENTLY_VERSION="0.7.23"
NANNYML_VERSION="0.13.1"

force=0
peers=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        evidently | nannyml) peers+=("$arg") ;;
        *)
            echo "usage: bash bench/setup_drift_peers.sh [evidently|nannyml] [--force]" >&2
            exit 2
            ;;
    esac
done
[[ ${#peers[@]} -eq 0 ]] && peers=(evidently nannyml)

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

setup() {
    local name="$1" module="$2"
    shift 2
    local venv="$here/.venv-$name"
    if [[ $force -eq 1 ]]; then
        rm -rf "$venv"
    elif [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import $module" 2>/dev/null; then
        echo "bench/.venv-$name already has $name; pass --force to re-create it"
        return 0
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install "$@"
    "$venv/bin/python" - "$name" <<'PY'
import sys
from importlib.metadata import version

name = sys.argv[1]
names = {
    "evidently": ("evidently", "pandas", "numpy", "scipy"),
    "nannyml": ("nannyml", "pandas", "numpy", "scipy", "scikit-learn", "statsmodels"),
}[name]
__import__(name)
print(f"bench/.venv-{name} ready: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
}

for peer in "${peers[@]}"; do
    case "$peer" in
        evidently) setup evidently evidently "evidently==$EVIDENTLY_VERSION" "pandas<3" ;;
        nannyml) setup nannyml nannyml "nannyml==$NANNYML_VERSION" statsmodels ;;
    esac
done
