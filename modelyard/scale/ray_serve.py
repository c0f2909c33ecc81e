"""The server as a Ray Serve deployment (``modelyard serve --ray auto|ADDRESS``).

Each replica runs the same ASGI app as ``modelyard serve`` (:func:`modelyard.serve.app.create_app`: the Open
Inference Protocol surface, batching, metrics, auth, the prediction log), built inside the replica by
``serve.ingress`` (``__serve_build_asgi_app__``); Ray Serve runs the app's lifespan there, so each replica
loads its models in the background, answers ``/v2/health/ready`` 503 until they are warm, and drains on
shut-down as the single-process server does. Ray's HTTP proxy listens on the user's host and port.

A replica declares ``replica_cpus`` CPUs and sets ONNX Runtime's and torch's threads from them (Ray workers run
with ``OMP_NUM_THREADS=1``); ``MODELYARD_THREADS``, when set, wins. Replicas are a fixed number, or between
``min_replicas`` and ``max_replicas`` with Ray's autoscaler aiming at ``target_ongoing_requests`` per replica.
``/metrics`` and the in-memory state (batcher, cache, rollout counters) are per replica: a request answers from
the replica that served it; the prediction log (SQLite, WAL) is shared by every replica on the machine.

``auto`` starts a private Ray on this machine (127.0.0.1, no dashboard, token auth and usage stats off) and
stops it at the end; any other value is a running cluster's address, whose nodes must have modelyard installed
and see the home folder at the same path. Nothing here imports Ray before :func:`serve_on_ray` runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from modelyard.errors import ConfigError, ModelyardError, first_line
from modelyard.serve.settings import ServeSettings

__all__ = [
    "ModelyardReplica",
    "RayServeOptions",
    "RayServeRun",
    "import_ray_serve",
    "parse_autoscale",
    "parse_options",
    "replica_threads",
    "serve_on_ray",
]

log = logging.getLogger(__name__)

APP_NAME = "modelyard"
INSTALL_HINT = "pip install 'modelyard[ray]'"
# what a replica on a remote cluster must see of this environment (a local Ray's workers inherit all of it)
FORWARDED_ENV = ("MODELYARD_REGISTRY", "HF_HUB_OFFLINE", "MODELYARD_THREADS")
# a replica whose constructor fails twice fails the deployment: it is a configuration problem, not a fluke
CONSTRUCTOR_RETRIES = 2
PROXY_DEADLINE_S = 60.0
PROXY_POLL_S = 0.2
STOP_POLL_S = 0.5
# no access-log line per request in Ray's proxy and replica (it costs CPU on every request): the server's own
# /metrics and prediction log record each one; warnings and errors are still logged
SERVE_LOGGING = {"enable_access_log": False, "log_level": "WARNING"}
LOCAL_RAY_ENV = {  # a private cluster on loopback: no token, no usage report, one x-request-id per answer
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "modelyard.scale.ray_proxy:proxy_middlewares",
}


@dataclass(frozen=True)
class RayServeOptions:
    """Where and how wide the deployment runs. ``replicas``: a fixed count (None: 1); ``min_replicas`` and
    ``max_replicas`` (both set): autoscaling instead, aiming at ``target_ongoing_requests`` per replica (None:
    Ray's default). ``max_ongoing_requests`` None: the server's ``max_queue``, so the replica's own batcher and
    queue limit see the load instead of Ray's default of 5 requests per replica."""

    address: str = "auto"
    replicas: int | None = None
    replica_cpus: float = 1.0
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    max_ongoing_requests: int | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("invalid Ray Serve options: " + "; ".join(problems))

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    @property
    def least_replicas(self) -> int:
        """Replicas that run from the start (the fixed count, or the autoscaler's minimum)."""
        return self.min_replicas if self.min_replicas is not None else (self.replicas or 1)

    @property
    def threads(self) -> int:
        return replica_threads(self.replica_cpus)

    def describe(self, threads: int | None = None) -> str:
        """E.g. ``2 replicas x 1 CPU, 1 thread each`` or ``1..4 replicas (autoscaling) x 2 CPUs, ...``;
        ``threads``: what MODELYARD_THREADS set instead of the threads from the CPUs."""
        if self.autoscaling:
            count = f"{self.min_replicas}..{self.max_replicas} replicas (autoscaling"
            if self.target_ongoing_requests is not None:
                count += f", {self.target_ongoing_requests:g} ongoing requests per replica"
            count += ")"
        else:
            n = self.replicas or 1
            count = f"{n} replica{'s' if n != 1 else ''}"
        cpus = f"{self.replica_cpus:g} CPU{'s' if self.replica_cpus != 1 else ''}"
        threads = threads or self.threads
        return f"{count} x {cpus}, {threads} thread{'s' if threads != 1 else ''} each"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _problems(o: RayServeOptions) -> list[str]:
    p: list[str] = []
    if not isinstance(o.address, str) or not o.address.strip():
        p.append("--ray needs 'auto' or a Ray cluster address (ray://HOST:PORT or HOST:PORT)")
    if o.replicas is not None and (not _is_int(o.replicas) or o.replicas < 1):
        p.append(f"--replicas must be an integer >= 1, got {o.replicas!r}")
    if not _is_number(o.replica_cpus) or o.replica_cpus <= 0:
        p.append(f"--replica-cpus must be a number of CPUs > 0 (e.g. 1 or 0.5), got {o.replica_cpus!r}")
    if (o.min_replicas is None) != (o.max_replicas is None):
        p.append("autoscaling needs both the least and the most replicas (--autoscale MIN:MAX)")
    elif o.min_replicas is not None and o.max_replicas is not None:
        lo, hi = o.min_replicas, o.max_replicas
        if not (_is_int(lo) and _is_int(hi) and 1 <= lo <= hi):
            p.append(f"--autoscale needs integers 1 <= MIN <= MAX, got {lo!r}:{hi!r}")
        if o.replicas is not None:
            p.append("--replicas and --autoscale contradict each other; give one")
    if o.target_ongoing_requests is not None:
        if o.min_replicas is None:
            p.append("--target-ongoing-requests needs --autoscale MIN:MAX")
        if not _is_number(o.target_ongoing_requests) or o.target_ongoing_requests <= 0:
            p.append(f"--target-ongoing-requests must be a number > 0, got {o.target_ongoing_requests!r}")
    if o.max_ongoing_requests is not None and (
        not _is_int(o.max_ongoing_requests) or o.max_ongoing_requests < 1
    ):
        p.append(f"max_ongoing_requests must be an integer >= 1, got {o.max_ongoing_requests!r}")
    return p


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``; ConfigError in one line otherwise."""
    lo, sep, hi = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        bounds = int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"--autoscale must be MIN:MAX replicas, e.g. 1:4, got {text!r}") from None
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ConfigError(f"--autoscale needs integers 1 <= MIN <= MAX, got {text!r}")
    return bounds


def _number(option: str, text: str | None, kind: type[int] | type[float]) -> Any:
    if text is None:
        return None
    try:
        value = kind(text.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{option} must be {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, got {text!r}")
    return value


def parse_options(
    ray: str | None,
    *,
    replicas: str | None = None,
    replica_cpus: str | None = None,
    autoscale: str | None = None,
    target_ongoing_requests: str | None = None,
) -> RayServeOptions | None:
    """The command line's Ray Serve options (as typed) -> RayServeOptions, or None without ``--ray``;
    ConfigError in one line on a bad value or an option given without ``--ray``."""
    given = {
        "--replicas": replicas,
        "--replica-cpus": replica_cpus,
        "--autoscale": autoscale,
        "--target-ongoing-requests": target_ongoing_requests,
    }
    if ray is None:
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            verb = "needs" if len(stray) == 1 else "need"
            raise ConfigError(
                f"{', '.join(stray)} {verb} --ray auto|ADDRESS (they shape the Ray Serve deployment)"
            )
        return None
    values: dict[str, Any] = {"address": ray.strip()}
    if replicas is not None:
        values["replicas"] = _number("--replicas", replicas, int)
    if replica_cpus is not None:
        values["replica_cpus"] = _number("--replica-cpus", replica_cpus, float)
    if autoscale is not None:
        values["min_replicas"], values["max_replicas"] = parse_autoscale(autoscale)
    values["target_ongoing_requests"] = _number("--target-ongoing-requests", target_ongoing_requests, float)
    return RayServeOptions(**values)


def replica_threads(cpus: float) -> int:
    """Inference threads for a replica of ``cpus`` CPUs: the whole CPUs, at least one."""
    return max(1, math.floor(cpus))


# ---------------------------------------------------------------------------------------------------
# the replica (built by Ray in its worker process)


class ModelyardReplica:
    """One Ray Serve replica: the server app for ``settings``, its inference threads set from the replica's
    CPUs (``MODELYARD_THREADS``, carried in ``settings.threads``, wins)."""

    def __init__(self, settings: ServeSettings, threads: int) -> None:
        threads = settings.threads or threads
        if "torch" in sys.modules:  # the runners set their own threads; this covers torch code around them
            sys.modules["torch"].set_num_threads(threads)
        self.settings = replace(settings, threads=threads)

    def __serve_build_asgi_app__(self) -> Any:
        """The app, built in the replica; Ray Serve runs its lifespan (model loading, then draining)."""
        from modelyard.serve.app import create_app

        return create_app(self.settings)


def import_ray_serve() -> tuple[Any, Any]:
    """``(ray, ray.serve)``; ConfigError in one line, saying what to install, when Ray Serve is missing."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError(f"--ray needs Ray Serve, which is not installed: {INSTALL_HINT}") from None
    return ray, serve


def _deployment(serve: Any, settings: ServeSettings, options: RayServeOptions) -> Any:
    scaling: dict[str, Any]
    if options.autoscaling:
        auto: dict[str, Any] = {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas}
        if options.target_ongoing_requests is not None:
            auto["target_ongoing_requests"] = options.target_ongoing_requests
        scaling = {"autoscaling_config": auto}
    else:
        scaling = {"num_replicas": options.replicas or 1}
    actor: dict[str, Any] = {"num_cpus": options.replica_cpus}
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if env and options.address != "auto":
        actor["runtime_env"] = {"env_vars": env}
    dep = serve.deployment(
        serve.ingress()(ModelyardReplica),
        name=APP_NAME,
        ray_actor_options=actor,
        max_ongoing_requests=options.max_ongoing_requests or settings.max_queue,
        graceful_shutdown_timeout_s=max(1.0, settings.drain_timeout_s),
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        logging_config=SERVE_LOGGING,
        **scaling,
    )
    return dep.bind(settings, options.threads)


# ---------------------------------------------------------------------------------------------------
# the driver: start Ray (or join a cluster), deploy, wait for a signal, shut down


@dataclass
class RayServeRun:
    """What one :func:`serve_on_ray` did, for the closing summary."""

    address: str
    url: str
    options: RayServeOptions
    startup_s: float = 0.0
    served_s: float = 0.0
    stopped_cleanly: bool = False


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound here, or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve --host {host!r}: {exc}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop what listens there"
    return None


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment (where not set already), restored afterwards."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _start_ray(ray: Any, settings: ServeSettings, options: RayServeOptions) -> str | None:
    """``ray.init`` for ``options.address``; the private temp folder of a local Ray, or None."""
    if options.address != "auto":
        ray.init(address=options.address, log_to_driver=False, logging_level="WARNING")
        return None
    cpus = os.cpu_count() or 1
    need = options.least_replicas * options.replica_cpus
    if need > cpus:
        raise ConfigError(
            f"{options.describe()} needs {need:g} CPUs but this machine has {cpus}; "
            "lower --replicas/--autoscale or --replica-cpus"
        )
    problem = _port_problem(settings.host, settings.port)
    if problem:
        raise ConfigError(problem)
    temp_dir = tempfile.mkdtemp(prefix="myserve-", dir="/tmp")  # Ray's socket paths must stay short
    try:
        with _env(LOCAL_RAY_ENV):  # read by the processes ray.init starts, which every worker inherits
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_cpus=cpus,
                _temp_dir=temp_dir,
                log_to_driver=False,
                logging_level="WARNING",
            )
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


