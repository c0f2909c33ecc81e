"""Server settings: read once from the environment at start-up, then overridden by command-line options.
The tool-wide part (home folder, threads) is read by :class:`modelyard.config.Settings`, the server adds its own.

Environment variables: ``MODELYARD_HOME`` (the registry's home folder), ``MODELYARD_API_KEY`` (turns
bearer-token auth on; never given on the command line, where it would show in the process list and the shell
history), ``MODELYARD_THREADS`` (inference threads per model), ``MODELYARD_MONITOR`` (``0``/``off``/``false``
turns the prediction log off, ``1``/``on``/``true`` on), ``MODELYARD_MONITOR_SAMPLE`` (the share of requests
logged, 0..1) and ``MODELYARD_MONITOR_DB`` (the prediction log's path).

The prediction log (:mod:`modelyard.monitor`) is on by default: ``monitor.db`` beside ``registry.db`` in the
home folder, every request logged (``monitor_sample = 1.0``), written by a background thread from a queue of at
most ``monitor_max_queue`` records (a full queue drops records, never slows a request), committed at least
every ``monitor_flush_s``, and kept within ``monitor_max_rows`` rows and ``monitor_max_days`` days (0: no
limit). Every ``monitor_every_s`` seconds (0: never) the server watches the last ``monitor_window`` logged
requests of each served version against its reference and exposes the result as Prometheus gauges
(:mod:`modelyard.monitor.gauges`).

The prediction cache is off by default (``cache_items = 0``): hashing every request costs time on each call,
and exact repeats are rare for most traffic; turn it on where the same inputs come back often.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from modelyard.config import Settings
from modelyard.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server needs to know, validated once.

    ``models``: registry references ("name", "name@alias", "name:3"); empty means every model's
    ``@champion``. ``max_batch_size`` / ``max_wait_ms`` None: chosen per model from its measured throughput
    curve (see :func:`modelyard.serve.batcher.choose_batching`). ``latency_budget_ms`` None: the policy's
    ``budgets.max_latency_p99_ms`` recorded with the version, else 100 ms. ``trust_pickle`` / ``trust_factory``:
    serve a pickle-based / factory-built version that has no trust record (one registered by an older
    modelyard); a pickle-based file is still scanned first (see :func:`modelyard.security.trust.require_trust`).
    """

    home: Path = Path(".modelyard")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    models: tuple[str, ...] = ()
    max_body_bytes: int = 16 * MIB
    max_queue: int = 256
    request_timeout_s: float = 30.0
    batching: bool = True
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    latency_budget_ms: float | None = None
    cache_items: int = 0
    threads: int | None = None
    reload_on_alias: bool = False
    trust_pickle: bool = False
    trust_factory: bool = False
    alias_poll_s: float = 1.0
    warmup_calls: int = 3
    drain_timeout_s: float = 30.0
    monitor: bool = True
    monitor_db: Path | None = None
    monitor_sample: float = 1.0
    monitor_max_queue: int = 10_000
    monitor_flush_s: float = 0.25
    monitor_max_rows: int = 1_000_000
    monitor_max_days: float = 30.0
    monitor_every_s: float = 30.0
    monitor_window: int = 200

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("invalid server settings: " + "; ".join(problems))

    def __repr__(self) -> str:  # never show the key
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["api_key"] = "***" if self.api_key else None
        return "ServeSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def auth(self) -> bool:
        return self.api_key is not None

    @property
    def monitor_path(self) -> Path:
        """Where the prediction log is written: ``monitor_db``, else ``monitor.db`` in the home folder."""
        return self.monitor_db if self.monitor_db is not None else self.home / "monitor.db"

    @property
    def core(self) -> Settings:
        """The tool-wide settings this server runs with (home folder, threads)."""
        return Settings(home=self.home, threads=self.threads)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from ``env`` (default ``os.environ``) and keyword overrides; an override of None keeps the
        environment's or the default value."""
        env = os.environ if env is None else env
        core = Settings.from_env(env)  # home and threads: one parser for the whole tool
        values: dict[str, Any] = {"home": core.home}
        if core.threads is not None:
            values["threads"] = core.threads
        if "MODELYARD_API_KEY" in env:
            key = env["MODELYARD_API_KEY"]
            if not key.strip():
                raise ConfigError(
                    "MODELYARD_API_KEY is set but empty; set it to a secret to turn auth on, or unset it"
                )
            values["api_key"] = key
        values.update(_monitor_env(env))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["home"] = Path(values["home"])
        if values.get("monitor_db") is not None:
            values["monitor_db"] = Path(values["monitor_db"])
        if isinstance(values.get("models"), str):
            values["models"] = (values["models"],)
        if "models" in values:
            values["models"] = tuple(values["models"])
        return cls(**values)


_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


