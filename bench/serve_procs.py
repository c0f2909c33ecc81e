"""The servers bench/serve_load.py compares: the prepared model they serve, how to start each (command line,
environment, health and inference paths), what to send and how to read the answer, and the running process
with its CPU use."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
LITSERVE_PY = HERE / ".venv-litserve" / "bin" / "python"
KSERVE_PY = HERE / ".venv-kserve" / "bin" / "python"
PEERS = HERE / "serve_peers.py"


# ---------------------------------------------------------------------------------------------------
# the model the servers serve: a champion from the bench home and the inputs to send


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
    champion_file: bool = True  # serves the registry champion's ONNX file (False: another model)


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
    ours_bodies = [_ours_body(p, it) for it in p.items]
    threads = str(os.cpu_count() or 1)
    fa = [str(VENV_BIN / "python"), str(PEERS), "fastapi", "--kind", p.kind, "--port", str(port)]
    fa += ["--weights", str(p.weights)] if p.kind == "digits" else ["--model-dir", str(p.model_dir)]

    def onnx_peer(python: Path, sub: str, threads: str) -> list[str]:
        argv = [str(python), str(PEERS), sub, "--kind", p.kind, "--port", str(port)]
        argv += ["--onnx", str(p.candidate.path), "--threads", threads]
        return argv + (["--tokenizer", str(p.candidate.tokenizer_dir)] if p.kind == "text" else [])

    fa_async = onnx_peer(VENV_BIN / "python", "fastapi-async", threads)
    ls = onnx_peer(LITSERVE_PY, "litserve", str(max(1, (os.cpu_count() or 1) // args.litserve_workers)))
    ls += ["--max-batch-size", str(args.litserve_max_batch_size)]
    ls += ["--batch-timeout-s", str(args.litserve_batch_timeout_s), "--workers", str(args.litserve_workers)]
    ks = [*onnx_peer(KSERVE_PY, "kserve", threads), "--name", p.name]
    ours = [
        str(VENV_BIN / "modelyard"),
        "serve",
        f"{p.name}@champion",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    infer_path = f"/v2/models/{p.name}/infer"
    servers = {
        "fastapi": Server(
            "fastapi", fa, env, "/health", "/predict", peer_bodies, _peer_read(p), champion_file=False
        ),
        "fastapi-async": Server(
            "fastapi-async", fa_async, env, "/health", "/predict", peer_bodies, _peer_read(p)
        ),
        "litserve": Server("litserve", ls, env, "/health", "/predict", peer_bodies, _peer_read(p)),
        "kserve": Server("kserve", ks, env, "/v2/health/ready", infer_path, ours_bodies, _ours_read(p)),
        "ours": Server(
            "ours",
            ours,
            {**env, "MODELYARD_HOME": str(home)},
            "/v2/health/ready",
            infer_path,
            ours_bodies,
            _ours_read(p),
            metrics_path="/metrics",
        ),
    }
    for name, python, script in (
        ("litserve", LITSERVE_PY, "setup_litserve.sh"),
        ("kserve", KSERVE_PY, "setup_kserve.sh"),
    ):
        if not python.is_file():
            venv = python.parent.parent.name
            servers[name].why_not = f"not run: bench/{venv} is missing; create it with `bash bench/{script}`"
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
        """SIGTERM the process group, then wait until every process of it has exited, not only the first: a
        worker that outlives its parent (LitServe's did, spinning a core for seconds) would load the machine
        while the next server is measured. SIGKILL what is left after 20 s."""
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=20)
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pr in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    pr.kill()
            psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()
