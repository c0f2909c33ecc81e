"""Ray on the digits demo: candidate search locally vs on Ray with 1 and 2 workers, and serving throughput of
one Ray Serve replica vs the single-process server.

Search: each figure is the wall time of ``run_pipeline`` (audits, builds, checks, timing checks on the
driver, report; not registered) on the digits demo. A Ray run starts a local Ray (127.0.0.1, no dashboard)
with 1 or 2 CPUs, one CPU per task, so 1 or 2 tasks run at once; Ray's start-up is timed apart and excluded
from the Ray figures. The three configurations run interleaved, ``--repeats`` times (the order rotates each
repeat so none always runs first), after one untimed local search that pays the one-time costs (imports,
first calls); the report gives medians and their ratios.

Serving: the digits champion (ONNX, registered by the demo's pipeline into bench/out/ray_scale/home) served
by ``modelyard serve`` (one process: HTTP, batching and ONNX Runtime with all cores as threads) and by
``modelyard serve --ray auto --replicas 1 --replica-cpus N`` (Ray's HTTP proxy in its own process, one
replica with N CPUs and N threads, N = this machine's cores; Ray's GCS, raylet and Serve controller run
beside them), each started fresh, one at a time, alternating ``--repeats`` times. The load is
bench/serve_load.py's closed-loop client (C workers, one connection each, one 8x8 image per OIP JSON
request) for a warm-up and a measured window per concurrency. Before measuring, the first answers of both
servers are compared. ``serve_replica_vs_local`` is the replica's median throughput over the local
server's at the highest concurrency.

Ray needs a network namespace with only loopback up (it probes a public address otherwise): the script
re-executes itself under ``unshare -n`` (root) unless it already runs in one.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/ray_scale.py [--recipe R ...] [--full] [--repeats N]
Ends with one JSON line: {"bench": "ray_scale", "local_s", "ray1_s", "ray2_s", "ray_startup_s",
"serve_replica_vs_local", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OtherLoad, json_line, log, markdown_table, rounded

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WORK = OUT / "ray_scale"
SERVE_HOME = OUT / "serve_load" / "home"
INSIDE = "MODELYARD_BENCH_NETNS"
SEARCHES = ("local", "ray1", "ray2")
SERVERS = ("local", "ray")
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 90.0
CHECK_ITEMS = 8


def _reexec() -> int:
    """This script again, inside a fresh network namespace with only loopback up."""
    args = " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
    env = {**os.environ, INSIDE: "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {args}"], env=env
    ).returncode


def _load() -> str:
    """The machine's 1-minute load average and core count, for the report."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "unknown"
    return f"{one:.2f} (1-min load average) on {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------------
# candidate search: local, Ray with 1 worker, Ray with 2 workers


@dataclass
class Search:
    seconds: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


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
            progress=lambda msg, _a: None,
        )
        return time.perf_counter() - t0, startup_s


def run_searches(args: argparse.Namespace) -> dict[str, Search]:
    results = {name: Search() for name in SEARCHES}
    cpus = {"local": None, "ray1": 1, "ray2": 2}
    meter = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as tmp:
        home = Path(tmp)
        from modelyard.zoo.demos import load_demo

        load_demo("digits", home)  # trained before any timing
        log("  warm-up: one untimed local search (imports and first-call costs paid before any timing) ...")
        _search(home, args.recipe, True, None)
        for r in range(args.repeats):
            order = SEARCHES[r % 3 :] + SEARCHES[: r % 3]  # rotate: none always runs first
            for name in order:
                start = meter.snapshot()
                seconds, startup_s = _search(home, args.recipe, not args.full, cpus[name])
                res = results[name]
                res.seconds.append(seconds)
                res.other_cores.append(meter.cores_since(start))
                if cpus[name] is not None:
                    res.startup_s.append(startup_s)
                extra = f" (Ray start-up {startup_s:.1f} s apart)" if cpus[name] is not None else ""
                log(f"  search {r + 1}/{args.repeats} {name}: {seconds:.1f} s{extra}")
    return results


# ---------------------------------------------------------------------------------------------------
# serving: one Ray Serve replica vs the single-process server, under the same closed-loop load


@dataclass
class Served:
    rps: dict[int, list[float]] = field(default_factory=dict)  # concurrency -> throughput per repeat
    p50_ms: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0
    ready_s: list[float] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    why_not: str = ""


