#!/usr/bin/env bash
# Install wrk, the compiled HTTP load generator bench/serve_load.py uses for its closed loop (a Python client
# tops out near one core and would be the bottleneck). A bench-only tool: modelyard never needs it.
# Debian/Ubuntu package `wrk` (4.1.0 on Debian 12); needs root or sudo.
#
# Usage: bash bench/setup_wrk.sh
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    echo "wrk is installed: $(wrk -v 2>&1 | head -n 1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install wrk with your system's package manager (https://github.com/wg/wrk)" >&2
    exit 1
fi
sudo=""
if [[ "$(id -u)" != "0" ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: installing wrk needs root; run as root or install sudo" >&2
        exit 1
    fi
    sudo="sudo"
fi
$sudo apt-get update
$sudo apt-get install -y wrk
echo "wrk installed: $(wrk -v 2>&1 | head -n 1)"
