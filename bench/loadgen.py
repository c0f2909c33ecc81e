"""The load generators of bench/serve_load.py: closed-loop and open-loop requests against one running server,
latencies and their percentiles, the CPU the client, the server and every other process used per measured
window, and one server's session of windows in a round.

Closed loop: ``wrk`` (compiled, multi-threaded; bench/wrk_post.lua POSTs the bodies and reports latency
quantiles) when it is installed, else this process (asyncio + httpx, one client and connection per worker).
Open loop: always this process (wrk cannot schedule Poisson arrivals; wrk2, which can, is not packaged)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import resource
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from common import OtherLoad, log
from serve_procs import HERE, Prepared, Running

SATURATED_FRACTION = 0.9  # open loop: achieved below this share of the offered rate = saturated
WRK_LUA = HERE / "wrk_post.lua"
WRK_QUANTILES = 1000  # latency quantiles wrk_post.lua reports per window


# ---------------------------------------------------------------------------------------------------
# load generation


@dataclass
class Window:
    """One measured window: completed requests, latencies, and who used the CPU meanwhile."""

    rps: float
    latencies_ms: list[float]
    sent: int
    errors: int
    client_cores: float
    server_cores: float
    other_cores: float
    mean_batch: float | None = None
    offered: float | None = None  # open loop: the nominal arrival rate
    arrived: float | None = None  # open loop: the rate the Poisson draw actually offered in the window
    latency_weight: float = 1.0  # requests each latency stands for (wrk: quantiles, not every request)


def _client(timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def _post(client: httpx.AsyncClient, url: str, body: bytes) -> bool:
    try:
        r = await client.post(url, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class Meter:
    """CPU of this process (the client), of the server's process tree, and of everything else."""

    def __init__(self, running: Running) -> None:
        self.running, self.other = running, OtherLoad()

    def start(self) -> None:
        self.t0 = self.other.snapshot()
        self.server0 = self.running.cpu_s()

    def stop(self) -> tuple[float, float, float]:
        elapsed = max(time.perf_counter() - self.t0[2], 1e-9)
        client = (time.process_time() - self.t0[1]) / elapsed
        server = (self.running.cpu_s() - self.server0) / elapsed
        others = self.other.cores_since(self.t0)  # every process but this one, the server included
        return client, server, max(0.0, others - server)


async def closed_loop(run: Running, c: int, *, warmup_s: float, window_s: float, timeout_s: float) -> Window:
    url, bodies = run.base + run.server.infer_path, run.server.bodies
    clients = [_client(timeout_s) for _ in range(c)]
    meter = Meter(run)
    records: list[tuple[float, float, bool]] = []
    t_start = time.perf_counter() + warmup_s
    t_end = t_start + window_s

    async def worker(i: int) -> None:
        k = i
        while (sent := time.perf_counter()) < t_end:
            ok = await _post(clients[i], url, bodies[k % len(bodies)])
            records.append((sent, time.perf_counter(), ok))
            k += c

    async def metering() -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        meter.start()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        return meter.stop()

    try:
        meter_task = asyncio.create_task(metering())
        await asyncio.gather(*(worker(i) for i in range(c)))
        client, server, other = await meter_task
    finally:
        await asyncio.gather(*(cl.aclose() for cl in clients))
    done = sum(1 for s, d, ok in records if ok and t_start <= d <= t_end)
    window = [(s, d, ok) for s, d, ok in records if t_start <= s < t_end]
    lat = [(d - s) * 1e3 for s, d, ok in window if ok]
    return Window(
        done / window_s if window_s > 0 else 0.0,
        lat,
        len(window),
        sum(1 for *_, ok in window if not ok),
        client,
        server,
        other,
    )


