"""The rollout controller on one real served run: ``modelyard serve`` of the digits champion on 127.0.0.1, a
bounded closed-loop load of real digits test items (labels posted by request id as they would arrive), then

1. a canary (``--percent`` of requests) of a ruined challenger (the output layer's rows rotated: fast, status
   200, wrong): the controller must roll it back;
2. a shadow rollout of an identical challenger (the champion's files registered again): it must be promoted
   and swapped in;

both at the policy's default ``[rollout]`` margins. It counts every client request that did not get a 200,
through both rollouts and the swap, and the requests each decision took. ``bench/rollout.py --served`` runs it
and puts ``failed_client_requests`` in its JSON line; alone: ``.venv/bin/python bench/rollout_served.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import json_line, log
from serve_load import prepare
from serve_procs import free_port

HERE = Path(__file__).resolve().parent
WORK = HERE / "out" / "rollout_served"


def _register_variant(reg: Any, name: str, version: int, folder: Path, *, ruin: bool) -> int:
    """Register version ``version``'s files and evidence again as a new version: as they are, or with the output
    layer's rows rotated (class k answered as class k + 1)."""
    import onnx
    from onnx import numpy_helper

    from modelyard.registry import VersionEntry

    src = reg.materialize(name, version, folder / f"src-{ruin}")
    out = folder / ("ruined" if ruin else "identical")
    out.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, out / f.name)
    if ruin:
        path = next(out.glob("*.onnx"))
        model = onnx.load(str(path))
        classes = len(reg.get_version(name, version)["manifest"].get("labels") or []) or 10
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.ndim >= 1 and arr.shape[0] == classes and init.name.endswith(("weight", "bias")):
                init.CopyFrom(numpy_helper.from_array(np.roll(arr, 1, axis=0).copy(), init.name))
        onnx.save(model, str(path))
    entry_name = "ruined" if ruin else "identical"
    manifest = {**reg.get_version(name, version)["manifest"], "name": entry_name}
    # with the champion's evidence, so the server batches it as it batches the champion (a version registered
    # without evidence runs one request at a time, which would make even an identical copy slower under load);
    # for the ruined copy that is the point: it looked as good offline
    evidence = reg.get_version(name, version)["evidence"]
    entry = VersionEntry(
        name=entry_name, files={p.name: p for p in out.iterdir()}, manifest=manifest, evidence=evidence
    )
    numbers = reg.register_run(
        name,
        [entry],
        run_id=f"bench-{entry_name}-{time.time_ns()}",
        champion=None,
        reason="bench/rollout_served",
    )
    return int(numbers[entry_name])


class Load:
    """``clients`` threads in a closed loop; every answered request's label is posted by its id."""

    def __init__(self, url: str, name: str, bodies: list[bytes], labels: list[int], clients: int) -> None:
        self.url, self.name, self.bodies, self.labels = url, name, bodies, labels
        self.clients = clients
        self.sent = self.failed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, k: int) -> None:
        i = k
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not self._stop.is_set():
                j = i % len(self.bodies)
                i += self.clients
                try:
                    r = c.post(
                        f"/v2/models/{self.name}/infer",
                        content=self.bodies[j],
                        headers={"content-type": "application/json"},
                    )
                    ok = r.status_code == 200
                    why = "" if ok else f"{r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.sent += 1
                    if not ok:
                        self.failed += 1
                        self.failures.append(why)
                if ok:
                    rid = r.headers.get("x-request-id")
                    # the label arrives later, by id (a failed post is the label's loss, not the client's)
                    with contextlib.suppress(httpx.HTTPError):
                        c.post(f"/v2/models/{self.name}/feedback", json={"id": rid, "label": self.labels[j]})


