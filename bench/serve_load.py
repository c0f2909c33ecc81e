"""Serving under load: modelyard's server vs a tutorial FastAPI + PyTorch endpoint vs LitServe.

Servers (one at a time, each in its own process; the load generator runs in this process):

- ``fastapi``   (a) a plain FastAPI + PyTorch fp32 endpoint written the way a tutorial does it: a sync
                ``def`` endpoint, ``model(x)`` once per request, JSON lists in and out (bench/serve_peers.py).
                It serves the PyTorch fp32 baseline, not the champion: the digits demo's baseline weights, or
                the all-MiniLM-L6-v2 sentence-transformers folder.
- ``litserve``  (b) LitServe serving the champion's ONNX file (the file ours serves) with ONNX Runtime and its
                batching on (``max_batch_size``, ``batch_timeout``), in bench/.venv-litserve
                (bench/setup_litserve.sh).
- ``ours``      ``modelyard serve NAME@champion`` (the registry champion, ONNX), OIP v2 JSON
                ``/v2/models/NAME/infer``, asking for the one output the peers return (``probabilities`` or
                ``embedding``). Its prediction log is on (the default), written to a fresh file per start.
- ``ours-nolog``  the same with ``--no-monitor``: no prediction log. Not run unless named in ``--servers``;
                ``--servers ours,ours-nolog`` measures what the log costs (bench/drift.py runs it that way).

So (b) vs ours compares servers on one model file; (a) vs ours compares the server and the runtime together
(PyTorch fp32 eager against the ONNX champion).

Models: the digits CNN (one 8x8 image per request) and all-MiniLM-L6-v2 (one sentence per request), from the
built-in demos run through ``run_pipeline`` into a bench home under bench/out/serve_load/ (kept between runs).

Load: closed loop (each of C workers sends its next request when the last one answered) at C = 1, 8, 32, 64,
and open loop (Poisson arrivals at fixed rates, latency counted from each request's scheduled time, so a slow
server cannot slow the offered load down). Each worker has its own httpx client and connection. Rounds are
interleaved (fastapi, litserve, ours, fastapi, ...) so the machine's drift is shared; each server is warmed
up after start and before every measured window. Each window records the CPU that other processes used;
throughput is the median over the clean rounds (other processes below ``--max-other-load`` cores, else every
round, marked †) and percentiles pool the same rounds' latencies.

Server overhead: our throughput at C=32 divided by the champion Runner's own throughput in this process at
the mean batch size our server formed at C=32 (from its /metrics ``modelyard_batch_size`` histogram).

bench/serve_procs.py holds the servers (what each is started with, what it is sent, its process) and
bench/loadgen.py the load generator; this script prepares the models, runs the rounds and writes the report.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py [--quick]`` (see bench/README.md). Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import OtherLoad, json_line, log, markdown_table, rounded
from loadgen import ServerResult, closed_stats, pct, session, usable
from serve_procs import Prepared, Running, Server, free_port, make_servers, ours_available

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WORK = OUT / "serve_load"

SERVERS = ("fastapi", "litserve", "ours")
EXTRA_SERVERS = ("ours-nolog",)  # run only when named in --servers
SERVER_TITLES = {
    "fastapi": "(a) FastAPI + PyTorch fp32 serving the PyTorch baseline (not the champion), sync endpoint, "
    "one call per request",
    "litserve": "(b) LitServe + ONNX Runtime serving the champion's ONNX file, LitServe batching",
    "ours": "ours: modelyard serve of the champion (OIP v2 JSON), prediction log on (the default)",
    "ours-nolog": "ours with --no-monitor: the same server without the prediction log",
}
MODELS = {  # demo key -> (registry name, recipes, kind)
    "digits": ("digits-cnn", ["onnx"], "digits"),
    "minilm": ("all-minilm-l6-v2", ["onnx", "onnx > int8-dynamic"], "text"),
}
CLIENT_BOUND_CORES = 0.9  # a Python client near one full core is itself the bottleneck


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


@dataclass
class ModelResult:
    p: Prepared
    servers: dict[str, ServerResult]
    batching: dict[str, Any]
    offline: dict[str, Any]
    max_other_load: float


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
    return ModelResult(p, results, batching, offline, args.max_other_load)


# ---------------------------------------------------------------------------------------------------
# report


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:,.1f}"


def c32(m: ModelResult, server: str, key: str = "rps") -> Any:
    ws = m.servers.get(server, ServerResult()).closed.get(32)
    return closed_stats(ws, m.max_other_load)[key] if ws else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and a == a and b == b else None


def _num(v: float | None, digits: int) -> float | None:
    """Rounded, with NaN (no samples) as None: the JSON line allows no NaN."""
    return None if v is None or v != v else rounded(v, digits)


def model_section(m: ModelResult, args: argparse.Namespace) -> str:
    p = m.p
    cand = p.candidate
    lines = [f"## {p.key}: {p.name} v{p.version} (candidate {cand.name!r}, {cand.format})", ""]
    if p.note:
        lines += [f"Note: {p.note}.", ""]
    for s, r in m.servers.items():
        ready = f"; ready {statistics.median(r.ready_s):.1f} s after start" if r.ready_s else ""
        lines.append(f"- {SERVER_TITLES[s]}: {r.why_not or r.check + ready}")
    rows = []
    for s, res in m.servers.items():
        for c in args.concurrency:
            if c not in res.closed:
                continue
            st = closed_stats(res.closed[c], m.max_other_load)
            flag = (" ‡" if st["client"] >= CLIENT_BOUND_CORES else "") + (" †" if st["contended"] else "")
            rows.append(
                [
                    s,
                    c,
                    f"{st['rps']:,.1f}{flag}",
                    f"{st['low']:,.0f}-{st['high']:,.0f} ({st['clean']} clean)",
                    _ms(st["p50"]),
                    _ms(st["p95"]),
                    _ms(st["p99"]),
                    f"{st['errors']}/{st['sent']}",
                    f"{st['client']:.2f}",
                    f"{st['server']:.2f}",
                    f"{st['other']:.2f}",
                    "-" if st["batch"] is None else f"{st['batch']:.1f}",
                ]
            )
    head = [
        "server",
        "C",
        "req/s",
        "spread",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors/sent",
        "client cores",
        "server cores",
        "other cores (max)",
        "mean batch",
    ]
    lines += [
        "",
        "Closed loop (median req/s over rounds; latency percentiles pool every round):",
        "",
        markdown_table(head, rows, align="lrrrrrrrrrrr"),
    ]
    rows = []
    for s, res in m.servers.items():
        for rate in args.rates:
            ws = res.opened.get(rate, [])
            skipped = res.skipped_rates.get(rate, 0)
            if not ws and not skipped:
                continue
            if not ws:
                rows.append([s, f"{rate:g}", "-", "saturated at a lower rate", "-", "-", "-", "-"])
                continue
            used, contended = usable(ws, m.max_other_load)
            lat = [x for w in used for x in w.latencies_ms]
            rows.append(
                [
                    s,
                    f"{rate:g}",
                    f"{statistics.median(w.arrived or 0.0 for w in used):,.1f}",
                    f"{statistics.median(w.rps for w in used):,.1f}" + (" †" if contended else ""),
                    _ms(pct(lat, 50)),
                    _ms(pct(lat, 99)),
                    f"{sum(w.errors for w in used)}/{sum(w.sent for w in used)}",
                    f"{statistics.median(w.client_cores for w in used):.2f}",
                ]
            )
    lines += (
        [
            "",
            "Open loop (Poisson arrivals; latency from each request's scheduled time; failed = error or not "
            f"answered within {args.drain_s:g} s after the last arrival):",
            "",
            markdown_table(
                [
                    "server",
                    "offered req/s",
                    "arrived req/s",
                    "achieved req/s",
                    "p50 ms",
                    "p99 ms",
                    "failed/sent",
                    "client cores",
                ],
                rows,
            ),
        ]
        if args.rates
        else []
    )  # --rates '' skips the open loop
    ours = c32(m, "ours")
    off = m.offline
    b = m.batching
    lines += [
        "",
        f"- At C=32: ours/(a) fastapi = {_fmt(_ratio(ours, c32(m, 'fastapi')))}x, ours/(b) litserve = "
        f"{_fmt(_ratio(ours, c32(m, 'litserve')))}x; p99 ms: "
        + ", ".join(f"{s} {_ms(c32(m, s, 'p99') or float('nan'))}" for s in m.servers)
        + (
            f" († contended: {', '.join(bad)}; other processes took CPU in every window of theirs)"
            if (bad := [s for s in m.servers if c32(m, s, "contended")])
            else ""
        ),
        *(
            [
                f"- Prediction log: ours (log on) / ours-nolog (--no-monitor) at C=32 = "
                f"{_fmt(_ratio(ours, c32(m, 'ours-nolog')), 3)}x throughput."
            ]
            if "ours-nolog" in m.servers
            else []
        ),
        f"- Our batching from the evidence: max_batch_size {b.get('max_batch_size')}, "
        f"max_wait_s {b.get('max_wait_s', '-')} ({b.get('why')}); mean batch formed at C=32: "
        f"{_fmt(off['mean_batch_c32'])}.",
        f"- Server overhead: ours at C=32 {_fmt(ours)} req/s / the champion Runner offline at batch {off['batch']} "
        f"{off['rps']:,.1f} items/s = {_fmt(_ratio(ours, off['rps']), 3)} (offline batch 1: {off['rps_b1']:,.1f} "
        f"items/s; other processes used up to {off['other']:.2f} cores meanwhile)"
        + ("; the server also tokenizes, the offline Runner gets tokens." if p.kind == "text" else "."),
    ]
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def payload(models: list[ModelResult], args: argparse.Namespace, elapsed_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "serve_load", "quick": bool(args.quick)}
    for m in models:
        out[f"{m.p.key}_c32_rps"] = {s: _num(c32(m, s), 1) for s in m.servers}
    for key in (
        "ratio_vs_fastapi_c32",
        "ratio_vs_litserve_c32",
        "p99_ms_c32",
        "contended_c32",
        "overhead_ratio",
        "ours_mean_batch_c32",
        "log_on_off_ratio_c32",
    ):
        out[key] = {}
    for m in models:
        k = m.p.key
        ours = c32(m, "ours")
        out["ratio_vs_fastapi_c32"][k] = rounded(_ratio(ours, c32(m, "fastapi")), 3)
        out["ratio_vs_litserve_c32"][k] = rounded(_ratio(ours, c32(m, "litserve")), 3)
        out["p99_ms_c32"][k] = {s: _num(c32(m, s, "p99"), 1) for s in m.servers}
        out["contended_c32"][k] = [s for s in m.servers if c32(m, s, "contended")]
        out["overhead_ratio"][k] = rounded(_ratio(ours, m.offline["rps"]), 3)
        out["ours_mean_batch_c32"][k] = rounded(m.offline["mean_batch_c32"], 2)
        out["log_on_off_ratio_c32"][k] = rounded(_ratio(ours, c32(m, "ours-nolog")), 3)
    out["open_p99_ms"] = {
        m.p.key: {
            f"{rate:g}": {
                s: _num(
                    pct([x for w in usable(r.opened[rate], m.max_other_load)[0] for x in w.latencies_ms], 99),
                    1,
                )
                for s, r in m.servers.items()
                if rate in r.opened
            }
            for rate in args.rates
        }
        for m in models
    }
    clients = [
        w.client_cores for m in models for r in m.servers.values() for ws in r.closed.values() for w in ws
    ]
    out["client_cores_max"] = rounded(max(clients), 2) if clients else None
    out["elapsed_s"] = round(elapsed_s)
    return out


# ---------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="modelyard serve vs FastAPI + PyTorch vs LitServe, under load")
    p.add_argument("--quick", action="store_true", help="one round, short windows (~2 min)")
    p.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated: fastapi, litserve, ours, ours-nolog (ours with --no-monitor)",
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
    known = SERVERS + EXTRA_SERVERS
    bad = [m for m in args.models if m not in MODELS] + [s for s in args.servers if s not in known]
    if bad:
        p.error(f"unknown model or server {bad}; models: {', '.join(MODELS)}; servers: {', '.join(known)}")
    if args.rounds < 1 or min(args.concurrency, default=0) < 1 or min(args.rates, default=1) <= 0:
        p.error("--rounds, --concurrency and --rates must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = args.t0 = time.perf_counter()
    home = args.home.resolve()
    if args.rebuild_home:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(WORK / "models", ignore_errors=True)
    args.ours_why_not = ours_available() if {"ours", "ours-nolog"} & set(args.servers) else ""
    per_round = len(args.concurrency) * (args.warmup_s + args.window_s) + len(args.rates) * (
        args.warmup_s + args.open_window_s + 1.0
    )
    log(
        f"serve_load: {len(args.models)} model(s) x {len(args.servers)} server(s) x {args.rounds} round(s), "
        f"about {len(args.models) * len(args.servers) * args.rounds * (per_round + 8) / 60:.0f} min after the models are ready"
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

    header = [
        "# serve_load: modelyard serve vs FastAPI + PyTorch vs LitServe",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}. Load generator: this process, httpx {httpx.__version__}, one client and one "
        "connection per worker; the client's own CPU is in 'client cores'. A Python client tops out near one core "
        f"(some 500-1,000 req/s on 2 cores): rows marked ‡ had the client at >= {CLIENT_BOUND_CORES} cores, so the "
        "client, not the server, may set their figure. 'other "
        "cores' is CPU that processes other than the client and the server used during the window (0 on an idle "
        f"machine); a cell uses only its clean windows (other < {args.max_other_load:g} cores) and is marked † "
        "when none was clean. LitServe: max_batch_size "
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
    print(json_line(payload(results, args, elapsed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