def _wait_for_proxy(serve: Any, settings: ServeSettings, stop: threading.Event) -> None:
    """Return once Ray's HTTP proxy is healthy; ConfigError when it is not within ``PROXY_DEADLINE_S``."""
    deadline = time.monotonic() + PROXY_DEADLINE_S
    states: list[str] = []
    while time.monotonic() < deadline and not stop.is_set():
        states = [str(getattr(st, "value", st)) for st in serve.status().proxies.values()]
        if "HEALTHY" in states:
            return
        stop.wait(PROXY_POLL_S)
    if not stop.is_set():
        raise ConfigError(
            f"Ray Serve's HTTP proxy on {settings.host}:{settings.port} is not up after {PROXY_DEADLINE_S:g} s "
            f"(state: {', '.join(states) or 'none'}); the port may be in use: choose another --port"
        )


def serve_on_ray(
    settings: ServeSettings,
    options: RayServeOptions,
    *,
    on_started: Callable[[RayServeRun], None] | None = None,
    stop: threading.Event | None = None,
) -> RayServeRun:
    """Deploy the server for ``settings`` on Ray Serve, call ``on_started`` once the deployment runs and the
    proxy listens, serve until SIGINT or SIGTERM (or until ``stop`` is set), then shut Serve and Ray down;
    raises ConfigError when Ray cannot start or the deployment fails. Models load in each replica after that:
    ``/v2/health/ready`` says when they are."""
    ray, serve = import_ray_serve()
    if ray.is_initialized():
        raise ConfigError("Ray is already initialized in this process")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no INFO lines on the console
    stop = stop or threading.Event()
    run = RayServeRun(options.address, f"http://{settings.host}:{settings.port}", options)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, on_signal)
    temp_dir = None
    t0 = time.perf_counter()
    try:
        try:
            temp_dir = _start_ray(ray, settings, options)
            for sig in previous:  # Ray's core worker installs its own SIGTERM handler (it aborts): ours again
                signal.signal(sig, on_signal)
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": settings.host, "port": settings.port},
                logging_config=SERVE_LOGGING,
            )
            serve.run(_deployment(serve, settings, options), name=APP_NAME, route_prefix="/")
            _wait_for_proxy(serve, settings, stop)
        except ModelyardError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"cannot deploy on Ray Serve at {options.address!r}: {first_line(exc, limit=300)}"
            ) from None
        run.startup_s = round(time.perf_counter() - t0, 3)
        if on_started is not None and not stop.is_set():
            on_started(run)
        t1 = time.perf_counter()
        while not stop.wait(STOP_POLL_S):
            pass
        run.served_s = round(time.perf_counter() - t1, 3)
    finally:
        run.stopped_cleanly = _shutdown(ray, serve)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return run


def _shutdown(ray: Any, serve: Any) -> bool:
    """Serve's shut-down (each replica drains and writes its prediction log), then Ray's; True when clean."""
    clean = True
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception as exc:  # Ray died under us: nothing left to drain
            log.warning("Ray Serve did not shut down cleanly: %s", first_line(exc))
            clean = False
        ray.shutdown()
    return clean