async def open_loop(
    run: Running,
    rate: float,
    *,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    timeout_s: float,
    connections: int,
    seed: int,
) -> Window:
    url, bodies = run.base + run.server.infer_path, run.server.bodies
    rng = random.Random(seed)
    offsets, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < warmup_s + window_s:
        offsets.append(t)
    clients = [_client(timeout_s) for _ in range(connections)]
    queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    records: list[tuple[float, float, bool]] = []
    meter = Meter(run)
    t0 = time.perf_counter()
    t_start = t0 + warmup_s

    async def producer() -> None:
        for k, off in enumerate(offsets):
            await asyncio.sleep(max(0.0, t0 + off - time.perf_counter()))
            queue.put_nowait((t0 + off, k))
        for _ in clients:
            queue.put_nowait(None)

    async def metering() -> None:
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        meter.start()

    async def worker(i: int) -> None:
        while (job := await queue.get()) is not None:
            due, k = job
            ok = await _post(clients[i], url, bodies[k % len(bodies)])
            records.append((due, time.perf_counter(), ok))

    tasks = [
        asyncio.create_task(f) for f in (producer(), metering(), *(worker(i) for i in range(connections)))
    ]
    _, pending = await asyncio.wait(tasks, timeout=warmup_s + window_s + drain_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    cpu = meter.stop()
    await asyncio.gather(*(cl.aclose() for cl in clients))
    measured = [(s, d, ok) for s, d, ok in records if s >= t_start]
    sent = sum(1 for off in offsets if t0 + off >= t_start)
    ok_done = [(s, d) for s, d, ok in measured if ok]
    span = max([window_s] + [d - t_start for _, d in ok_done])
    lat = [(d - s) * 1e3 for s, d in ok_done]
    w = Window(len(ok_done) / span, lat, sent, sent - len(ok_done), *cpu, offered=rate)
    w.arrived = sent / window_s
    return w


# ---------------------------------------------------------------------------------------------------
# the compiled closed-loop generator: wrk


@dataclass(frozen=True)
class Wrk:
    exe: str
    version: str  # e.g. "4.1.0"


def find_wrk() -> Wrk | None:
    """wrk on PATH and its version, or None (bench/setup_wrk.sh installs it)."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    proc = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk (?:\S*?/)?(\d+\.\d+\.\d+)", proc.stdout + proc.stderr)
    return Wrk(exe, found.group(1) if found else "unknown version")


def wrk_threads(c: int) -> int:
    """min(C, 2) threads, or 1 where C does not split evenly (wrk gives each thread C / T connections)."""
    t = min(c, 2)
    return t if c % t == 0 else 1


def bodies_file(run: Running, folder: Any) -> str:
    """The server's request bodies, one a line, for wrk_post.lua."""
    path = folder / f"bodies-{run.server.name}.jsonl"
    if any(b"\n" in b for b in run.server.bodies):
        raise RuntimeError("a request body holds a newline; wrk_post.lua reads one body a line")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(run.server.bodies) + b"\n")
    return str(path)


