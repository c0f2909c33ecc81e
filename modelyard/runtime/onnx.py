"""ONNX Runtime runner: on the CPU, or on a CUDA GPU through the CUDA execution provider.

The runner's ``device`` is read back from the providers the session actually uses
(``session.get_providers()``), never from what was asked for; a CUDA device that ONNX Runtime cannot give is a
ConfigError, not a silent fall-back to the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError, ConfigError, first_line
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.runtime.device import GPU_FIX, default_threads, device_index, resolve_device

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}

_SPINNING = "session.intra_op.allow_spinning"


def session_options(threads: int | None = None, *, spin: bool = True) -> Any:
    """ORT options: ``threads`` intra-op threads (default all cores). ``spin=False`` stops idle worker threads
    from busy-waiting for the next call: offline batch loops want spinning, a server between requests does
    not (spinning burns the cores the HTTP side needs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry(_SPINNING, "0")
    return so


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime providers for a resolved device ("cpu" or "cuda:N"); CUDA keeps the CPU provider as the
    home of the nodes CUDA has no kernel for. A CUDA device on a build without the CUDA provider is
    refused."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(
            f"ONNX Runtime {ort.__version__} here has no CUDAExecutionProvider "
            f"(it has {', '.join(available)}), so it cannot run on {device}; {GPU_FIX}"
        )
    return [("CUDAExecutionProvider", {"device_id": device_index(device)}), "CPUExecutionProvider"]


def session_device(sess: Any) -> str:
    """The device a session runs on, from the providers it actually uses: "cuda:N" when CUDA comes first."""
    used = list(sess.get_providers())
    if used and used[0] == "CUDAExecutionProvider":
        options = (sess.get_provider_options() or {}).get("CUDAExecutionProvider", {})
        return f"cuda:{int(options.get('device_id', 0) or 0)}"
    return "cpu"


def make_session(
    path: Path, threads: int | None = None, providers: list[Any] | None = None, *, spin: bool = True
) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(threads, spin=spin),
            providers=providers or ["CPUExecutionProvider"],
        )
    except Exception as exc:  # ORT raises several private exception types
        raise ArtifactError(
            f"ONNX Runtime cannot load {path}: {first_line(exc)}; check the file is a valid ONNX model "
            "that ONNX Runtime supports on this device"
        ) from None


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def spec_from_session(sess: Any, task: str, num_classes: int | None = None) -> RunnerSpec:
    inputs = tuple(
        TensorSpec(i.name, _ORT_TYPES.get(i.type, "float32"), _dims(i.shape)) for i in sess.get_inputs()
    )
    outputs = tuple(
        TensorSpec(o.name, _ORT_TYPES.get(o.type, "float32"), _dims(o.shape)) for o in sess.get_outputs()
    )
    if num_classes is None and task == "classification" and outputs and outputs[0].shape[-1:] != (None,):
        num_classes = outputs[0].shape[-1]
    return RunnerSpec(inputs=inputs, outputs=outputs, task=task, num_classes=num_classes)  # type: ignore[arg-type]


class OrtRunner:
    """Runs an ONNX file with ONNX Runtime (thread count configurable, default all cores).

    ``device``: "cpu" (default), "gpu" or "cuda:N". After loading, ``device`` is the device the session runs
    on ("cpu" or "cuda:N") and ``providers`` the execution providers it uses, in ONNX Runtime's order.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        spec: RunnerSpec | None = None,
        threads: int | None = None,
        task: str = "classification",
        spin: bool = True,
        device: str = "cpu",
    ) -> None:
        self.path = Path(path)
        wanted = resolve_device(device)
        self.session = make_session(self.path, threads, providers_for(wanted), spin=spin)
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.device = session_device(self.session)
        if self.device != wanted:
            raise ConfigError(
                f"ONNX Runtime was asked for {wanted} but runs {self.path.name} on {self.device} "
                f"(providers: {', '.join(self.providers)}); {GPU_FIX}"
            )
        own = spec_from_session(self.session, spec.task if spec else task, spec.num_classes if spec else None)
        # keep the declared task, labels and value range; take names and dtypes from the graph
        self.spec = own if spec is None else spec.with_tensors_of(own)
        self._output_names = [o.name for o in self.spec.outputs]
        self._input_names = {i.name for i in self.spec.inputs}

    def describe(self) -> dict[str, Any]:
        """ONNX Runtime's version and the session's settings, read back from the session."""
        import onnxruntime as ort

        so = self.session.get_session_options()
        try:
            spinning = so.get_session_config_entry(_SPINNING)
        except RuntimeError:  # not set: ONNX Runtime's default, spinning on
            spinning = "1"
        return {
            "name": "onnxruntime",
            "version": str(ort.__version__),
            "settings": {
                "execution_providers": list(self.providers),
                "intra_op_threads": int(so.intra_op_num_threads),
                "inter_op_threads": int(so.inter_op_num_threads),
                "graph_optimization_level": so.graph_optimization_level.name,
                "execution_mode": so.execution_mode.name,
                "spinning": spinning != "0",
                "device": self.device,
            },
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        outs = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outs, strict=True))
