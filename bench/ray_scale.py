"""Candidate search on the digits demo: the plain local run, Ray with 1 worker and Ray with 2 workers.

Each Ray run starts a local Ray (127.0.0.1, no dashboard) with 1 or 2 CPUs, one CPU per task, so 1 or 2 tasks
run at once; Ray's start-up is timed apart and excluded from the Ray figures. Each figure is the wall time of
``run_pipeline`` (audits, builds, checks, timing checks on the driver, report; not registered). The Ray Serve
comparison is not built yet: ``serve_replica_vs_local`` is null.

Ray needs a network namespace with only loopback up (it probes a public address otherwise): the script
re-executes itself under ``unshare -n`` (root) unless it already runs in one.

Run: .venv/bin/python bench/ray_scale.py [--recipe R ...] [--full]
Ends with one JSON line: {"bench": "ray_scale", "local_s", "ray1_s", "ray2_s", "ray_startup_s", ...}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import json_line, log, rounded

INSIDE = "MODELYARD_BENCH_NETNS"


def _reexec() -> int:
    """This script again, inside a fresh network namespace with only loopback up."""
    args = " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
    env = {**os.environ, INSIDE: "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {args}"], env=env
    ).returncode


def _search(home: Path, recipes: list[str], quick: bool, ray_cpus: int | None) -> tuple[float, float]:
    """(seconds of the candidate search, seconds of Ray's start-up) for one run."""
    import contextlib

    from modelyard.config import Settings, load_policy
    from modelyard.evaluate.run import EvalOptions
    from modelyard.pipeline import run_pipeline
    from modelyard.zoo.demos import load_demo

    demo = load_demo("digits", home)
    settings = Settings(home=home)
    with contextlib.ExitStack() as stack:
        executor, startup_s = None, 0.0
        if ray_cpus is not None:
            from modelyard.scale.ray_runner import ray_executor

            executor = stack.enter_context(ray_executor("auto", num_cpus=ray_cpus))
            startup_s = executor.startup_s
        t0 = time.perf_counter()
        run_pipeline(
            demo.baseline,
            demo.dataset,
            model_name=demo.model_name,
            model_source="bench",
            recipes=recipes or demo.default_recipes,
            policy=load_policy(None),
            settings=settings,
            options=EvalOptions.quick() if quick else EvalOptions(),
            register=False,
            executor=executor,
        )
        return time.perf_counter() - t0, startup_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", default=[], help="default: the demo's recipes")
    ap.add_argument("--full", action="store_true", help="full timing repeats (default: --quick)")
    args = ap.parse_args()
    if not os.environ.get(INSIDE):
        return _reexec()
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as tmp:
        home = Path(tmp)
        from modelyard.zoo.demos import load_demo

        load_demo("digits", home)  # trained before any timing
        local_s, _ = _search(home, args.recipe, not args.full, None)
        log(f"local: {local_s:.1f} s")
        ray1_s, startup1_s = _search(home, args.recipe, not args.full, 1)
        log(f"Ray, 1 worker: {ray1_s:.1f} s (start-up {startup1_s:.1f} s apart)")
        ray2_s, startup2_s = _search(home, args.recipe, not args.full, 2)
        log(f"Ray, 2 workers: {ray2_s:.1f} s (start-up {startup2_s:.1f} s apart)")
    payload = {
        "bench": "ray_scale",
        "local_s": rounded(local_s, 2),
        "ray1_s": rounded(ray1_s, 2),
        "ray2_s": rounded(ray2_s, 2),
        "ray_startup_s": rounded((startup1_s + startup2_s) / 2, 2),
        "ray1_vs_local": rounded(ray1_s / local_s, 3),
        "ray2_vs_ray1": rounded(ray2_s / ray1_s, 3),
        "serve_replica_vs_local": None,
    }
    print(json_line(payload), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
