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
peer=litserve label=LitServe module=litserve
packages=(litserve)
shown="litserve fastapi uvicorn onnxruntime numpy tokenizers"
source "$(dirname "${BASH_SOURCE[0]}")/peer_venv.sh"
