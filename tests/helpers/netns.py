"""Whether a test can run Ray in a fresh network namespace with only loopback up (``unshare -n``, as root)."""

from __future__ import annotations

import shutil
import subprocess


def namespace_problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"cannot make a network namespace (unshare -n needs root): {probe.stderr.strip()[:200]}"
    return None
