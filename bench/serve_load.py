"""Serving under load: modelyard's server vs a tutorial FastAPI + PyTorch endpoint vs LitServe.

Servers (one at a time, each in its own process; the load generator runs in this process):

- ``fastapi``   (a) a plain FastAPI + PyTorch fp32 endpoint written the way a tutorial does it: a sync
                ``def`` endpoint, ``model(x)`` once per request, JSON lists in and out (bench/serve_peers.py).
- ``litserve``  (b) LitServe serving the same ONNX file as ours with ONNX Runtime and its batching on
                (``max_batch_size``, ``batch_timeout``), in bench/.venv-litserve (bench/setup_litserve.sh).
- ``ours``      ``modelyard serve NAME@champion``, OIP v2 JSON ``/v2/models/NAME/infer``, asking for the one
                output the peers return (``probabilities`` or ``embedding``).

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

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py [--quick]`` (see bench/README.md). Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import OtherLoad, json_line, log, markdown_table, rounded

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
WORK = OUT / "serve_load"
VENV_BIN = Path(sys.executable).parent
LITSERVE_PY = HERE / ".venv-litserve" / "bin" / "python"
PEERS = HERE / "serve_peers.py"

SERVERS = ("fastapi", "litserve", "ours")
SERVER_TITLES = {
    "fastapi": "(a) FastAPI + PyTorch fp32, sync endpoint, one call per request",
    "litserve": "(b) LitServe + ONNX Runtime, LitServe batching",
    "ours": "ours: modelyard serve (OIP v2 JSON)",
}
MODELS = {  # demo key -> (registry name, recipes, kind)
    "digits": ("digits-cnn", ["onnx"], "digits"),
    "minilm": ("all-minilm-l6-v2", ["onnx", "onnx > int8-dynamic"], "text"),
}
CLIENT_BOUND_CORES = 0.9  # a Python client near one full core is itself the bottleneck
SATURATED_FRACTION = 0.9  # open loop: achieved below this share of the offered rate = saturated


# ---------------------------------------------------------------------------------------------------
# the bench home: demos through the pipeline, an ONNX champion each


@dataclass
class Prepared:
    key: str
    kind: str  # "digits" or "text"
    name: str  # registry name
    version: int
    served: Any  # modelyard.serve.model.ServedModel: the champion's Runner, files under bench/out/serve_load/models/
    evidence: dict[str, Any]  # the version's registry evidence (measurements, verdict)
    items: list[Any]  # one request's input each: a (1, 8, 8) float32 image or a sentence
    weights: Path | None = None  # digits: the baseline's safetensors (the FastAPI peer's PyTorch model)
    model_dir: Path | None = None  # text: the sentence-transformers folder (the FastAPI peer's model)
    note: str = ""

    @property
    def candidate(self) -> Any:
        return self.served.candidate

    @property
    def runner(self) -> Any:
        return self.served.runner


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

    def speed(v: dict[str, Any]) -> float:
        m = v["evidence"]["measurements"].get("efficiency.throughput_best", {})
        return float(m.get("value") or 0.0)

    passing = [v for v in onnx if v["evidence"].get("verdict", {}).get("passed")]
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
# servers: how to start each, what to send, how to read the answer


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_path: str
    infer_path: str
    bodies: list[bytes]
    read: Callable[[bytes], np.ndarray]  # response body -> the output vector
    metrics_path: str | None = None
    why_not: str = ""  # non-empty: not run


def _peer_body(p: Prepared, item: Any) -> bytes:
    if p.kind == "text":
        return json.dumps({"text": item}).encode()
    return json.dumps({"inputs": [np.asarray(item, dtype=np.float32).reshape(-1).tolist()]}).encode()


def _peer_read(p: Prepared) -> Callable[[bytes], np.ndarray]:
    key = "embedding" if p.kind == "text" else "probabilities"
    return lambda body: np.asarray(json.loads(body)[key], dtype=np.float32).reshape(-1)


def _ours_body(p: Prepared, item: Any) -> bytes:
    if p.kind == "text":
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [item]}]
        wanted = "embedding"
    else:
        x = np.asarray(item, dtype=np.float32)
        name = p.candidate.spec.inputs[0].name
        inputs = [{"name": name, "datatype": "FP32", "shape": [1, *x.shape], "data": x.reshape(-1).tolist()}]
        wanted = "probabilities"
    return json.dumps({"inputs": inputs, "outputs": [{"name": wanted}]}).encode()


def _ours_read(p: Prepared) -> Callable[[bytes], np.ndarray]:
    wanted = "embedding" if p.kind == "text" else "probabilities"

    def read(body: bytes) -> np.ndarray:
        outs = {o["name"]: o for o in json.loads(body)["outputs"]}
        return np.asarray(outs[wanted]["data"], dtype=np.float32).reshape(-1)

    return read


def ours_available() -> str:
    """Empty when ``modelyard serve`` exists in this checkout, else why not."""
    exe = VENV_BIN / "modelyard"
    if not exe.is_file():
        return f"not run: {exe} is missing; install the project into its venv (make venv)"
    proc = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return "not run: `modelyard serve` is not available in this checkout"
    return ""


def make_servers(p: Prepared, port: int, args: argparse.Namespace, home: Path) -> dict[str, Server]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    peer_bodies = [_peer_body(p, it) for it in p.items]
    fa = [str(VENV_BIN / "python"), str(PEERS), "fastapi", "--kind", p.kind, "--port", str(port)]
    fa += ["--weights", str(p.weights)] if p.kind == "digits" else ["--model-dir", str(p.model_dir)]
    ls = [str(LITSERVE_PY), str(PEERS), "litserve", "--kind", p.kind, "--port", str(port)]
    ls += ["--onnx", str(p.candidate.path), "--max-batch-size", str(args.litserve_max_batch_size)]
    ls += ["--batch-timeout-s", str(args.litserve_batch_timeout_s), "--workers", str(args.litserve_workers)]
    ls += ["--threads", str(max(1, (os.cpu_count() or 1) // args.litserve_workers))]
    if p.kind == "text":
        ls += ["--tokenizer", str(p.candidate.tokenizer_dir)]
    ours = [
        str(VENV_BIN / "modelyard"),
        "serve",
        f"{p.name}@champion",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    servers = {
        "fastapi": Server("fastapi", fa, env, "/health", "/predict", peer_bodies, _peer_read(p)),
        "litserve": Server("litserve", ls, env, "/health", "/predict", peer_bodies, _peer_read(p)),
        "ours": Server(
            "ours",
            ours,
            {**env, "MODELYARD_HOME": str(home)},
            "/v2/health/ready",
            f"/v2/models/{p.name}/infer",
            [_ours_body(p, it) for it in p.items],
            _ours_read(p),
            metrics_path="/metrics",
        ),
    }
    if not LITSERVE_PY.is_file():
        servers[
            "litserve"
        ].why_not = "not run: bench/.venv-litserve is missing; create it with `bash bench/setup_litserve.sh`"
    servers["ours"].why_not = args.ours_why_not
    return servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """One server process (in its own process group, so its workers stop with it) and its CPU meter."""

    def __init__(self, server: Server, port: int, log_file: Path) -> None:
        self.server = server
        self.base = f"http://127.0.0.1:{port}"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self._log = log_file.open("wb")
        self.proc = subprocess.Popen(
            server.argv,
            env=server.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with code {self.proc.returncode}; {self._tail()}")
                try:
                    if client.get(self.base + self.server.health_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"not ready within {deadline_s:.0f} s; {self._tail()}")

    def _tail(self) -> str:
        self._log.flush()
        lines = self.log_file.read_text(errors="replace").strip().splitlines()
        return f"last log line: {lines[-1][:300]!r} (log: {self.log_file})" if lines else "no output"

    def cpu_s(self) -> float:
        """CPU seconds of the server process and all its children so far."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for pr in procs:
            try:
                t = pr.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


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
# one server for one round, then all rounds of one model


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
            f"    C={c:<3} {w.rps:8.1f} req/s  p99 {_pct(w.latencies_ms, 99):8.1f} ms  errors {w.errors}/{w.sent}"
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
            f"    {rate:5.0f}/s offered -> {w.rps:7.1f}/s  p99 {_pct(w.latencies_ms, 99):8.1f} ms  failed {w.errors}/{w.sent}"
        )


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
    cfg = choose_batching(p.evidence["measurements"], latency_budget_ms=budget)
    return {"max_batch_size": cfg.max_batch_size, "max_wait_s": cfg.max_wait_s, "why": cfg.why}


