"""Fresh-process memory probe: load one candidate, run one batch, report the peak resident memory.

Run as ``python -m modelyard.evaluate._rss_probe MANIFEST INPUTS [--threads N]`` where MANIFEST is a
candidate's JSON manifest (``Candidate.manifest_json()``) and INPUTS is an ``.npz`` file holding one array
``inputs`` or a ``.json`` file holding a list of texts. ``--empty`` loads nothing and reports the cost of the
interpreter plus this probe's own imports, so readers can subtract it.

The probe prints exactly one line starting with ``MODELYARD_RSS `` followed by JSON::

    {"ok": true, "peak_rss_bytes": int, "source": "VmHWM"|"ru_maxrss", "ru_maxrss_bytes": int,
     "load_peak_rss_bytes": int, "batch": int,
     "modules": {"torch": bool, "onnxruntime": bool, "transformers": bool}}

or ``{"ok": false, "error": "..."}`` with exit status 1. ``peak_rss_bytes`` is this process's high-water
mark of resident memory since it started, interpreter included: ``VmHWM`` on Linux (see ``peak_rss`` for
why not ``ru_maxrss``), ``ru_maxrss`` elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate

MARKER = "MODELYARD_RSS "
HEAVY_MODULES = ("torch", "onnxruntime", "transformers")


def ru_maxrss_bytes() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (Linux reports KiB, macOS bytes)."""
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss() -> tuple[int, str]:
    """This process's peak resident memory so far, in bytes, and where the figure comes from.

    On Linux ``ru_maxrss`` is NOT fresh in a child process: the kernel carries the parent's high-water mark
    across fork/vfork + exec, so a probe started from a process that had imported torch would report the
    parent's peak. The ``VmHWM`` line of ``/proc/self/status`` belongs to the new address space made at exec,
    so it is used where it exists; elsewhere ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    return int(parts[1]) * 1024, "VmHWM"
    return ru_maxrss_bytes(), "ru_maxrss"


def _report(**extra: Any) -> dict[str, Any]:
    peak, source = peak_rss()
    return {
        "ok": True,
        "peak_rss_bytes": peak,
        "source": source,
        "ru_maxrss_bytes": ru_maxrss_bytes(),
        "modules": {m: m in sys.modules for m in HEAVY_MODULES},
        **extra,
    }


def read_inputs(path: Path) -> Any:
    """A numeric array from ``.npz`` (key ``inputs``) or a list of texts from ``.json``."""
    if path.suffix == ".json":
        texts = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{path} must hold a JSON list of strings")
        return texts
    with np.load(path, allow_pickle=False) as data:
        return data["inputs"]


def probe(manifest: Path, inputs_path: Path, threads: int | None) -> dict[str, Any]:
    cand = Candidate.from_dict(json.loads(manifest.read_text(encoding="utf-8")))
    inputs = read_inputs(inputs_path)
    runner = cand.load(threads=threads)
    load_peak, _ = peak_rss()
    feeds = cand.preprocessor()(inputs)
    runner.run(feeds)
    return _report(load_peak_rss_bytes=load_peak, batch=len(inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelyard.evaluate._rss_probe", description=__doc__)
    parser.add_argument("manifest", nargs="?", type=Path, help="candidate manifest (JSON)")
    parser.add_argument("inputs", nargs="?", type=Path, help="inputs: .npz with 'inputs', or .json texts")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--empty", action="store_true", help="load nothing; report the probe's own cost")
    args = parser.parse_args(argv)
    try:
        if args.empty:
            result: dict[str, Any] = _report()
        elif args.manifest is None or args.inputs is None:
            result = {"ok": False, "error": "usage: _rss_probe MANIFEST INPUTS [--threads N] | --empty"}
        else:
            result = probe(args.manifest, args.inputs, args.threads)
    except Exception as exc:  # report any failure as data; the parent turns it into UNKNOWN
        text = str(exc).strip()
        first = text.splitlines()[0][:500] if text else ""
        result = {"ok": False, "error": f"{type(exc).__name__}: {first}" if first else type(exc).__name__}
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
