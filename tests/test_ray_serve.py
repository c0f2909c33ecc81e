"""`modelyard serve --ray auto`: the same server as a Ray Serve deployment answers tritonclient exactly as the
single-process server does, counts its requests in /metrics, fills the prediction log, and stops cleanly on
SIGTERM; bad Ray options fail in one line without starting (or importing) Ray.

Ray binds and dials the machine's own address and probes a public one to find it, so the Ray run happens in a
fresh network namespace with only loopback up: this file re-executes itself there (``unshare -n``, as root) as
the driver, and the test is skipped where namespaces are unavailable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.registry import Registry
from tests.helpers.cli import assert_one_line_error
from tests.helpers.models import make_blobs
from tests.helpers.netns import namespace_problem
from tests.helpers.serving import MODEL, build_blobs_registry, free_port, server_process, settings_for

DEADLINE_S = 120.0  # Ray's start takes 10-30 s on 2 busy cores
ROOT = Path(__file__).resolve().parent.parent
API_KEY = "ray-serve-test-key"
INFER_ENDPOINT = 'endpoint="/v2/models/{name}/infer"'


# ---------------------------------------------------------------------------------------------------
# the driver, run inside the network namespace


def _drive(url: str, prefix: str, x: np.ndarray, headers: dict[str, str]) -> dict[str, Any]:
    """What tritonclient gets from the server at ``url``: health, metadata, config, and binary and JSON
    inference of ``x`` (request ids ``PREFIX-binary`` / ``PREFIX-json``)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    got: dict[str, Any] = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(MODEL, headers=headers),
        "metadata": client.get_model_metadata(MODEL, headers=headers),
        "config": client.get_model_config(MODEL, headers=headers),
    }
    for binary in (True, False):
        inp = triton.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
        rid = f"{prefix}-{'binary' if binary else 'json'}"
        # a copy: tritonclient writes Inference-Header-Content-Length into the dict it is given
        result = client.infer(MODEL, [inp], outputs=outs, request_id=rid, headers=dict(headers))
        response = result.get_response()
        got[rid] = {
            "id": response["id"],
            "model_version": response["model_version"],
            "logits": result.as_numpy("logits").tolist(),
            "probabilities": result.as_numpy("probabilities").tolist(),
        }
    client.close()
    return got


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + DEADLINE_S
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        assert time.monotonic() < deadline, (
            f"Ray Serve not ready before the deadline:\n{log.read_text()[-3000:]}"
        )
        with contextlib.suppress(subprocess.TimeoutExpired):  # wait a little, or return at once if it died
            proc.wait(0.1)
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not printed:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