def _wrk(wrk: Wrk, run: Running, c: int, seconds: int, timeout_s: float, bodies: str) -> dict[str, Any]:
    url = run.base + run.server.infer_path
    argv = [wrk.exe, "-t", str(wrk_threads(c)), "-c", str(c), "-d", f"{seconds}s", "--latency"]
    argv += ["--timeout", f"{max(1, math.ceil(timeout_s))}s", "-s", str(WRK_LUA), url, "--", bodies]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + timeout_s + 30)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return dict(json.loads(line[len("WRK_JSON ") :]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"wrk exited with code {proc.returncode} and no result: {' | '.join(tail)[:300]}")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _drain(run: Running, timeout_s: float) -> None:
    """Wait for one request's answer: a server that keeps working on the requests wrk left in flight when it
    stopped (most do not cancel on disconnect) answers it after them, so the measured run starts on an idle
    server, not on a backlog that no client waits for."""
    try:
        with httpx.Client(timeout=timeout_s) as client:
            client.post(
                run.base + run.server.infer_path,
                content=run.server.bodies[0],
                headers={"content-type": "application/json"},
            )
    except httpx.HTTPError:
        pass


def wrk_closed_loop(
    wrk: Wrk, run: Running, c: int, *, warmup_s: float, window_s: float, timeout_s: float, bodies: str
) -> Window:
    """Closed loop at C connections with wrk: an unmeasured wrk run of ``warmup_s`` (rounded up to whole
    seconds, wrk's unit), a drain (see ``_drain``), then the measured run of ``window_s`` (likewise). wrk counts
    the requests completed within the run; those still in flight at its end are neither counted nor timed.
    The client's CPU is wrk's (from this process's reaped children) plus this process's own."""
    if warmup_s > 0:
        _wrk(wrk, run, c, max(1, math.ceil(warmup_s)), timeout_s, bodies)
        _drain(run, timeout_s)
    if window_s <= 0:
        return Window(0.0, [], 0, 0, 0.0, 0.0, 0.0)
    other = OtherLoad()
    t0, server0, wrk0 = other.snapshot(), run.cpu_s(), _children_cpu_s()
    res = _wrk(wrk, run, c, max(1, math.ceil(window_s)), timeout_s, bodies)
    elapsed = max(time.perf_counter() - t0[2], 1e-9)
    wrk_cores = (_children_cpu_s() - wrk0) / elapsed
    server = (run.cpu_s() - server0) / elapsed
    own = (time.process_time() - t0[1]) / elapsed
    others = other.cores_since(t0)  # every process but this one: the server and wrk included
    duration_s = max(res["duration_us"] / 1e6, 1e-9)
    errors = sum(int(res[k]) for k in ("connect", "read", "write", "status", "timeout"))
    ok = int(res["requests"]) - int(res["status"])
    lat = [q / 1e3 for q in res["quantiles_us"]]
    return Window(
        ok / duration_s,
        lat,
        int(res["requests"]) + errors - int(res["status"]),
        errors,
        wrk_cores + own,
        server,
        max(0.0, others - server - wrk_cores),
        latency_weight=int(res["requests"]) / len(lat) if lat else 1.0,
    )


def batch_rows(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the ``modelyard_batch_size`` histogram over all its label sets."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("modelyard_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("modelyard_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


async def scrape(run: Running) -> tuple[float, float] | None:
    if run.server.metrics_path is None:
        return None
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(run.base + run.server.metrics_path)
    except httpx.HTTPError:
        return None
    return batch_rows(r.text) if r.status_code == 200 else None


# ---------------------------------------------------------------------------------------------------
# latency bookkeeping over windows


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def pooled_pct(ws: list[Window], q: float) -> float:
    """The q-th percentile of every request in ``ws``: each latency counts ``latency_weight`` times (wrk
    windows hold quantiles standing for equal shares of their requests)."""
    if all(w.latency_weight == 1.0 for w in ws):
        return pct([x for w in ws for x in w.latencies_ms], q)
    values = np.array([x for w in ws for x in w.latencies_ms])
    if not values.size:
        return float("nan")
    weights = np.array([w.latency_weight for w in ws for _ in w.latencies_ms])
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][min(int(np.searchsorted(cum, q / 100 * cum[-1])), len(cum) - 1)])


def usable(ws: list[Window], max_other: float) -> tuple[list[Window], bool]:
    """The clean windows (other processes below ``max_other`` cores), or every window and True (contended)
    when none is clean."""
    clean = [w for w in ws if w.other_cores < max_other]
    return (clean, False) if clean else (ws, True)


def closed_stats(all_ws: list[Window], max_other: float) -> dict[str, Any]:
    ws, contended = usable(all_ws, max_other)
    rps = [w.rps for w in ws]
    batches = [w.mean_batch for w in ws if w.mean_batch is not None]
    return {
        "rps": statistics.median(rps),
        "low": min(rps),
        "high": max(rps),
        "p50": pooled_pct(ws, 50),
        "p90": pooled_pct(ws, 90),
        "p95": pooled_pct(ws, 95),
        "p99": pooled_pct(ws, 99),
        "errors": sum(w.errors for w in ws),
        "sent": sum(w.sent for w in ws),
        "client": statistics.median(w.client_cores for w in ws),
        "server": statistics.median(w.server_cores for w in ws),
        "other": max(w.other_cores for w in all_ws),
        "batch": statistics.mean(batches) if batches else None,
        "clean": f"{0 if contended else len(ws)}/{len(all_ws)}",
        "contended": contended,
    }


# ---------------------------------------------------------------------------------------------------
# one server for one round


@dataclass
class ServerResult:
    closed: dict[int, list[Window]] = field(default_factory=dict)
    opened: dict[float, list[Window]] = field(default_factory=dict)
    skipped_rates: dict[float, int] = field(default_factory=dict)  # rate -> rounds skipped (saturated before)
    check: str = ""
    why_not: str = ""
    ready_s: list[float] = field(default_factory=list)  # process start -> health check 200, per round


def _saturated(w: Window) -> bool:
    """Open loop: the server fell behind the arrivals, or failed or left unanswered more than 1 % of them."""
    return w.rps < SATURATED_FRACTION * (w.arrived or 0.0) or w.errors > 0.01 * max(w.sent, 1)


async def check_outputs(run: Running, p: Prepared, reference: np.ndarray, n: int) -> str:
    """Compare the server's answers for the first ``n`` items with the champion Runner run offline."""
    got = []
    async with _client(30.0) as client:
        for body in run.server.bodies[:n]:
            r = await client.post(
                run.base + run.server.infer_path, content=body, headers={"content-type": "application/json"}
            )
            if r.status_code != 200:
                raise RuntimeError(f"answered HTTP {r.status_code} to a valid request: {r.text[:200]}")
            got.append(run.server.read(r.content))
    out = np.stack(got)
    if p.kind == "digits":
        agree = float(np.mean(out.argmax(axis=1) == reference[:n].argmax(axis=1)))
        return f"top-1 agreement with the champion offline: {agree:.3f} on {n} images"
    a = out / np.linalg.norm(out, axis=1, keepdims=True)
    b = reference[:n] / np.linalg.norm(reference[:n], axis=1, keepdims=True)
    return f"cosine to the champion offline: min {float(np.min(np.sum(a * b, axis=1))):.4f} on {n} sentences"


async def session(
    run: Running, p: Prepared, res: ServerResult, args: argparse.Namespace, reference: np.ndarray, rnd: int
) -> None:
    if not res.check:
        res.check = await check_outputs(run, p, reference, args.check_items)
    wrk: Wrk | None = args.wrk
    bodies = bodies_file(run, args.bodies_dir) if wrk is not None else ""

    async def closed(c: int, warmup_s: float, window_s: float) -> Window:
        if wrk is None:
            return await closed_loop(run, c, warmup_s=warmup_s, window_s=window_s, timeout_s=args.timeout_s)
        return await asyncio.to_thread(
            wrk_closed_loop,
            wrk,
            run,
            c,
            warmup_s=warmup_s,
            window_s=window_s,
            timeout_s=args.timeout_s,
            bodies=bodies,
        )

    await closed(8, args.start_warmup_s, 0.0)
    for c in args.concurrency:
        before = await scrape(run)
        w = await closed(c, args.warmup_s, args.window_s)
        after = await scrape(run)
        if before is not None and after is not None and after[1] > before[1]:
            w.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
        res.closed.setdefault(c, []).append(w)
        log(f"    C={c:<3} {w.rps:8.1f} req/s  p99 {pooled_pct([w], 99):8.1f} ms  errors {w.errors}/{w.sent}")
    saturated = False
    for rate in args.rates:
        if saturated:
            res.skipped_rates[rate] = res.skipped_rates.get(rate, 0) + 1
            continue
        w = await open_loop(
            run,
            rate,
            warmup_s=args.warmup_s,
            window_s=args.open_window_s,
            drain_s=args.drain_s,
            timeout_s=args.timeout_s,
            connections=max(args.concurrency),
            seed=rnd * 1000 + int(rate),
        )
        res.opened.setdefault(rate, []).append(w)
        saturated = _saturated(w)
        log(
            f"    {rate:5.0f}/s offered -> {w.rps:7.1f}/s  p99 {pct(w.latencies_ms, 99):8.1f} ms  failed {w.errors}/{w.sent}"
        )
