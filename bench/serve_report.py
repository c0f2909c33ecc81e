"""The report of bench/serve_load.py: per model the servers, the closed- and open-loop tables and the C=32
comparison with the best peer, and the closing JSON line's payload."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

from common import markdown_table, rounded
from loadgen import ServerResult, closed_stats, pct, usable
from serve_procs import Prepared

OURS = ("ours", "ours-nolog")
PEERS = ("fastapi", "fastapi-async", "litserve", "kserve")
SERVER_TITLES = {
    "fastapi": "(a) FastAPI + PyTorch fp32, sync endpoint, one call per request; serves the PyTorch baseline, "
    "NOT the champion's ONNX file",
    "fastapi-async": "(b) async FastAPI + ONNX Runtime (hand-written: async def, run_in_executor on one "
    "inference thread, one request per run), the champion's ONNX file",
    "litserve": "(c) LitServe + ONNX Runtime with LitServe's batching, the champion's ONNX file",
    "kserve": "(d) KServe 0.21 Python model server + ONNX Runtime (kserve.Model, OIP v2 JSON, no batching, "
    "its defaults but bound to 127.0.0.1 with gRPC off), the champion's ONNX file",
    "ours": "ours: modelyard serve of the champion (OIP v2 JSON), prediction log on (the default)",
    "ours-nolog": "ours with --no-monitor: the same server without the prediction log",
}
CLIENT_BOUND_CORES = 0.9  # a Python client near one full core is itself the bottleneck


@dataclass
class ModelResult:
    p: Prepared
    servers: dict[str, ServerResult]
    batching: dict[str, Any]
    offline: dict[str, Any]
    max_other_load: float
    python_client: bool = True  # the closed loop ran on the Python generator (‡ applies), not wrk


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:,.1f}"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def c32(m: ModelResult, server: str, key: str = "rps") -> Any:
    ws = m.servers.get(server, ServerResult()).closed.get(32)
    return closed_stats(ws, m.max_other_load)[key] if ws else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and a == a and b == b else None


def _num(v: float | None, digits: int) -> float | None:
    """Rounded, with NaN (no samples) as None: the JSON line allows no NaN."""
    return None if v is None or v != v else rounded(v, digits)


def best_peer(m: ModelResult) -> str | None:
    """The peer with the highest req/s at C=32 (every peer that ran, the PyTorch one included)."""
    ran = [(c32(m, s), s) for s in m.servers if s in PEERS and c32(m, s) is not None]
    return max(ran)[1] if ran else None


def _closed_table(m: ModelResult, args: argparse.Namespace) -> str:
    rows = []
    for s, res in m.servers.items():
        for c in args.concurrency:
            if c not in res.closed:
                continue
            st = closed_stats(res.closed[c], m.max_other_load)
            bound = m.python_client and st["client"] >= CLIENT_BOUND_CORES
            flag = (" ‡" if bound else "") + (" †" if st["contended"] else "")
            rows.append(
                [
                    s,
                    c,
                    f"{st['rps']:,.1f}{flag}",
                    f"{st['low']:,.0f}-{st['high']:,.0f} ({st['clean']} clean)",
                    _ms(st["p50"]),
                    _ms(st["p90"]),
                    _ms(st["p99"]),
                    f"{st['errors']}/{st['sent']}",
                    f"{st['client']:.2f}",
                    f"{st['server']:.2f}",
                    f"{st['other']:.2f}",
                    "-" if st["batch"] is None else f"{st['batch']:.1f}",
                ]
            )
    head = ["server", "C", "req/s", "spread", "p50 ms", "p90 ms", "p99 ms", "errors/sent", "client cores"]
    head += ["server cores", "other cores (max)", "mean batch"]
    return markdown_table(head, rows, align="lrrrrrrrrrrr")


def _open_table(m: ModelResult, args: argparse.Namespace) -> str:
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
    head = ["server", "offered req/s", "arrived req/s", "achieved req/s", "p50 ms", "p99 ms", "failed/sent"]
    return markdown_table([*head, "client cores"], rows)


def model_section(m: ModelResult, args: argparse.Namespace) -> str:
    p = m.p
    cand = p.candidate
    lines = [f"## {p.key}: {p.name} v{p.version} (candidate {cand.name!r}, {cand.format})", ""]
    if p.note:
        lines += [f"Note: {p.note}.", ""]
    for s, r in m.servers.items():
        ready = f"; ready {statistics.median(r.ready_s):.1f} s after start" if r.ready_s else ""
        lines.append(f"- {SERVER_TITLES[s]}: {r.why_not or r.check + ready}")
    gen = "wrk" if not m.python_client else "this process (Python)"
    lines += [
        "",
        f"Closed loop, load generator {gen} (median req/s over rounds; latency percentiles pool the rounds):",
        "",
        _closed_table(m, args),
    ]
    if args.rates:  # --rates '' skips the open loop
        lines += [
            "",
            "Open loop, load generator this process (Python; wrk cannot schedule Poisson arrivals and wrk2 is "
            "not packaged), Poisson arrivals; latency from each request's scheduled time; failed = error or "
            f"not answered within {args.drain_s:g} s after the last arrival:",
            "",
            _open_table(m, args),
        ]
    ours = c32(m, "ours")
    best = best_peer(m)
    off = m.offline
    b = m.batching
    bad = [s for s in m.servers if c32(m, s, "contended")]
    lines += [
        "",
        "- At C=32: "
        + ", ".join(f"ours/{s} = {_fmt(_ratio(ours, c32(m, s)))}x" for s in m.servers if s in PEERS)
        + "; p99 ms: "
        + ", ".join(f"{s} {_ms(c32(m, s, 'p99') or float('nan'))}" for s in m.servers)
        + (
            f" († contended: {', '.join(bad)}; other processes took CPU in every window of theirs)"
            if bad
            else ""
        ),
        f"- Best peer at C=32: {best or '-'}"
        + (
            f"; ours / {best} = {_fmt(_ratio(ours, c32(m, best)))}x throughput, p99 ratio (ours / {best}) "
            f"{_fmt(_ratio(c32(m, 'ours', 'p99'), c32(m, best, 'p99')))} (target: >= 1.5x with a ratio <= 1)"
            + ("; it serves the PyTorch baseline, not the champion's file" if best == "fastapi" else "")
            if best
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


def payload(
    models: list[ModelResult], args: argparse.Namespace, elapsed_s: float, load_generator: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "serve_load", "quick": bool(args.quick)}
    by_key = {m.p.key: m for m in models}
    for key in ("digits", "minilm"):
        m = by_key.get(key)
        best = best_peer(m) if m is not None else None
        ratio = p99_ratio = None
        if m is not None and best is not None:
            ratio = _ratio(c32(m, "ours"), c32(m, best))
            p99_ratio = _ratio(c32(m, "ours", "p99"), c32(m, best, "p99"))
        out[f"{key}_vs_best_peer"] = rounded(ratio, 3)
        out[f"{key}_p99_ratio"] = rounded(p99_ratio, 3)
    out["load_generator"] = load_generator
    out["best_peer_c32"] = {m.p.key: best_peer(m) for m in models}
    for m in models:
        out[f"{m.p.key}_c32_rps"] = {s: _num(c32(m, s), 1) for s in m.servers}
    for key in (
        "ratio_vs_fastapi_c32",
        "ratio_vs_litserve_c32",
        "ratio_vs_peer_c32",
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
        out["ratio_vs_peer_c32"][k] = {
            s: rounded(_ratio(ours, c32(m, s)), 3) for s in m.servers if s in PEERS
        }
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