def _driver(home: Path, out: Path) -> None:
    """Serve ``blobs:1`` on Ray Serve and in one process at once, drive both with tritonclient, stop the Ray one
    with SIGTERM; write what the test compares to ``out``."""
    import httpx

    x = make_blobs(n=8, seed=3)[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = out.parent / "ray-serve.log"
    cmd = [sys.executable, "-m", "modelyard.cli", "serve", f"{MODEL}:1", "--ray", "auto"]
    cmd += ["--replicas", "1", "--replica-cpus", "1", "--port", str(port), "--home", str(home)]
    env = {**os.environ, "MODELYARD_API_KEY": API_KEY}  # auth on for the Ray server only
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
    try:
        # the single-process server starts while Ray does; its own prediction log keeps the counts apart
        with server_process(
            home, out.parent, f"{MODEL}:1", "--monitor-db", str(out.parent / "local.db")
        ) as local:
            expected = _drive(local.url, "local", x, {})
        _wait_ready(url, proc, log)
        got = _drive(url, "ray", x, auth)
        no_key = httpx.get(f"{url}/v2/models/{MODEL}", timeout=30)
        oip_id = httpx.post(
            f"{url}/v2/models/{MODEL}/infer",
            json={
                "id": "oip-1",
                "inputs": [{"name": "features", "shape": [1, 6], "datatype": "FP32", "data": [0.5] * 6}],
            },
            headers=auth,
            timeout=30,
        )
        metrics = httpx.get(f"{url}/metrics", headers=auth, timeout=30).text
        _wait_for_line(
            log, f"serving {MODEL} v1 on Ray Serve", proc
        )  # printed once the deployment runs (the models load after that)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(DEADLINE_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(DEADLINE_S)
    with contextlib.closing(sqlite3.connect(home / "monitor.db")) as db:
        logged = sorted(
            r[0] for r in db.execute("SELECT request_id FROM predictions WHERE model = ?", (MODEL,))
        )
    out.write_text(
        json.dumps(
            {
                "rc": rc,
                "output": log.read_text(errors="replace"),
                "port": port,
                "expected": expected,
                "got": got,
                "no_key": [no_key.status_code, no_key.json()],
                "oip_status": oip_id.status_code,
                "oip_request_ids": oip_id.headers.get_list("x-request-id"),
                "metrics": metrics,
                "logged": logged,
            }
        )
    )


# ---------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("ray-serve-home"), onnx_classifier)


@pytest.mark.slow
def test_ray_serve_answers_tritonclient_like_the_single_process_server(
    tmp_path: Path, registry: Registry
) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    problem = namespace_problem()
    if problem:
        pytest.skip(problem)
    home = registry.home
    out = tmp_path / "result.json"
    env = {**os.environ, "MODELYARD_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MODELYARD_API_KEY", None)
    cmd = f'ip link set lo up && exec "{sys.executable}" -m tests.test_ray_serve "{home}" "{out}"'
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    expected, got = r["expected"], r["got"]
    # the same Open Inference Protocol surface, the same answers, bit for bit
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["metadata"] == expected["metadata"] and got["metadata"]["versions"] == ["1"]
    assert got["config"] == expected["config"]
    for kind in ("binary", "json"):
        mine, theirs = got[f"ray-{kind}"], expected[f"local-{kind}"]
        assert mine["id"] == f"ray-{kind}" and mine["model_version"] == "1"
        assert np.asarray(mine["logits"]).shape == (8, 3)
        assert mine["logits"] == theirs["logits"], kind
        assert mine["probabilities"] == theirs["probabilities"], kind
    # the API key is required as by the single-process server
    assert r["no_key"][0] == 401 and "error" in r["no_key"][1]
    # one x-request-id per answer (Ray's proxy adds its own; the server's, the OIP id, is kept)
    assert r["oip_status"] == 200 and r["oip_request_ids"] == ["oip-1"]
    # /metrics of the (only) replica counted exactly the three inference requests
    infer = [ln for ln in r["metrics"].splitlines() if ln.startswith("modelyard_inference_requests_total{")]
    counted = [ln for ln in infer if INFER_ENDPOINT in ln and 'code="200"' in ln and f'model="{MODEL}"' in ln]
    assert len(counted) == 1 and float(counted[0].split()[-1]) == 3.0, infer
    # every answered request is in the shared prediction log, written before the replica stopped
    assert r["logged"] == ["oip-1", "ray-binary", "ray-json"]
    # SIGTERM: drained, Serve and Ray shut down, exit 0, one closing line
    output = r["output"]
    assert r["rc"] == 0, output
    assert "Traceback" not in output
    assert f"serving {MODEL} v1 on Ray Serve at http://127.0.0.1:{r['port']}/v2" in output
    assert "1 replica x 1 CPU, 1 thread each" in output and "API key required" in output
    assert API_KEY not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("stopped: served") and last.endswith("Serve and Ray shut down cleanly"), output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--replicas", "2"], "--replicas needs --ray auto|ADDRESS"),
        (["--autoscale", "1:2", "--replica-cpus", "1"], "--replica-cpus, --autoscale need --ray"),
        (["--ray", "auto", "--replicas", "0"], "--replicas must be an integer >= 1, got 0"),
        (["--ray", "auto", "--replicas", "two"], "--replicas must be an integer, got 'two'"),
        (["--ray", "auto", "--replica-cpus", "0"], "--replica-cpus must be a number of CPUs > 0"),
        (["--ray", "auto", "--replica-cpus", "inf"], "--replica-cpus must be a finite number"),
        (["--ray", "auto", "--autoscale", "4"], "--autoscale must be MIN:MAX replicas"),
        (["--ray", "auto", "--autoscale", "3:1"], "--autoscale needs integers 1 <= MIN <= MAX, got '3:1'"),
        (["--ray", "auto", "--autoscale", "0:2"], "1 <= MIN <= MAX"),
        (["--ray", "auto", "--replicas", "2", "--autoscale", "1:3"], "--replicas and --autoscale contradict"),
        (["--ray", "auto", "--target-ongoing-requests", "4"], "--target-ongoing-requests needs --autoscale"),
        (["--ray", "auto", "--autoscale", "1:2", "--target-ongoing-requests", "-1"], "must be a number > 0"),
        (["--ray", "  "], "--ray needs 'auto' or a Ray cluster address"),
    ],
)
def test_bad_ray_options_are_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    from modelyard.cli import main

    assert_one_line_error(main(["serve", *args]), capsys.readouterr().err, match)
    assert not home.exists()  # failed before the registry was opened


