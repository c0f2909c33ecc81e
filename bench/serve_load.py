"""Serving under load: modelyard's server vs the peers a user would deploy instead, on the same load.

Servers (one at a time, each in its own process; bench/serve_peers.py holds the peers):

- ``fastapi``        (a) a plain FastAPI + PyTorch fp32 endpoint written the way a tutorial does it (sync
                     ``def``, ``model(x)`` once per request). It serves the PyTorch fp32 baseline, NOT the
                     champion: the digits demo's baseline weights, or the sentence-transformers folder.
- ``fastapi-async``  (b) a hand-written async FastAPI + ONNX Runtime endpoint serving the champion's ONNX file.
- ``litserve``       (c) LitServe + ONNX Runtime with its batching on, the champion's ONNX file, in
                     bench/.venv-litserve (bench/setup_litserve.sh).
- ``kserve``         (d) KServe 0.21's Python model server (a ``kserve.Model`` over ONNX Runtime, OIP v2 JSON,
                     no Kubernetes, 127.0.0.1), the champion's ONNX file, in bench/.venv-kserve
                     (bench/setup_kserve.sh).
- ``ours``           ``modelyard serve NAME@champion`` (the registry champion, ONNX), OIP v2 JSON, asking for
                     the one output the peers return. Its prediction log is on (the default).
- ``ours-nolog``     the same with ``--no-monitor``; run only when named in ``--servers``.

Models: the digits CNN (one 8x8 image per request) and all-MiniLM-L6-v2 (one sentence per request), from the
built-in demos run through ``run_pipeline`` into a bench home under bench/out/serve_load/ (kept between runs).

Load: closed loop at C = 1, 8, 32, 64 with ``wrk`` (compiled, a separate process, bench/wrk_post.lua) where
it is installed (bench/setup_wrk.sh), else with this process (asyncio + httpx, which tops out near one core);
open loop (Poisson arrivals, latency from each scheduled time) always with this process. Rounds are
interleaved so the machine's drift is shared; each server is warmed up after start and before every window.
Each window records the CPU of the client, the server and every other process; throughput is the median over
the clean rounds (other processes below ``--max-other-load`` cores, else every round, marked †).

Summary: ours / the best peer's req/s at C=32 and ours / that peer's p99 (``*_vs_best_peer``,
``*_p99_ratio``); server overhead: ours at C=32 / the champion Runner offline at our mean batch.

bench/serve_procs.py holds the servers, bench/loadgen.py the load generators, bench/serve_report.py the
tables and the JSON payload; this script prepares the models and runs the rounds.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py [--quick]`` (see bench/README.md). Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import OtherLoad, json_line, log
from loadgen import ServerResult, Wrk, find_wrk, session, wrk_threads
from serve_procs import Prepared, Running, Server, free_port, make_servers, ours_available
from serve_report import CLIENT_BOUND_CORES, ModelResult, model_section, payload

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WORK = OUT / "serve_load"

SERVERS = ("fastapi", "fastapi-async", "litserve", "kserve", "ours")
EXTRA_SERVERS = ("ours-nolog",)  # run only when named in --servers
MODELS = {  # demo key -> (registry name, recipes, kind)
    "digits": ("digits-cnn", ["onnx"], "digits"),
    "minilm": ("all-minilm-l6-v2", ["onnx", "onnx > int8-dynamic"], "text"),
}


# ---------------------------------------------------------------------------------------------------
# the bench home: demos through the pipeline, an ONNX champion each


def _onnx_versions(reg: Any, name: str, run_id: str) -> list[dict[str, Any]]:
    out = []
    for summary in reg.list_versions(name):
        info = reg.get_version(name, summary["version"])
        if info["manifest"]["format"] == "onnx" and info["run_id"] == run_id:
            out.append(info)
    return out


def ensure_onnx_champion(reg: Any, name: str) -> str:
    """Promote the fastest passing ONNX version of the champion's run when the champion is not ONNX."""
    _, version = reg.resolve(f"{name}@champion")
    info = reg.get_version(name, version)
    if info["manifest"]["format"] == "onnx":
        return ""
    onnx = _onnx_versions(reg, name, info["run_id"])
    if not onnx:
        raise SystemExit(
            f"error: run {info['run_id']} of {name} registered no ONNX version; rerun with --rebuild-home"
        )

    def speed(v: dict[str, Any]) -> float:  # the registry's evidence is typed (VersionEvidence) or None
        m = None if v["evidence"] is None else v["evidence"].measurements.get("efficiency.throughput_best")
        return float(m.value or 0.0) if m is not None else 0.0

    passing = [v for v in onnx if v["evidence"] is not None and v["evidence"].verdict.passed]
    best = max(passing or onnx, key=speed)
    reason = "bench/serve_load.py serves an ONNX champion"
    reg.promote(name, best["version"], reason=reason)
    gate = "passing" if passing else "not passing every gate"
    return f"champion v{version} was {info['manifest']['format']}; promoted ONNX v{best['version']} ({gate})"