def _servers(prepared: Any, port: int, home: Path, cores: int, log_db: Path) -> dict[str, Any]:
    """bench/serve_load.py's ``ours`` server, and the same command on Ray Serve with one replica; both write
    their prediction log to ``log_db`` (a fresh file per start)."""
    import dataclasses

    from serve_procs import make_servers

    peers = argparse.Namespace(
        litserve_max_batch_size=8, litserve_batch_timeout_s=0.0, litserve_workers=1, ours_why_not=""
    )
    ours = make_servers(prepared, port, peers, home)["ours"]
    local_argv = [*ours.argv, "--monitor-db", str(log_db)]
    ray_argv = [*local_argv, "--ray", "auto", "--replicas", "1", "--replica-cpus", str(cores)]
    # Ray 2.60's experimental HAProxy ingress: HAProxy forwards HTTP to the replica's own port (bound on every
    # interface), bypassing the Python proxy; measured for comparison only, `modelyard serve` does not turn it on
    haproxy_env = {**ours.env, "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    return {
        "local": dataclasses.replace(ours, argv=local_argv),
        "ray": dataclasses.replace(ours, name="ray", argv=ray_argv),
        "ray-haproxy": dataclasses.replace(ours, name="ray-haproxy", argv=ray_argv, env=haproxy_env),
    }


def _first_answers(run: Any, n: int) -> list[Any]:
    import httpx

    url = run.base + run.server.infer_path
    with httpx.Client(timeout=30) as client:
        return [run.server.read(client.post(url, content=body).content) for body in run.server.bodies[:n]]


def _stop(run: Any) -> None:
    """SIGTERM to the server's main process only (the Ray driver then shuts Serve and Ray down), then the
    process group for whatever is left."""
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log("    the server did not stop within the deadline; killing its process group")
    run.stop()


def run_serving(args: argparse.Namespace) -> tuple[dict[str, Served], dict[str, Any]]:
    import numpy as np
    from loadgen import closed_loop
    from serve_load import prepare
    from serve_procs import Running, free_port

    home = args.home.resolve()
    prepared = prepare("digits", home)
    cores = os.cpu_count() or 1
    servers = (*SERVERS, "ray-haproxy") if args.haproxy else SERVERS
    results = {name: Served() for name in servers}
    answers: dict[str, list[Any]] = {}
    for r in range(args.repeats):
        order = servers if r % 2 == 0 else servers[::-1]
        for name in order:
            res = results[name]
            if res.why_not:
                continue
            port = free_port()
            log_db = WORK / "monitor" / f"{name}-r{r + 1}.db"
            log_db.parent.mkdir(parents=True, exist_ok=True)
            log_db.unlink(missing_ok=True)
            server = _servers(prepared, port, home, cores, log_db)[name]
            log(f"  serving {r + 1}/{args.repeats}: {name} on port {port}")
            run = Running(server, port, WORK / "logs" / f"{name}-r{r + 1}.log")
            try:
                t0 = time.perf_counter()
                run.wait_ready(READY_TIMEOUT_S)
                res.ready_s.append(time.perf_counter() - t0)
                answers.setdefault(name, _first_answers(run, CHECK_ITEMS))
                for c in args.concurrency:
                    w = asyncio.run(
                        closed_loop(run, c, warmup_s=args.warmup_s, window_s=args.window_s, timeout_s=30.0)
                    )
                    res.rps.setdefault(c, []).append(w.rps)
                    res.p50_ms.setdefault(c, []).append(
                        statistics.median(w.latencies_ms) if w.latencies_ms else float("nan")
                    )
                    res.errors += w.errors
                    res.client_cores.append(w.client_cores)
                    res.other_cores.append(w.other_cores)
                    log(f"    C={c}: {w.rps:,.0f} req/s, others {w.other_cores:.2f} cores")
            except RuntimeError as exc:
                res.why_not = f"failed: {exc}"
                log(f"    {name} {res.why_not}")
            finally:
                _stop(run)
    same = None  # every server's first answers equal the single-process server's
    if "local" in answers and len(answers) > 1:
        same = all(
            np.allclose(a, b, rtol=0, atol=1e-6)
            for other in answers.values()
            for a, b in zip(answers["local"], other, strict=True)
        )
    info = {"model": f"{prepared.name} v{prepared.version}", "cores": cores, "same_answers": same}
    return results, info