def run_model(p: Prepared, args: argparse.Namespace, home: Path) -> ModelResult:
    reference = offline_reference(p, args.check_items)
    results = {s: ServerResult() for s in args.servers}
    for rnd in range(1, args.rounds + 1):
        for name in args.servers:
            res = results[name]
            port = free_port()
            server = make_servers(p, port, args, home)[name]
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


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:,.1f}"


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
        "p50": _pct(lat, 50),
        "p95": _pct(lat, 95),
        "p99": _pct(lat, 99),
        "errors": sum(w.errors for w in ws),
        "sent": sum(w.sent for w in ws),
        "client": statistics.median(w.client_cores for w in ws),
        "server": statistics.median(w.server_cores for w in ws),
        "other": max(w.other_cores for w in all_ws),
        "batch": statistics.mean(batches) if batches else None,
        "clean": f"{0 if contended else len(ws)}/{len(all_ws)}",
        "contended": contended,
    }


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
                    _ms(_pct(lat, 50)),
                    _ms(_pct(lat, 99)),
                    f"{sum(w.errors for w in used)}/{sum(w.sent for w in used)}",
                    f"{statistics.median(w.client_cores for w in used):.2f}",
                ]
            )
    lines += [
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
    out["open_p99_ms"] = {
        m.p.key: {
            f"{rate:g}": {
                s: _num(
                    _pct(
                        [x for w in usable(r.opened[rate], m.max_other_load)[0] for x in w.latencies_ms], 99
                    ),
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
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: fastapi, litserve, ours")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--concurrency", default="1,8,32,64", help="closed-loop levels")
    p.add_argument("--rates", default="25,50,100,200", help="open-loop arrival rates, req/s")
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
    bad = [m for m in args.models if m not in MODELS] + [s for s in args.servers if s not in SERVERS]
    if bad:
        p.error(f"unknown model or server {bad}; models: {', '.join(MODELS)}; servers: {', '.join(SERVERS)}")
    if args.rounds < 1 or min(args.concurrency, default=0) < 1 or min(args.rates, default=0) <= 0:
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
    args.ours_why_not = ours_available() if "ours" in args.servers else ""
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
