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
peer=kserve label=KServe module=kserve
packages=("kserve==0.21.*" "protobuf<7")
shown="kserve fastapi uvicorn protobuf onnxruntime numpy tokenizers"
source "$(dirname "${BASH_SOURCE[0]}")/peer_venv.sh"