def _wait(check: Any, what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def _rollout(url: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/v2/models/{name}/rollout", json=body, timeout=30.0)
    if r.status_code != 201:
        raise RuntimeError(f"starting the rollout failed: {r.status_code} {r.text}")
    return dict(r.json())


def _ended(url: str, name: str) -> dict[str, Any] | None:
    r = httpx.get(f"{url}/v2/models/{name}/rollout", timeout=30.0)
    view = r.json() if r.status_code == 200 else None
    return view if view and view.get("state") != "running" else None


def served_run(*, percent: float = 20.0, clients: int = 8, timeout_s: float = 300.0) -> dict[str, Any]:
    """The served run; returns the decisions, requests to each and the failed client requests."""
    from modelyard.registry import Registry
    from modelyard.zoo.demos import load_demo

    cache = WORK / "prepared"
    p = prepare("digits", cache)  # the digits demo's ONNX champion (built once, kept)
    labels = [int(y) for y in load_demo("digits", cache).dataset.y_test]
    home = WORK / "run"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(cache, home, ignore=shutil.ignore_patterns("monitor.db*", "models"))
    reg = Registry(home)
    scratch = WORK / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    ruined = _register_variant(reg, p.name, p.version, scratch, ruin=True)
    identical = _register_variant(reg, p.name, p.version, scratch, ruin=False)
    input_name = p.candidate.spec.inputs[0].name
    bodies = []
    for x in p.items:
        arr = np.asarray(x, dtype=np.float32)
        tensor = {
            "name": input_name,
            "datatype": "FP32",
            "shape": [1, *arr.shape],
            "data": arr.ravel().tolist(),
        }
        bodies.append(json.dumps({"inputs": [tensor]}).encode())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(Path(sys.executable).parent / "modelyard"),
        "serve",
        p.name,
        "--home",
        str(home),
        "--port",
        str(port),
    ]
    log_path = WORK / "server.log"
    out: dict[str, Any] = {"percent": percent, "clients": clients, "champion": p.version}
    with log_path.open("w") as server_log:
        proc = subprocess.Popen(argv, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: _ready(url) or _exited(proc, log_path), "ready server", 120.0)
            with Load(url, p.name, bodies, labels, clients) as load:
                _wait(lambda: load.sent >= 200, "warm-up traffic", 60.0)  # the champion's live baseline
                for step, body in (
                    ("canary_ruined", {"version": ruined, "mode": "canary", "percent": percent}),
                    ("shadow_identical", {"version": identical, "mode": "shadow"}),
                ):
                    log(f"  {step}: starting ...")
                    before = load.sent
                    t0 = time.monotonic()
                    _rollout(url, p.name, body)
                    view = _wait(lambda: _ended(url, p.name), f"decision on {step}", timeout_s)
                    out[step] = {
                        "state": view["state"],
                        "rollout_requests": view["requests"],
                        "client_requests": load.sent - before,
                        "seconds": round(time.monotonic() - t0, 1),
                        "reason": view["reason"],
                    }
                    log(
                        f"  {step}: {view['state']} after {view['requests']} requests ({view['reason'][:100]})"
                    )
                _, champion = reg.resolve(f"{p.name}@champion")
                # the swap: keep the load on until the server answers from the promoted version
                _wait(
                    lambda: _served_version(url, p.name, bodies[0]) == str(champion),
                    "the promoted version serving",
                    60.0,
                )
                _wait(lambda: load.sent >= before + 200, "traffic after the swap", 60.0)
            out.update(
                sent=load.sent,
                failed_client_requests=load.failed,
                failures=load.failures[:5],
                champion_after=champion,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out


def _exited(proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    if proc.poll() is None:
        return False
    raise RuntimeError(f"the server exited with code {proc.returncode}; see {log_path}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _served_version(url: str, name: str, body: bytes) -> str | None:
    """The version that answers an inference request now (the OIP answer's ``model_version``)."""
    r = httpx.post(
        f"{url}/v2/models/{name}/infer",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10.0,
    )
    return str(r.json().get("model_version")) if r.status_code == 200 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--percent", type=float, default=20.0, help="the canary's share of requests")
    ap.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    args = ap.parse_args()
    res = served_run(percent=args.percent, clients=args.clients)
    print(json.dumps(res, indent=2))
    print(json_line({"bench": "rollout_served", "failed_client_requests": res["failed_client_requests"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