def _monitor_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    raw = env.get("MODELYARD_MONITOR", "").strip().lower()
    if raw:
        if raw not in _ON + _OFF:
            raise ConfigError(
                f"MODELYARD_MONITOR must be one of {', '.join(_ON + _OFF)}, got {env['MODELYARD_MONITOR']!r}"
            )
        values["monitor"] = raw in _ON
    sample = env.get("MODELYARD_MONITOR_SAMPLE", "").strip()
    if sample:
        try:
            values["monitor_sample"] = float(sample)
        except ValueError:
            raise ConfigError(
                f"MODELYARD_MONITOR_SAMPLE must be a number in 0..1 (the share of requests logged), got {sample!r}"
            ) from None
    if env.get("MODELYARD_MONITOR_DB", "").strip():
        values["monitor_db"] = Path(env["MODELYARD_MONITOR_DB"].strip())
    return values


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _problems(s: ServeSettings) -> list[str]:
    p: list[str] = []
    if not isinstance(s.host, str) or not s.host.strip():
        p.append(f"host must be a host name or address such as 127.0.0.1, got {s.host!r}")
    if not _is_int(s.port) or not 1 <= s.port <= 65535:
        p.append(f"port must be an integer in 1..65535, got {s.port!r}")
    if s.api_key is not None and (not isinstance(s.api_key, str) or not s.api_key.strip()):
        p.append("api_key must be a non-empty string (set MODELYARD_API_KEY), or None to turn auth off")
    if not isinstance(s.models, tuple) or not all(isinstance(m, str) and m.strip() for m in s.models):
        p.append(f"models must be registry references such as 'name@champion' or 'name:3', got {s.models!r}")
    positive_ints = {"max_body_bytes": s.max_body_bytes, "max_queue": s.max_queue}
    for name, value in positive_ints.items():
        if not _is_int(value) or value < 1:
            p.append(f"{name} must be an integer >= 1, got {value!r}")
    seconds: dict[str, Any] = {"request_timeout_s": s.request_timeout_s, "alias_poll_s": s.alias_poll_s}
    for name, secs in seconds.items():
        if not _is_number(secs) or secs <= 0:
            p.append(f"{name} must be a number of seconds > 0, got {secs!r}")
    if not _is_number(s.drain_timeout_s) or s.drain_timeout_s < 0:
        p.append(f"drain_timeout_s must be a number of seconds >= 0, got {s.drain_timeout_s!r}")
    if not isinstance(s.batching, bool):
        p.append(f"batching must be true or false, got {s.batching!r}")
    flags = {
        "reload_on_alias": s.reload_on_alias,
        "trust_pickle": s.trust_pickle,
        "trust_factory": s.trust_factory,
    }
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            p.append(f"{name} must be true or false, got {flag!r}")
    if s.max_batch_size is not None and (not _is_int(s.max_batch_size) or s.max_batch_size < 1):
        p.append(
            f"max_batch_size must be an integer >= 1 (or unset to choose it from measurements), got {s.max_batch_size!r}"
        )
    if s.max_wait_ms is not None and (not _is_number(s.max_wait_ms) or s.max_wait_ms < 0):
        p.append(f"max_wait_ms must be a number of milliseconds >= 0, got {s.max_wait_ms!r}")
    if s.latency_budget_ms is not None and (not _is_number(s.latency_budget_ms) or s.latency_budget_ms <= 0):
        p.append(f"latency_budget_ms must be a number of milliseconds > 0, got {s.latency_budget_ms!r}")
    if not _is_int(s.cache_items) or s.cache_items < 0:
        p.append(f"cache_items must be an integer >= 0 (0 turns the cache off), got {s.cache_items!r}")
    if s.threads is not None and (not _is_int(s.threads) or s.threads < 1):
        p.append(f"threads must be an integer >= 1, got {s.threads!r}")
    if not _is_int(s.warmup_calls) or s.warmup_calls < 0:
        p.append(f"warmup_calls must be an integer >= 0, got {s.warmup_calls!r}")
    p += _monitor_problems(s)
    if not s.batching and s.max_batch_size is not None and s.max_batch_size > 1:
        p.append(
            f"max_batch_size {s.max_batch_size} contradicts batching off; drop one of --no-batching and --max-batch-size"
        )
    return p


def _monitor_problems(s: ServeSettings) -> list[str]:
    p: list[str] = []
    if not isinstance(s.monitor, bool):
        p.append(f"monitor must be true or false, got {s.monitor!r}")
    if s.monitor_db is not None and not isinstance(s.monitor_db, Path):
        p.append(
            f"monitor_db must be a path (or None for monitor.db in the home folder), got {s.monitor_db!r}"
        )
    if not _is_number(s.monitor_sample) or not 0 <= s.monitor_sample <= 1:
        p.append(f"monitor_sample must be a share of requests in 0..1, got {s.monitor_sample!r}")
    if not _is_int(s.monitor_max_queue) or s.monitor_max_queue < 1:
        p.append(f"monitor_max_queue must be an integer >= 1, got {s.monitor_max_queue!r}")
    if not _is_number(s.monitor_flush_s) or not 0 < s.monitor_flush_s <= 1:
        p.append(f"monitor_flush_s must be a number of seconds in (0, 1], got {s.monitor_flush_s!r}")
    if not _is_int(s.monitor_max_rows) or s.monitor_max_rows < 0:
        p.append(f"monitor_max_rows must be an integer >= 0 (0: no limit), got {s.monitor_max_rows!r}")
    if not _is_number(s.monitor_max_days) or s.monitor_max_days < 0:
        p.append(f"monitor_max_days must be a number of days >= 0 (0: no limit), got {s.monitor_max_days!r}")
    if not _is_number(s.monitor_every_s) or s.monitor_every_s < 0:
        p.append(
            f"monitor_every_s must be a number of seconds >= 0 (0: no periodic evaluation), got {s.monitor_every_s!r}"
        )
    if not _is_int(s.monitor_window) or s.monitor_window < 1:
        p.append(f"monitor_window must be an integer >= 1 (requests per window), got {s.monitor_window!r}")
    return p
