"""What one server app holds (``app.state.serve``, a :class:`ServerState`) and its lifecycle.

1. start-up starts a background task that resolves the model references, loads each version
   (:class:`~modelyard.serve.model.ServedModel`), warms it up and starts its
   :class:`~modelyard.serve.batcher.DynamicBatcher`; ``/v2/health/ready`` answers 503 until every model is
   loaded and warm, and says why when loading failed;
2. with ``reload_on_alias`` a watcher re-resolves each alias reference every ``alias_poll_s``; when the
   version changes it loads and warms the new version with its own batcher, swaps it in (one reference
   assignment), then drains the old batcher, so no request is dropped;
3. shut-down refuses new requests (503 "shutting down"), drains every batcher (in-flight requests finish),
   writes what the prediction log still holds and removes the materialized files;
4. a rollout running in the registry for a model served by its champion alias is picked up by
   :class:`~modelyard.serve.rollout_manager.RolloutManager` (challenger loaded beside the champion, shadow copies or a
   canary share in :meth:`ServerState.infer`, decisions every half second, resumed after a restart).
5. with the prediction log on, :class:`~modelyard.serve.champion_watch.ChampionWatcher` watches each champion
   served by its alias against its policy's alarm thresholds, and rolls it back (or only alarms) when its live
   signals cross them, at a false-alarm rate that holds over its whole time as champion.

With monitoring on (the default), start-up opens the prediction log (:mod:`modelyard.monitor`) and starts its
writer thread; each deployed version's task and classes are recorded in it. A route marks a sampled request
with a :class:`Capture`; once the answer is sent the middleware calls :meth:`ServerState.log_prediction`,
which summarizes it and queues it without waiting (nothing there can fail or slow a request: errors and a
full queue are counted in ``modelyard_monitor_dropped_records_total``). Every ``monitor_every_s`` seconds
(0: never) a background task runs the monitor's checks on each served version's last ``monitor_window``
requests off the event loop and sets the ``modelyard_monitor_signal_*`` / ``modelyard_monitor_alarm`` gauges
(:meth:`ServerState.refresh_monitor_gauges`; a failure is logged and counted, never felt by a request).

The app (:func:`modelyard.serve.app.create_app`) and the HTTP surface (:mod:`modelyard.serve.routes`) both
use this module; it imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from modelyard.errors import ConfigError, DataError, ModelyardError, first_line
from modelyard.monitor.feedback import FeedbackItem, FeedbackStored, UnknownRequests, store_feedback
from modelyard.monitor.gauges import MonitorGauges
from modelyard.monitor.pending import PendingPrediction
from modelyard.monitor.watch import MonitorStatus
from modelyard.monitor.writer import PredictionLogWriter
from modelyard.registry import Registry
from modelyard.security.trust import require_trust
from modelyard.serve.batcher import BatchingConfig, DynamicBatcher, QueueFull, choose_batching
from modelyard.serve.cache import PredictionCache
from modelyard.serve.champion_watch import ChampionWatcher
from modelyard.serve.inputs import PreparedInput
from modelyard.serve.metrics import ServerMetrics
from modelyard.serve.model import ServedModel, latency_budget_ms
from modelyard.serve.protocol import ProtocolError
from modelyard.serve.rollout_manager import RolloutManager
from modelyard.serve.rollouts import LiveRollout
from modelyard.serve.settings import ServeSettings

log = logging.getLogger(__name__)

FEEDBACK_FLUSH_TIMEOUT_S = 5.0  # how long a label for a request not yet written waits for the writer
LATENCY_SAMPLES = 2000  # the champion's recent batcher times kept per model (a rollout's latency baseline)


@dataclass
class Deployment:
    """One loaded version with its own batcher."""

    model: ServedModel
    batcher: DynamicBatcher
    batching: BatchingConfig


class Inference(NamedTuple):
    """What :meth:`ServerState.infer` gives back: the outputs, the deployment that answered, the inputs."""

    outputs: dict[str, Any]
    deployment: Deployment
    inputs: PreparedInput


@dataclass(frozen=True)
class Capture:
    """A sampled request, kept on the request until its answer is sent, then logged by the middleware."""

    model: ServedModel
    inputs: PreparedInput
    outputs: dict[str, Any]
    endpoint: str
    at_unix_s: float


@dataclass
class ModelSlot:
    """What a model name serves now. ``current`` is replaced in one assignment on an alias move. ``rollout``:
    the challenger beside it while a rollout runs (:class:`~modelyard.serve.rollouts.LiveRollout`);
    ``latencies_ms`` / ``answered`` / ``failed``: the champion's recent batcher times and answer counts, the
    baseline a rollout compares with."""

    name: str
    ref: str
    current: Deployment
    follows_alias: bool
    failed_version: int | None = None
    rollout: LiveRollout | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    answered: int = 0
    failed: int = 0


def resolve_refs(settings: ServeSettings, registry: Registry) -> list[tuple[str, str, int]]:
    """``(ref, model name, version)`` for every model to serve: ``settings.models``, or every model's
    ``@champion``. Raises ConfigError when there is nothing to serve or a name is listed twice."""
    refs = list(settings.models)
    if not refs:
        models = registry.list_models()
        refs = [f"{m['name']}@champion" for m in models if "champion" in m["aliases"]]
        if not refs:
            known = ", ".join(m["name"] for m in models) or "none"
            raise ConfigError(
                f"no model in {registry.home} has a champion to serve (registered models: {known}); "
                "name one, e.g. 'modelyard serve NAME:VERSION', or promote a version to champion"
            )
    out = []
    seen: dict[str, str] = {}
    for ref in refs:
        name, version = registry.resolve(ref)
        if name in seen:
            raise ConfigError(
                f"model {name!r} is listed twice ({seen[name]!r} and {ref!r}); serve one version per model"
            )
        seen[name] = ref
        out.append((ref, name, version))
    return out


def check_trust(settings: ServeSettings, registry: Registry, refs: list[tuple[str, str, int]]) -> None:
    """Refuse, before anything loads, a pickle-based or factory-built version without a trust record that no
    ``--trust-pickle`` / ``--trust-factory`` stands in for (ArtifactError naming the flag)."""
    for _, name, version in refs:
        require_trust(
            registry.get_version(name, version)["manifest"],
            label=f"{name}:{version}",
            trust_pickle=settings.trust_pickle,
            trust_factory=settings.trust_factory,
        )


def batching_for(settings: ServeSettings, model: ServedModel) -> BatchingConfig:
    """The batching a model gets: off when asked or when it cannot batch, else the measured choice with any
    command-line override on top."""
    if not settings.batching:
        return BatchingConfig(max_queue=settings.max_queue, why="batching off (--no-batching)")
    if not model.batchable:
        return BatchingConfig(
            max_queue=settings.max_queue, why="batching off: the model has a fixed batch size"
        )
    budget = settings.latency_budget_ms or latency_budget_ms(model.evidence)
    config = choose_batching(model.measurements, latency_budget_ms=budget, max_queue=settings.max_queue)
    overrides: dict[str, Any] = {}
    if settings.max_batch_size is not None:
        overrides["max_batch_size"] = settings.max_batch_size
    if settings.max_wait_ms is not None:
        overrides["max_wait_s"] = settings.max_wait_ms / 1000.0
    if overrides:
        config = replace(config, **overrides)
        config.why = (
            f"batches up to {config.max_batch_size}, waiting up to {config.max_wait_s * 1000:g} ms "
            "(set on the command line)"
        )
    return config


@dataclass
class ServerState:
    """Everything one app holds; ``app.state.serve``."""

    settings: ServeSettings
    registry: Registry
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    cache: PredictionCache = field(init=False)
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    ready: bool = False
    shutting_down: bool = False
    load_error: str | None = None
    workdir: Path | None = None
    loaded: threading.Event = field(default_factory=threading.Event)  # set when loading ended, well or not
    monitor: PredictionLogWriter | None = None
    gauges: MonitorGauges | None = None
    sampler: random.Random = field(default_factory=random.Random)
    rollouts: RolloutManager | None = None
    watcher: ChampionWatcher | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _retired: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.cache = PredictionCache(self.settings.cache_items)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Start loading in the background (a restarted lifespan starts from scratch)."""
        self.slots, self._tasks = {}, []
        self.ready = self.shutting_down = False
        self.load_error = None
        self.loaded.clear()
        self.workdir = Path(tempfile.mkdtemp(prefix="modelyard-serve-"))
        self.monitor = await asyncio.to_thread(self._open_monitor) if self.settings.monitor else None
        self.gauges = (
            None
            if self.monitor is None
            else MonitorGauges(
                self.metrics, self.registry, self.monitor.path, window=self.settings.monitor_window
            )
        )
        self.rollouts = RolloutManager(self) if self.rollouts is None else self.rollouts
        self.watcher = ChampionWatcher(self) if self.watcher is None else self.watcher
        self._tasks.append(asyncio.get_running_loop().create_task(self._load_all(), name="modelyard-load"))

    async def shutdown(self) -> None:
        self.shutting_down = True
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.rollouts is not None:
            await self.rollouts.close()
        timeout = self.settings.drain_timeout_s or 0.001
        for slot in self.slots.values():
            await self._retire(slot.current, timeout_s=timeout)
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.close)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _open_monitor(self) -> PredictionLogWriter | None:
        """The prediction log's writer, started; None (and an error in the log) when the log cannot be opened:
        the server then serves without logging rather than not at all."""
        s = self.settings
        writer = PredictionLogWriter(
            s.monitor_path,
            max_queue=s.monitor_max_queue,
            flush_s=s.monitor_flush_s,
            max_rows=s.monitor_max_rows or None,
            max_days=s.monitor_max_days or None,
            on_dropped=self.metrics.monitor_dropped,
            on_written=self.metrics.monitor_written,
        )
        try:
            writer.start()
        except (ModelyardError, OSError) as exc:
            log.error("the prediction log is off: %s", first_line(exc))
            return None
        self.metrics.monitor_queued_records.set_function(lambda: writer.queued)
        return writer

    async def _describe(self, model: ServedModel) -> None:
        if self.monitor is None:
            return
        try:
            await asyncio.to_thread(
                self.monitor.describe, model.name, str(model.version), model.task, model.classes
            )
        except Exception as exc:
            log.warning(
                "cannot record %s:%s in the prediction log: %s", model.name, model.version, first_line(exc)
            )

    async def _load_all(self) -> None:
        try:
            refs = await asyncio.to_thread(resolve_refs, self.settings, self.registry)
            for ref, name, version in refs:
                dep = await self._deploy(f"{name}:{version}")  # the version resolved (and shown) once
                follows = "@" in ref or ":" not in ref
                self.slots[name] = ModelSlot(name, ref, dep, follows_alias=follows)
                log.info("serving %s version %s: %s", name, dep.model.version, dep.batching.why)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.load_error = first_line(exc)
            log.error(
                "loading models failed: %s", self.load_error, exc_info=not isinstance(exc, ModelyardError)
            )
            self.loaded.set()
            return
        self.ready = True
        self.loaded.set()
        if self.gauges is not None and self.settings.monitor_every_s > 0:
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._monitor_loop(), name="modelyard-monitor-gauges")
            )
        if self.rollouts is not None:
            self._tasks.append(
                asyncio.get_running_loop().create_task(self.rollouts.run(), name="modelyard-rollouts")
            )
        if self.watcher is not None and self.monitor is not None:
            self._tasks.append(
                asyncio.get_running_loop().create_task(self.watcher.run(), name="modelyard-champion-watch")
            )
        if self.settings.reload_on_alias and any(s.follows_alias for s in self.slots.values()):
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._watch(), name="modelyard-alias-watch")
            )

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_every_s)
            if not self.shutting_down:
                await self.refresh_monitor_gauges()

    async def refresh_monitor_gauges(self) -> list[MonitorStatus]:
        """Run the monitor's checks on each served version's last ``monitor_window`` logged requests (off the
        event loop) and set the monitor gauges; returns the statuses. Never raises: a failure is logged and
        counted in ``modelyard_monitor_evaluation_errors_total``."""
        gauges = self.gauges
        if gauges is None:
            return []
        served = [(slot.name, str(slot.current.model.version)) for slot in self.slots.values()]
        try:
            return await asyncio.to_thread(gauges.refresh, served)
        except Exception as exc:  # refresh handles each version's failure; this guards the rest
            log.warning("monitor evaluation failed: %s", first_line(exc), exc_info=True)
            for name, version in served:
                self.metrics.monitor_evaluation_failed(name, version)
            return []

    async def _deploy(self, ref: str) -> Deployment:
        """Load, warm up and start one version (the slow parts off the event loop)."""
        assert self.workdir is not None
        s = self.settings
        model = await asyncio.to_thread(
            ServedModel.load,
            self.registry,
            ref,
            threads=s.threads,
            workdir=self.workdir,
            trust_pickle=s.trust_pickle,
            trust_factory=s.trust_factory,
        )
        try:
            config = batching_for(s, model)
            await asyncio.to_thread(model.warm_up, s.warmup_calls, batch_rows=config.max_batch_size)
            version = str(model.version)
            on_batch, on_queue = self.metrics.batch_callbacks(model.name, version)
            batcher = DynamicBatcher(model.run_batch, config=config, on_batch=on_batch, on_queue=on_queue)
            await batcher.start()
        except BaseException:
            model.close()
            raise
        self.metrics.model_ready.labels(model.name, version).set(1)
        await self._describe(model)
        return Deployment(model, batcher, config)

    async def _retire(self, dep: Deployment, *, timeout_s: float) -> None:
        try:
            await dep.batcher.drain(timeout_s=timeout_s)
        finally:
            self.metrics.model_ready.labels(dep.model.name, str(dep.model.version)).set(0)
            dep.model.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alias_poll_s)
            for slot in list(self.slots.values()):
                if slot.follows_alias and not self.shutting_down:
                    await self._follow(slot)

    async def _follow(self, slot: ModelSlot) -> None:
        try:
            _, version = await asyncio.to_thread(self.registry.resolve, slot.ref)
        except ModelyardError as exc:
            log.warning("cannot resolve %s: %s", slot.ref, exc)
            return
        if version in (slot.current.model.version, slot.failed_version):
            return
        try:
            new = await self._deploy(f"{slot.name}:{version}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            slot.failed_version = version
            log.error(
                "%s moved to version %s, which failed to load (%s); still serving version %s",
                slot.ref,
                version,
                first_line(exc),
                slot.current.model.version,
            )
            return
        old, slot.current = slot.current, new
        slot.failed_version = None
        slot.latencies_ms.clear()
        log.info("%s now serves version %s (was %s)", slot.ref, version, old.model.version)
        self.retire_later(old)

    def retire_later(self, dep: Deployment) -> None:
        """Drain and close ``dep`` in the background (requests it holds finish; shut-down waits for it)."""
        task = asyncio.get_running_loop().create_task(
            self._retire(dep, timeout_s=self.settings.drain_timeout_s or 0.001)
        )
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # -- requests ------------------------------------------------------------------------------------

    def slot(self, name: str, version: str | None = None) -> ModelSlot:
        """The slot serving ``name`` (and ``version`` when given); ProtocolError 404/503 otherwise."""
        if self.shutting_down:
            raise ProtocolError("the server is shutting down; retry on another instance", 503)
        slot = self.slots.get(name)
        if slot is None:
            if not self.ready:
                raise ProtocolError(
                    f"the server is not ready ({self.not_ready_reason()}); retry shortly", 503
                )
            served = ", ".join(sorted(self.slots)) or "none"
            raise ProtocolError(f"unknown model {name!r}; this server serves: {served}", 404)
        if version is not None and version != str(slot.current.model.version):
            raise ProtocolError(
                f"model {name!r} version {version!r} is not served; the served version is "
                f"{slot.current.model.version}",
                404,
            )
        return slot

    def default_slot(self) -> ModelSlot:
        if self.shutting_down:
            raise ProtocolError("the server is shutting down; retry on another instance", 503)
        if not self.ready:
            raise ProtocolError(f"the server is not ready ({self.not_ready_reason()}); retry shortly", 503)
        if len(self.slots) != 1:
            raise ProtocolError(
                f"several models are served ({', '.join(sorted(self.slots))}); name one in 'model'"
            )
        return next(iter(self.slots.values()))

    def not_ready_reason(self) -> str:
        if self.shutting_down:
            return "shutting down"
        if self.load_error:
            return f"loading failed: {self.load_error}"
        return "loading and warming up models"

    async def infer(
        self,
        slot: ModelSlot,
        version: str | None,
        prepare: Callable[[ServedModel], PreparedInput],
        *,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Inference:
        """Validate, look up the cache, run through the batcher; returns the outputs, the deployment used and
        the validated inputs.

        A request caught between an alias swap and the old batcher's drain is re-run on the new version. While a
        rollout runs (:mod:`modelyard.serve.rollouts`), a canary's share goes to the challenger (the champion
        answers when it fails), and in shadow mode a copy goes to the challenger off the response path."""
        live = slot.rollout
        if live is not None and version is None and live.routes_to_challenger(headers):
            prepare(
                slot.current.model
            )  # a request the champion refuses is the client's error, not a canary's
            got = await live.answer(prepare, request_id)
            if got is not None:
                return Inference(got[0], live.challenger, got[1])
        started = time.perf_counter()
        result = await self._infer_current(slot, version, prepare)
        if live is not None and live.mode == "shadow" and slot.rollout is live:
            live.shadow(prepare, result.outputs, request_id, (time.perf_counter() - started) * 1000.0)
        return result

    async def _infer_current(
        self, slot: ModelSlot, version: str | None, prepare: Callable[[ServedModel], PreparedInput]
    ) -> Inference:
        for _ in range(3):
            dep = slot.current
            if version is not None and version != str(dep.model.version):
                raise ProtocolError(
                    f"model {slot.name!r} version {version!r} is not served; the served version is "
                    f"{dep.model.version}",
                    404,
                )
            model = dep.model
            item = prepare(model)
            key = None
            if self.cache.enabled:
                key = PredictionCache.key(model.name, str(model.version), item.cache_feeds(), None)
                hit = self.cache.get(key)
                self.metrics.observe_cache(model.name, str(model.version), hit=hit is not None)
                if hit is not None:
                    return Inference(hit, dep, item)
            started = time.perf_counter()
            try:
                outputs = await dep.batcher.submit(
                    item, rows=item.rows, timeout_s=self.settings.request_timeout_s
                )
            except QueueFull:
                if dep.batcher.draining and not self.shutting_down and slot.current is not dep:
                    continue
                raise
            except (ProtocolError, asyncio.CancelledError):
                raise
            except Exception:
                slot.failed += 1
                raise
            slot.answered += 1
            slot.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            if key is not None:
                self.cache.put(key, outputs)
            return Inference(outputs, dep, item)
        raise QueueFull("the model is being replaced; retry", retry_after_s=1.0)

    # -- the prediction log --------------------------------------------------------------------------------

    def capture(self, result: Inference, endpoint: str) -> Capture | None:
        """A :class:`Capture` of an answered request when it is to be logged (monitoring on and sampled)."""
        if self.monitor is None:
            return None
        share = self.settings.monitor_sample
        if share < 1.0 and not self.sampler.random() < share:
            return None
        return Capture(result.deployment.model, result.inputs, result.outputs, endpoint, time.time())

    def log_prediction(self, capture: Capture, request_id: str, latency_ms: float) -> None:
        """Queue a captured request for the writer, which summarizes it in its own thread; never raises,
        never waits."""
        writer = self.monitor
        if writer is None:
            return
        item, model = capture.inputs, capture.model
        writer.submit(
            PendingPrediction(
                request_id=request_id,
                at_unix_s=capture.at_unix_s,
                model=model.name,
                version=str(model.version),
                endpoint=capture.endpoint,
                rows=item.rows,
                feeds=item.feeds,
                texts=item.texts,
                outputs=capture.outputs,
                latency_ms=latency_ms,
                input_projection=model.input_projection,
                output_projection=model.output_projection,
            )
        )

    async def store_feedback(self, name: str, items: list[FeedbackItem]) -> FeedbackStored:
        """Store labels for requests of model ``name``, all or none: ProtocolError 404 naming the unknown ids,
        400 for a label that does not fit, 409 when the prediction log is off. A label for a request the writer
        has not written yet waits (at most FEEDBACK_FLUSH_TIMEOUT_S) for it."""
        writer = self.monitor
        if writer is None:
            raise ProtocolError(
                "the prediction log is off on this server (--no-monitor or MODELYARD_MONITOR=0), so labels "
                "cannot be stored; restart it with monitoring on",
                409,
            )

        def store() -> FeedbackStored:
            return store_feedback(writer.path, items, model=name, source="api")

        try:
            try:
                return await asyncio.to_thread(store)
            except UnknownRequests:
                if not writer.pending:
                    raise
            await asyncio.to_thread(writer.flush, FEEDBACK_FLUSH_TIMEOUT_S)
            return await asyncio.to_thread(store)
        except UnknownRequests as exc:
            raise ProtocolError(str(exc), 404) from None
        except DataError as exc:
            raise ProtocolError(str(exc), 400) from None