def prepare(key: str, home: Path) -> Prepared:
    from modelyard.config import Policy, Settings
    from modelyard.errors import RegistryError
    from modelyard.pipeline import EvalOptions, run_pipeline
    from modelyard.registry import Registry
    from modelyard.serve.model import ServedModel
    from modelyard.zoo.demos import load_demo, minilm_folder

    name, recipes, kind = MODELS[key]
    demo = load_demo(key, home)
    reg = Registry(home)
    try:
        reg.resolve(f"{name}@champion")
    except RegistryError:
        log(
            f"  running the {key} demo's pipeline (recipes {recipes}) into {home} (once; kept for later runs) ..."
        )
        t0 = time.perf_counter()
        run_pipeline(
            demo.baseline,
            demo.dataset,
            model_name=name,
            model_source=f"modelyard built-in demo '{key}'",
            recipes=recipes,
            policy=Policy(),
            settings=Settings(home=home),
            options=EvalOptions(measure_rss=False),
            progress=lambda msg, _a: None,
        )
        log(f"  pipeline done in {time.perf_counter() - t0:.0f} s")
    note = ensure_onnx_champion(reg, name)
    served = ServedModel.load(reg, f"{name}@champion", workdir=WORK / "models")
    version, evidence = served.version, served.evidence
    if kind == "digits":
        items: list[Any] = [np.asarray(x, dtype=np.float32) for x in demo.dataset.x_test]
        return Prepared(
            key, kind, name, version, served, evidence, items, weights=demo.baseline.path, note=note
        )
    texts = [str(t) for t in demo.dataset.x_test]
    return Prepared(key, kind, name, version, served, evidence, texts, model_dir=minilm_folder(), note=note)


# ---------------------------------------------------------------------------------------------------
# all rounds of one model, and the champion Runner offline


def offline_reference(p: Prepared, n: int) -> np.ndarray:
    """The champion Runner's main output for the first ``n`` items, run in this process."""
    runner = p.runner
    out = runner.spec.output_name
    if p.kind == "digits":
        feeds = {runner.spec.inputs[0].name: np.stack(p.items[:n])}
    else:
        feeds = p.candidate.preprocessor()(p.items[:n])
    return np.asarray(runner.run(feeds)[out])


