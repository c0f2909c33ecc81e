"""The load generator of bench/serve_load.py: closed-loop and open-loop requests against one running server,
latencies and their percentiles, the CPU the client, the server and every other process used per measured
window, and one server's session of windows in a round."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from common import OtherLoad, log
from serve_procs import Prepared, Running

SATURATED_FRACTION = 0.9  # open loop: achieved below this share of the offered rate = saturated


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


def usable(ws: list[Window], max_other: float) -> tuple[list[Window], bool]:
    """The clean windows (other processes below ``max_other`` cores), or every window and True (contended)
    when none is clean."""
    clean = [w for w in ws if w.other_cores < max_other]
    return (clean, False) if clean else (ws, True)


def closed_stats(all_ws: list[Window], max_other: float) -> dict[str, Any]:
    ws, contended = usable(all_ws, max_other)
    lat = [x for w in ws for x in w.latencies_ms]
    rps = [w.rps for w in ws]
    batches = [w.mean_batch for w in ws if w.mean_batch is not None]
    return {
        "rps": statistics.median(rps),
        "low": min(rps),
        "high": max(rps),
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
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
    await closed_loop(run, 8, warmup_s=args.start_warmup_s, window_s=0.0, timeout_s=args.timeout_s)
    for c in args.concurrency:
        before = await scrape(run)
        w = await closed_loop(
            run, c, warmup_s=args.warmup_s, window_s=args.window_s, timeout_s=args.timeout_s
        )
        after = await scrape(run)
        if before is not None and after is not None and after[1] > before[1]:
            w.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
        res.closed.setdefault(c, []).append(w)
        log(
            f"    C={c:<3} {w.rps:8.1f} req/s  p99 {pct(w.latencies_ms, 99):8.1f} ms  errors {w.errors}/{w.sent}"
        )
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
