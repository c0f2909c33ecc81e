"""OpenVINO runner: an OpenVINO IR model (``model.xml`` + ``model.bin``) compiled for the CPU.

OpenVINO is an optional extra (``pip install 'modelyard[openvino]'``); nothing imports it until a runner is
built. The settings a candidate is served with (:class:`OvSettings`) are explicit, never OpenVINO's
defaults: the inference precision is ``f32`` for fp32 and int8 candidates (OpenVINO otherwise runs fp32
models in bf16 on CPUs that have BF16 instructions) and ``bf16`` for bf16 candidates; the performance hint
(LATENCY or THROUGHPUT), the streams and the thread count (``INFERENCE_NUM_THREADS``) are set, then read back
from the compiled model into ``OvRunner.settings``.

An OpenVINO infer request is not thread-safe: the runner keeps a pool of them, so concurrent ``run`` calls
(a server's batcher) each use their own request, and the streams of a THROUGHPUT hint can run in parallel.
"""

from __future__ import annotations

import queue
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError, ConfigError, first_line
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.runtime.device import default_threads, resolve_device

INSTALL_HINT = "install the extra: pip install 'modelyard[openvino]'"
PRECISIONS = ("f32", "bf16")
HINTS = ("LATENCY", "THROUGHPUT")
META_KEY = "openvino"  # a candidate's meta[META_KEY] holds its OvSettings


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (one line), or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"OpenVINO is not installed ({first_line(exc)}); {INSTALL_HINT}"
    return None


def openvino_version() -> str:
    """The installed OpenVINO release, e.g. "2026.4.1" (the build suffix dropped)."""
    import openvino as ov

    return str(ov.__version__).split("-")[0]


@dataclass(frozen=True)
class OvSettings:
    """How an OpenVINO candidate is compiled: ``inference_precision`` "f32" or "bf16", ``performance_hint``
    "LATENCY" or "THROUGHPUT", ``streams`` (None: what the hint picks; LATENCY picks 1)."""

    inference_precision: str = "f32"
    performance_hint: str = "LATENCY"
    streams: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.inference_precision not in PRECISIONS:
            problems.append(f"inference_precision must be one of {', '.join(PRECISIONS)}")
        if self.performance_hint not in HINTS:
            problems.append(f"performance_hint must be one of {', '.join(HINTS)}")
        if self.streams is not None and (
            isinstance(self.streams, bool) or not isinstance(self.streams, int) or self.streams < 1
        ):
            problems.append("streams must be None or an integer >= 1")
        if problems:
            raise ConfigError(f"OpenVINO settings {self!r}: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> OvSettings:
        """The settings recorded in a candidate's meta (defaults where none are recorded)."""
        raw = meta.get(META_KEY) or {}
        if not isinstance(raw, dict):
            raise ArtifactError(f"candidate meta[{META_KEY!r}] must be a JSON object, got {raw!r}")
        known = {k: raw[k] for k in ("inference_precision", "performance_hint", "streams") if k in raw}
        return cls(**known)

    def compile_config(self, threads: int) -> dict[str, Any]:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_NUM_THREADS": int(threads),
        }
        if self.streams is not None:
            config["NUM_STREAMS"] = int(self.streams)
        return config


def compiled_settings(compiled: Any) -> dict[str, Any]:
    """What the compiled model actually runs with, read back from OpenVINO."""
    hint = str(compiled.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1]
    return {
        "inference_precision": _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "performance_hint": hint,
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "infer_requests": int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        "execution_devices": [str(d) for d in compiled.get_property("EXECUTION_DEVICES")],
    }


def _precision_name(element_type: Any) -> str:
    """ "f32", "bf16", "f16" for an OpenVINO element type (its ``get_type_name()``)."""
    name = getattr(element_type, "get_type_name", None)
    return str(name()) if callable(name) else str(element_type)


def _dims(shape: Any) -> tuple[int | None, ...]:
    if shape.rank.is_dynamic:
        return ()
    return tuple(int(d.get_length()) if d.is_static else None for d in shape)


def _tensor(port: Any) -> TensorSpec:
    return TensorSpec(
        port.get_any_name(),
        str(np.dtype(port.get_element_type().to_dtype())),
        _dims(port.get_partial_shape()),
    )


class OvRunner:
    """Runs an OpenVINO IR model on the CPU.

    ``path``: the ``.xml`` file (its ``.bin`` beside it). ``threads``: ``INFERENCE_NUM_THREADS`` (default all
    cores). ``settings``: precision, performance hint and streams. ``device`` must be "cpu": this runner does
    not drive OpenVINO's GPU plugin. After loading, ``settings`` holds what OpenVINO compiled with (read
    back), and ``version`` the OpenVINO release.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        spec: RunnerSpec | None = None,
        threads: int | None = None,
        task: str = "classification",
        device: str = "cpu",
        settings: OvSettings | None = None,
    ) -> None:
        self.path = Path(path)
        wanted = resolve_device(device)
        if wanted != "cpu":
            raise ConfigError(
                f"the OpenVINO runner runs on the CPU only, and was asked for {wanted}; "
                'set target = "cpu" in the policy\'s [hardware] section, or use an ONNX or PyTorch candidate'
            )
        missing = openvino_missing()
        if missing:
            raise ConfigError(f"cannot load the OpenVINO model {self.path}: {missing}")
        import openvino as ov

        asked = settings or OvSettings()
        try:
            core = ov.Core()
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(
                model, "CPU", asked.compile_config(threads or default_threads())
            )
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            raise ArtifactError(
                f"OpenVINO cannot load {self.path}: {first_line(exc)}; check the .xml and its .bin are an "
                "OpenVINO IR model this OpenVINO release reads"
            ) from None
        self.version = openvino_version()
        self.settings = compiled_settings(self.compiled)
        self.device = "cpu"
        own = RunnerSpec(
            inputs=tuple(_tensor(p) for p in self.compiled.inputs),
            outputs=tuple(_tensor(p) for p in self.compiled.outputs),
            task=spec.task if spec else task,  # type: ignore[arg-type]
            num_classes=spec.num_classes if spec else None,
        )
        # keep the declared task, labels and value range; take names and dtypes from the model
        self.spec = own if spec is None else spec.with_tensors_of(own)
        self._input_names = {t.name for t in self.spec.inputs}
        self._output_names = [t.name for t in self.spec.outputs]
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(self.compiled.create_infer_request())

    def describe(self) -> dict[str, Any]:
        """OpenVINO's release and what the compiled model runs with (read back from OpenVINO)."""
        return {
            "name": "openvino",
            "version": self.version,
            "settings": {**self.settings, "device": self.device},
        }

    def _request(self) -> Any:
        try:
            return self._requests.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in self._input_names}
        request = self._request()
        try:
            result = request.infer(inputs)
            # The request reuses its output buffers on the next call: hand back copies.
            return {
                name: np.array(result[port], copy=True)
                for name, port in zip(self._output_names, self.compiled.outputs, strict=True)
            }
        finally:
            self._requests.put(request)