# ---------------------------------------------------------------------------------------------------
# report


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _search_report(searches: dict[str, Search], cores: int) -> tuple[list[str], dict[str, Any]]:
    local_s, ray1_s, ray2_s = (searches[n].median for n in SEARCHES)
    startups = searches["ray1"].startup_s + searches["ray2"].startup_s
    given = {
        "local": f"no Ray: this process, threads = {cores} cores",
        "ray1": "local Ray with 1 CPU: 1 task at a time, 1 CPU (1 thread) per task",
        "ray2": "local Ray with 2 CPUs: 2 tasks at a time, 1 CPU (1 thread) per task",
    }
    rows = [
        [
            name,
            given[name],
            f"{searches[name].median:.1f}",
            " / ".join(f"{s:.1f}" for s in searches[name].seconds),
            f"{max(searches[name].other_cores):.2f}",
        ]
        for name in SEARCHES
    ]
    lines = [
        "## Candidate search on the digits demo (seconds, Ray start-up excluded)",
        "",
        markdown_table(
            ["run", "given", "median s", "each repeat s", "most other load (cores)"], rows, align="llrrr"
        ),
        "",
        f"Ray start-up (ray.init), apart: median {statistics.median(startups):.1f} s over {len(startups)} starts. "
        "Timing checks run on the driver in every configuration.",
        f"Ray 1 worker / local: {ray1_s / local_s:.3f} (target <= 1.15); "
        f"Ray 2 workers / Ray 1 worker: {ray2_s / ray1_s:.3f} (target < 1).",
    ]
    payload = {
        "local_s": rounded(local_s, 2),
        "ray1_s": rounded(ray1_s, 2),
        "ray2_s": rounded(ray2_s, 2),
        "ray_startup_s": rounded(statistics.median(startups), 2),
        "ray1_vs_local": rounded(ray1_s / local_s, 3),
        "ray2_vs_ray1": rounded(ray2_s / ray1_s, 3),
    }
    return lines, payload


def _serve_report(
    args: argparse.Namespace, served: dict[str, Served], info: dict[str, Any], cores: int
) -> tuple[list[str], dict[str, Any]]:
    top = max(args.concurrency)
    given = {
        "local": f"`modelyard serve`: one process (HTTP + batching + ONNX Runtime, {cores} threads)",
        "ray": f"`modelyard serve --ray auto`: the same app in 1 replica x {cores} CPUs ({cores} threads); "
        "Ray's HTTP proxy, Serve controller, GCS and raylet beside it",
        "ray-haproxy": "the same with RAY_SERVE_ENABLE_HA_PROXY=1 (Ray's experimental HAProxy ingress straight to "
        "the replica's HTTP port; not what `modelyard serve --ray` runs)",
    }
    rows = []
    for name in served:
        res = served[name]
        if res.why_not:
            rows.append([name, given[name], res.why_not, "", "", ""])
            continue
        for c in args.concurrency:
            first = c == args.concurrency[0]
            rows.append(
                [
                    name if first else "",
                    given[name] if first else "",
                    str(c),
                    f"{_med(res.rps.get(c, [])) or 0:,.0f}",
                    " / ".join(f"{v:,.0f}" for v in res.rps.get(c, [])),
                    f"{_med(res.p50_ms.get(c, [])) or float('nan'):.1f}",
                ]
            )
    local_rps = _med(served["local"].rps.get(top, []))
    ray_rps = _med(served["ray"].rps.get(top, []))
    ratio = _ratio(ray_rps, local_rps)
    both = served["local"], served["ray"]
    lines = [
        f"## Serving {info['model']}: one Ray Serve replica vs the single-process server",
        "",
        f"Closed loop, one 8x8 image per OIP JSON request, {args.warmup_s:g} s warm-up + {args.window_s:g} s window "
        "per concurrency C; the client (bench/loadgen.py) in this process; each server started fresh, "
        "alternated.",
        "",
        markdown_table(
            ["server", "given", "C", "median req/s", "each repeat req/s", "median p50 ms"],
            rows,
            align="llrrrr",
        ),
        "",
        f"Ready after start (median): local {_med(both[0].ready_s) or 0:.1f} s, Ray Serve "
        f"{_med(both[1].ready_s) or 0:.1f} s. Failed requests: local {both[0].errors}, Ray {both[1].errors}. "
        f"Same first {CHECK_ITEMS} answers from every server as from local: {info['same_answers']}. Most other load in a window: "
        f"{max(both[0].other_cores + both[1].other_cores, default=0.0):.2f} cores; the client used up to "
        f"{max(both[0].client_cores + both[1].client_cores, default=0.0):.2f} cores.",
        f"Replica / single process at C={top}: {ratio:.3f} (target >= 0.8)."
        if ratio is not None
        else "Replica / single process: not measured.",
    ]
    payload = {
        "serve_replica_vs_local": rounded(ratio, 3),
        "serve_local_rps": rounded(local_rps, 1),
        "serve_replica_rps": rounded(ray_rps, 1),
        "serve_concurrency": top,
        "serve_same_answers": info["same_answers"],
    }
    if "ray-haproxy" in served:
        haproxy = _ratio(_med(served["ray-haproxy"].rps.get(top, [])), local_rps)
        lines.append(
            f"With Ray's HAProxy ingress instead of its Python proxy: {haproxy or float('nan'):.3f}."
        )
        payload["serve_haproxy_replica_vs_local"] = rounded(haproxy, 3)
    return lines, payload