def offline_rps(runner: Any, p: Prepared, batch: int, min_time_s: float) -> tuple[float, float]:
    """The champion Runner's own throughput (items/s, median of 3 samples) at ``batch`` in this process, inputs
    prepared beforehand, and the most cores other processes kept busy during a sample."""
    from common import time_pass

    n = max(len(p.items) // batch, 1) * batch
    items = (p.items * (batch // len(p.items) + 1))[:n] if batch > len(p.items) else p.items[:n]
    chunks = [items[i : i + batch] for i in range(0, n, batch)]
    if p.kind == "digits":
        name = runner.spec.inputs[0].name
        feeds = [{name: np.stack(ch)} for ch in chunks]
    else:
        prep = p.candidate.preprocessor()
        feeds = [prep(ch) for ch in chunks]

    def one_pass() -> int:
        for f in feeds:
            runner.run(f)
        return n

    one_pass()
    meter, samples, others = OtherLoad(), [], []
    for _ in range(3):
        start = meter.snapshot()
        samples.append(time_pass(one_pass, min_time_s=min_time_s))
        others.append(meter.cores_since(start))
    return float(statistics.median(samples)), max(others)


def chosen_batching(p: Prepared) -> dict[str, Any]:
    try:
        from modelyard.serve.batcher import choose_batching
    except ImportError:
        return {"max_batch_size": None, "why": "modelyard.serve.batcher is not in this checkout"}
    from modelyard.serve.model import latency_budget_ms

    budget = latency_budget_ms(p.evidence)  # as the server does: the policy's p99 budget, else its default
    measurements = None if p.evidence is None else p.evidence.measurements  # typed VersionEvidence
    cfg = choose_batching(measurements, latency_budget_ms=budget)
    return {"max_batch_size": cfg.max_batch_size, "max_wait_s": cfg.max_wait_s, "why": cfg.why}


def with_log_variants(servers: dict[str, Server], key: str) -> dict[str, Server]:
    """``ours`` logging to a fresh prediction log per start (under bench/out/serve_load/monitor/, so the bench
    home's log does not grow from run to run), and ``ours-nolog``: the same server with ``--no-monitor``."""
    ours = servers["ours"]
    db = WORK / "monitor" / f"{key}.db"
    for path in (db, *(db.with_name(db.name + s) for s in ("-wal", "-shm"))):
        path.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    return {
        **servers,
        "ours": dataclasses.replace(ours, argv=[*ours.argv, "--monitor-db", str(db)]),
        "ours-nolog": dataclasses.replace(ours, name="ours-nolog", argv=[*ours.argv, "--no-monitor"]),
    }


def run_model(p: Prepared, args: argparse.Namespace, home: Path) -> ModelResult:
    reference = offline_reference(p, args.check_items)
    results = {s: ServerResult() for s in args.servers}
    for rnd in range(1, args.rounds + 1):
        for name in args.servers:
            res = results[name]
            port = free_port()
            server = with_log_variants(make_servers(p, port, args, home), p.key)[name]
            res.why_not = res.why_not or server.why_not
            if res.why_not:
                continue
            log(f"  round {rnd}/{args.rounds}: {name} (at {time.perf_counter() - args.t0:.0f} s)")
            run = Running(server, port, WORK / "logs" / f"{p.key}-{name}-r{rnd}.log")
            try:
                t0 = time.perf_counter()
                run.wait_ready(args.ready_timeout_s)
                res.ready_s.append(time.perf_counter() - t0)
                asyncio.run(session(run, p, res, args, reference, rnd))
            except RuntimeError as exc:
                res.why_not = f"failed: {exc}"
                log(f"    {name} {res.why_not}")
            finally:
                run.stop()
    batching = chosen_batching(p)
    ours = results.get("ours")
    mean_batch = None
    if ours is not None and 32 in ours.closed:
        batches = [w.mean_batch for w in ours.closed[32] if w.mean_batch is not None]
        mean_batch = statistics.mean(batches) if batches else None
    batch = max(1, round(mean_batch)) if mean_batch is not None else int(batching.get("max_batch_size") or 1)
    log(f"  offline Runner throughput at batch {batch} and 1 ...")
    rps, other = offline_rps(p.runner, p, batch, args.offline_min_time_s)
    rps_b1, other_b1 = offline_rps(p.runner, p, 1, args.offline_min_time_s)
    offline = {
        "batch": batch,
        "mean_batch_c32": mean_batch,
        "rps": rps,
        "rps_b1": rps_b1,
        "other": max(other, other_b1),
    }
    return ModelResult(p, results, batching, offline, args.max_other_load, python_client=args.wrk is None)


# ---------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="modelyard serve vs FastAPI, LitServe and KServe peers, under load"
    )
    p.add_argument("--quick", action="store_true", help="one round, short windows (~2 min)")
    p.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated: fastapi, fastapi-async, litserve, kserve, ours, ours-nolog (ours with "
        "--no-monitor)",
    )
    p.add_argument(
        "--loadgen",
        choices=("wrk", "python"),
        help="closed-loop load generator: wrk (compiled; default where installed) or python (this process)",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--concurrency", default="1,8,32,64", help="closed-loop levels")
    p.add_argument(
        "--rates", default="25,50,100,200", help="open-loop arrival rates, req/s ('' skips the open loop)"
    )
    p.add_argument("--window-s", type=float, help="closed-loop measured window (default 2; --quick 1)")
    p.add_argument("--open-window-s", type=float, help="open-loop arrivals measured (default 2.5; --quick 1)")
    p.add_argument(
        "--warmup-s", type=float, help="unmeasured load before each window (default 0.5; --quick 0.3)"
    )
    p.add_argument("--start-warmup-s", type=float, default=1.0, help="load at C=8 after each server start")
    p.add_argument(
        "--drain-s", type=float, default=3.0, help="open loop: wait this long after the last arrival"
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="client timeout per request")
    p.add_argument(
        "--ready-timeout-s", type=float, default=180.0, help="how long a server may take to get ready"
    )
    p.add_argument("--check-items", type=int, default=16, help="requests compared with the offline Runner")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.3,
        help="a window is clean when other processes kept fewer cores than this busy meanwhile",
    )
    p.add_argument("--offline-min-time-s", type=float, default=1.0, help="per offline timing sample")
    p.add_argument("--litserve-max-batch-size", type=int, default=32)
    p.add_argument("--litserve-batch-timeout-s", type=float, default=0.005)
    p.add_argument("--litserve-workers", type=int, default=1)
    p.add_argument("--home", type=Path, default=WORK / "home", help="the bench home (registry)")
    p.add_argument(
        "--rebuild-home", action="store_true", help="delete the bench home and run the pipelines again"
    )
    p.add_argument("--out-md", type=Path, default=OUT / "serve_load.md", help="Markdown copy")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.window_s = args.window_s or (1.0 if quick else 2.0)
    args.open_window_s = args.open_window_s or (1.0 if quick else 2.5)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (0.3 if quick else 0.5)
    args.start_warmup_s = min(args.start_warmup_s, 0.5) if quick else args.start_warmup_s
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.concurrency = sorted({int(c) for c in _floats(args.concurrency)})
    args.rates = sorted(set(_floats(args.rates)))
    args.wrk = None if args.loadgen == "python" else find_wrk()
    if args.loadgen == "wrk" and args.wrk is None:
        p.error("--loadgen wrk: wrk is not installed; install it with `bash bench/setup_wrk.sh`")
    args.bodies_dir = WORK / "bodies"
    known = SERVERS + EXTRA_SERVERS
    bad = [m for m in args.models if m not in MODELS] + [s for s in args.servers if s not in known]
    if bad:
        p.error(f"unknown model or server {bad}; models: {', '.join(MODELS)}; servers: {', '.join(known)}")
    if args.rounds < 1 or min(args.concurrency, default=0) < 1 or min(args.rates, default=1) <= 0:
        p.error("--rounds, --concurrency and --rates must be positive")
    return args


def load_generator(args: argparse.Namespace) -> str:
    """Which closed-loop generator ran, for the table and the JSON line."""
    wrk: Wrk | None = args.wrk
    if wrk is None:
        return f"python asyncio + httpx {httpx.__version__} (this process, one connection per worker)"
    return f"wrk {wrk.version} ({wrk_threads(max(args.concurrency, default=2))} threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = args.t0 = time.perf_counter()
    home = args.home.resolve()
    if args.rebuild_home:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(WORK / "models", ignore_errors=True)
    args.ours_why_not = ours_available() if {"ours", "ours-nolog"} & set(args.servers) else ""
    if args.wrk is None and args.loadgen is None:
        log(
            "WARNING: wrk is not installed, so the closed loop runs on the Python load generator, which tops "
            "out near one core (~1,100 req/s on the digits demo) and may be the bottleneck; install wrk with "
            "`bash bench/setup_wrk.sh` (Debian package wrk)"
        )
    closed_s = args.warmup_s + args.window_s
    if args.wrk is not None:  # wrk runs whole seconds
        closed_s = math.ceil(args.warmup_s) + max(1, math.ceil(args.window_s)) + 0.2
    per_round = len(args.concurrency) * closed_s + len(args.rates) * (
        args.warmup_s + args.open_window_s + 1.0
    )
    log(
        f"serve_load: {len(args.models)} model(s) x {len(args.servers)} server(s) x {args.rounds} round(s), "
        f"about {len(args.models) * len(args.servers) * args.rounds * (per_round + 10) / 60:.0f} min after the "
        f"models are ready; load generator: {load_generator(args)}"
    )
    if args.ours_why_not:
        log(f"  ours: {args.ours_why_not}")
    results = []
    for key in args.models:
        log(f"{key}: preparing the bench home ...")
        p = prepare(key, home)
        log(f"{key}: serving {p.name} v{p.version} ({p.candidate.name}, {p.candidate.format})")
        try:
            results.append(run_model(p, args, home))
        finally:
            p.served.close()
    elapsed = time.perf_counter() - started
    import onnxruntime

    gen = load_generator(args)
    if args.wrk is not None:
        client = (
            f"Closed loop: {gen}, a separate process (`wrk -t min(C, 2) -c C -d W --latency` with "
            "bench/wrk_post.lua, which POSTs each server's bodies in turn and counts HTTP answers > 399 as "
            "errors); its CPU is in 'client cores'. wrk runs whole seconds: "
            f"{math.ceil(args.warmup_s)} s unmeasured, then {max(1, math.ceil(args.window_s))} s measured per "
            f"window. Open loop: this process (Python asyncio + httpx {httpx.__version__}); wrk cannot schedule "
            "Poisson arrivals and wrk2 is not packaged."
        )
    else:
        client = (
            f"Load generator: {gen}, one client and one connection per worker; the client's own CPU is in "
            "'client cores'. A Python client tops out near one core (some 500-1,100 req/s on 2 cores): rows "
            f"marked ‡ had the client at >= {CLIENT_BOUND_CORES} cores, so the client, not the server, may set "
            "their figure."
        )
    header = [
        "# serve_load: modelyard serve vs FastAPI, LitServe and KServe",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}. {client} 'other cores' is CPU that processes other than the client and "
        "the server used during the window (0 on an idle machine); a cell uses only its clean windows (other < "
        f"{args.max_other_load:g} cores) and is marked † when none was clean. Every peer but (a) serves the "
        "champion's ONNX file with ONNX Runtime 'threads = cores'. LitServe: max_batch_size "
        f"{args.litserve_max_batch_size}, batch_timeout {args.litserve_batch_timeout_s} s, "
        f"{args.litserve_workers} worker(s), ONNX Runtime {max(1, (os.cpu_count() or 1) // args.litserve_workers)} "
        f"thread(s) each. Rounds: {args.rounds}; windows {args.window_s:g} s closed, "
        f"{args.open_window_s:g} s open, {args.warmup_s:g} s warm-up before each. Took {elapsed / 60:.1f} min.",
    ]
    text = "\n\n".join(["\n".join(header)] + [model_section(m, args) for m in results]) + "\n"
    print(text)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(text, encoding="utf-8")
    log(f"wrote {args.out_md}")
    print(json_line(payload(results, args, elapsed, gen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
