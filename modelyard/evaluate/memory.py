"""Peak memory: ``efficiency.peak_rss_bytes`` measured in a fresh process.

:func:`measure_peak_rss` writes the candidate's manifest and a batch of sample inputs to a temporary folder
and runs ``python -m modelyard.evaluate._rss_probe`` on them: the probe loads the candidate (on the CPU),
preprocesses and runs the batch, and reports its peak resident memory. The same probe loading nothing gives
the baseline reported beside it. A probe that fails or times out makes the measurement UNKNOWN with the
reason; it never raises.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError
from modelyard.evaluate._inputs import check_positive, error_line, normalize_inputs, tile
from modelyard.evaluate.checkspec import CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.runtime.device import default_threads

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 300.0
PROBE_BATCH = 32

CHECKS = declare(
    CheckSpec(
        "efficiency.peak_rss_bytes",
        "bytes",
        "peak resident memory of a fresh process that loads and runs the model",
        "lower",
        gate=GateSpec(
            "peak_rss", "budgets.max_peak_rss_mb", None, "<=", "memory budget", scale=1 / 2**20, unit="MB"
        ),
    ),
)


def _pythonpath() -> str:
    """PYTHONPATH for the probe: this package's root, the caller's own PYTHONPATH, and the caller's sys.path
    entries outside the Python installation (so a user's model factory module imports there too)."""
    root = str(Path(__file__).resolve().parents[2])
    prefixes = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    entries = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    for p in sys.path:
        if not p or not Path(p).is_dir():
            continue
        rp = str(Path(p).resolve())
        if not any(rp == pre or rp.startswith(pre + os.sep) for pre in prefixes):
            entries.append(rp)
    return os.pathsep.join(dict.fromkeys(entries))


def _run_probe(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run the probe; its JSON result, or ``{"ok": False, "error": reason}``."""
    from modelyard.evaluate._rss_probe import MARKER

    cmd = [sys.executable, "-m", "modelyard.evaluate._rss_probe", *args]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"memory probe timed out after {timeout_s:g} s"}
    except OSError as exc:
        return {"ok": False, "error": f"memory probe could not start {sys.executable}: {exc}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                result = json.loads(line[len(MARKER) :])
            except json.JSONDecodeError:
                break
            if isinstance(result, dict):
                if not result.get("ok"):
                    result = {
                        "ok": False,
                        "error": f"memory probe failed: {result.get('error', 'no reason')}",
                    }
                return result
            break
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
    last = f": {tail[-1][:300]}" if tail else " with no output"
    return {"ok": False, "error": f"memory probe {how}{last}"}


@functools.lru_cache(maxsize=4)
def _empty_probe_rss(timeout_s: float) -> int | None:
    result = _run_probe(["--empty"], timeout_s)
    return int(result["peak_rss_bytes"]) if result.get("ok") else None


def measure_peak_rss(
    candidate: Candidate,
    sample_inputs: Any,
    *,
    threads: int | None = None,
    batch_size: int = PROBE_BATCH,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> Measurement:
    """``efficiency.peak_rss_bytes``: peak resident memory of a fresh process that loads ``candidate`` and
    runs one batch of ``batch_size`` raw inputs (preprocessing included). Never raises for a failing probe:
    the measurement is then UNKNOWN with the reason in ``details["reason"]``."""
    name = "efficiency.peak_rss_bytes"
    check_positive("timeout_s", timeout_s)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    inputs = tile(normalize_inputs(sample_inputs), batch_size)
    base: dict[str, Any] = {
        "method": "peak resident memory (VmHWM on Linux) of a fresh Python process: interpreter start, "
        "imports, load, preprocessing and one batch",
        "batch": batch_size,
        "threads": threads or default_threads(),
        "device": "cpu",  # the probe loads the candidate with Candidate.load's default device
    }
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-rss-") as tmp:
            manifest = candidate.to_dict()
            manifest["path"] = str(Path(candidate.path).resolve())
            if candidate.tokenizer_dir is not None:
                manifest["tokenizer_dir"] = str(Path(candidate.tokenizer_dir).resolve())
            man_path = Path(tmp) / "manifest.json"
            man_path.write_text(json.dumps(manifest), encoding="utf-8")
            if isinstance(inputs, list):
                in_path = Path(tmp) / "inputs.json"
                in_path.write_text(json.dumps(inputs), encoding="utf-8")
            else:
                in_path = Path(tmp) / "inputs.npz"
                np.savez(in_path, inputs=np.asarray(inputs))
            args = [str(man_path), str(in_path)]
            if threads:
                args += ["--threads", str(int(threads))]
            result = _run_probe(args, timeout_s)
    except (OSError, TypeError, ValueError) as exc:
        result = {"ok": False, "error": f"memory probe could not be prepared: {error_line(exc)}"}
    if not result.get("ok"):
        reason = str(result.get("error"))
        log.warning("peak memory of %s is UNKNOWN: %s", candidate.name, reason)
        return measure(name, None, reason=reason, **base)
    empty = _empty_probe_rss(timeout_s)
    peak = int(result["peak_rss_bytes"])
    return measure(
        name,
        peak,
        **base,
        source=str(result.get("source", "")),
        ru_maxrss_bytes=result.get("ru_maxrss_bytes"),
        ru_maxrss_note="not used on Linux: the kernel carries the parent's ru_maxrss across fork+exec, so it "
        "can show the measuring process's peak instead of the probe's",
        load_peak_rss_bytes=result.get("load_peak_rss_bytes"),
        baseline_rss_bytes=empty,
        above_baseline_bytes=(peak - empty) if empty is not None else None,
        baseline_note="baseline_rss_bytes = the same probe loading nothing (interpreter, numpy, modelyard); "
        "subtract it for the model's own cost",
        modules_imported=result.get("modules", {}),
    )