def test_busy_port_or_too_few_cpus_fail_before_ray_starts(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from modelyard.cli import main

    base = ["serve", f"{MODEL}:1", "--ray", "auto", "--home", str(registry.home)]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        code = main([*base, "--port", port])
        assert_one_line_error(code, capsys.readouterr().err, f"cannot listen on 127.0.0.1:{port}")
    code = main([*base, "--port", str(free_port()), "--replica-cpus", "100000"])
    assert_one_line_error(code, capsys.readouterr().err, "needs 100000 CPUs but this machine has")
    import ray

    assert not ray.is_initialized()


def test_ray_serve_not_installed_is_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where the extra is not installed
    code = main(["serve", "--ray", "auto"])
    assert_one_line_error(code, capsys.readouterr().err, "pip install 'modelyard[ray]'")
    assert not home.exists()


def test_serve_without_ray_never_imports_it() -> None:
    code = (
        "import sys\n"
        "from modelyard.cli import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(main(['serve', '--ray', 'auto', '--autoscale', '0:1']))\n"
        "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for option in ("--ray", "--replicas", "--replica-cpus", "--autoscale", "--target-ongoing-requests"):
        assert option in proc.stdout, option
    assert proc.stdout.strip().splitlines()[-2:] == ["2", "False"]


def test_options_describe_the_deployment() -> None:
    from modelyard.scale.ray_serve import RayServeOptions, parse_options

    assert parse_options(None) is None
    fixed = parse_options("auto", replicas="2", replica_cpus="1.5")
    assert fixed is not None and fixed.least_replicas == 2 and fixed.threads == 1 and not fixed.autoscaling
    assert fixed.describe() == "2 replicas x 1.5 CPUs, 1 thread each"
    scaled = parse_options("ray://head:10001", autoscale=" 2:5 ", target_ongoing_requests="8")
    assert scaled == RayServeOptions(
        address="ray://head:10001", min_replicas=2, max_replicas=5, target_ongoing_requests=8.0
    )
    assert scaled.least_replicas == 2 and scaled.threads == 1
    assert (
        scaled.describe()
        == "2..5 replicas (autoscaling, 8 ongoing requests per replica) x 1 CPU, 1 thread each"
    )
    assert RayServeOptions(replica_cpus=4).describe() == "1 replica x 4 CPUs, 4 threads each"


def test_replica_builds_the_server_app_with_its_threads(registry: Registry) -> None:
    """What a replica runs, without Ray: create_app for the settings, threads from its CPUs unless
    MODELYARD_THREADS set them; the app's lifespan loads the model."""
    import httpx

    from modelyard.scale.ray_serve import ModelyardReplica

    settings = settings_for(registry, threads=None, monitor=False)
    assert ModelyardReplica(settings, 3).settings.threads == 3
    assert ModelyardReplica(settings_for(registry), 3).settings.threads == 1  # MODELYARD_THREADS=1 wins

    async def check() -> dict[str, Any]:
        app = ModelyardReplica(settings, 2).__serve_build_asgi_app__()
        assert app.state.serve.settings.threads == 2
        async with app.router.lifespan_context(app):
            assert await asyncio.to_thread(app.state.serve.loaded.wait, DEADLINE_S)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
                return (await client.get(f"/v2/models/{MODEL}")).json()

    assert asyncio.run(check())["versions"] == ["1"]


def test_proxy_keeps_the_servers_request_id_only() -> None:
    from modelyard.scale.ray_proxy import OneRequestId

    sent: list[dict[str, Any]] = []

    async def app(
        scope: Any, receive: Any, send: Any
    ) -> None:  # the server's id, then Ray's proxy appends one
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"mine")]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*headers, (b"X-Request-ID", b"ray")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(OneRequestId(app)({"type": "http"}, receive, send))
    assert sent[0]["headers"] == [(b"content-type", b"application/json"), (b"x-request-id", b"mine")]
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}


if __name__ == "__main__":
    _driver(Path(sys.argv[1]), Path(sys.argv[2]))