def report(
    args: argparse.Namespace,
    searches: dict[str, Search] | None,
    served: dict[str, Served] | None,
    info: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    cores = os.cpu_count() or 1
    lines = [
        "# bench/ray_scale.py",
        "",
        f"Machine: {cores} cores; load at start {info['load_start']}, at end {_load()}. "
        f"Mode: {'full' if args.full else 'quick'}, {args.repeats} repeat(s), interleaved.",
    ]
    payload: dict[str, Any] = {
        "bench": "ray_scale",
        "local_s": None,
        "ray1_s": None,
        "ray2_s": None,
        "ray_startup_s": None,
        "serve_replica_vs_local": None,
        "repeats": args.repeats,
    }
    for part in (
        _search_report(searches, cores) if searches is not None else None,
        _serve_report(args, served, info, cores) if served is not None else None,
    ):
        if part is not None:
            lines += ["", *part[0]]
            payload.update(part[1])
    return "\n".join(lines) + "\n", payload


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", default=[], help="default: the demo's recipes")
    ap.add_argument("--full", action="store_true", help="full timing repeats (default: quick)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (default 2 with --full, else 1)"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 16 (--full: 1 16)")
    ap.add_argument("--warmup-s", type=float, default=None, help="default 2 (--full: 3)")
    ap.add_argument("--window-s", type=float, default=None, help="default 5 (--full: 10)")
    ap.add_argument(
        "--haproxy",
        action="store_true",
        help="also serve through Ray's experimental HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1), for comparison",
    )
    ap.add_argument("--part", choices=("all", "search", "serving"), default="all", help="default: both parts")
    ap.add_argument(
        "--home",
        type=Path,
        default=SERVE_HOME,
        help="the registry with the digits champion (default: bench/serve_load.py's; built once if missing)",
    )
    args = ap.parse_args()
    args.repeats = args.repeats or (2 if args.full else 1)
    args.concurrency = sorted(args.concurrency or ([1, 16] if args.full else [16]))
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (3.0 if args.full else 2.0)
    args.window_s = args.window_s if args.window_s is not None else (10.0 if args.full else 5.0)
    if args.repeats < 1 or min(args.concurrency) < 1:
        ap.error("--repeats and --concurrency must be >= 1")
    if not os.environ.get(INSIDE):
        return _reexec()
    info: dict[str, Any] = {"load_start": _load()}
    searches = None
    if args.part in ("all", "search"):
        log(f"candidate search: local, Ray 1 worker, Ray 2 workers; {args.repeats} repeat(s) ...")
        searches = run_searches(args)
    served = None
    if args.part in ("all", "serving"):
        log("serving: one Ray Serve replica vs the single-process server ...")
        served, more = run_serving(args)
        info.update(more)
    text, payload = report(args, searches, served, info)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ray_scale.md").write_text(text)
    print(text, flush=True)
    print(json_line(payload), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
