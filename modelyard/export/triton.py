"""The Triton export: one model of a Triton model repository, ``<name>/config.pbtxt`` plus
``<name>/<version>/model.onnx`` (and its external-data file, under its own name, which the graph refers to).

The configuration is the one this server already answers ``GET /v2/models/{name}/config`` with
(:func:`modelyard.serve.triton.config_for`), with the ONNX graph's own inputs and outputs (Triton's ONNX Runtime
backend serves the raw graph: probabilities, temperature and the OOD rule are the client's to apply, from the
``onnx`` export's sidecar), and the batching this server would choose from the candidate's measured throughput
curve (:func:`modelyard.serve.state.batching_for`): ``max_batch_size``, ``dynamic_batching`` with the chosen
batch size as the preferred one and the same queue delay. The curve was measured on one device with a number
of threads; ``instance_group`` and ONNX Runtime's ``intra_op_thread_count`` say the same, so Triton runs the
model as it was measured.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modelyard.export.pbtxt import to_pbtxt
from modelyard.export.source import model_files
from modelyard.serve.batcher import BatchingConfig
from modelyard.serve.model import ServedModel
from modelyard.serve.triton import config_for

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the file name Triton's ONNX Runtime backend loads by default


def measured_on(model: ServedModel) -> tuple[str, int | None]:
    """The device ("cpu", "cuda:0", ...) and thread count the throughput curve was measured with."""
    m = model.measurements.get("efficiency.throughput_best")
    details = {} if m is None else m.details
    device = details.get("device")
    threads = details.get("threads")
    ok_threads = isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
    return (device if isinstance(device, str) else "cpu"), (threads if ok_threads else None)


def triton_config(model: ServedModel, batching: BatchingConfig) -> dict[str, Any]:
    """The ModelConfig (as a dict of its proto fields) for the exported version."""
    config = config_for(model, batching, graph=True)
    if config["max_batch_size"] > 0:
        for tensor in (*config["input"], *config["output"]):
            if not tensor["dims"]:  # a batch-only tensor: Triton needs a non-empty shape, reshaped away
                tensor["dims"] = [1]
                tensor["reshape"] = {"shape": []}
    device, threads = measured_on(model)
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    group: dict[str, Any] = {"count": 1, "kind": kind}
    if kind == "KIND_GPU" and ":" in device and device.rsplit(":", 1)[1].isdigit():
        group["gpus"] = [int(device.rsplit(":", 1)[1])]
    config["instance_group"] = [group]
    params = dict(config["parameters"])
    if threads is not None:
        params["intra_op_thread_count"] = {"string_value": str(threads)}
    config["parameters"] = params
    return config


def write_triton_model(model: ServedModel, batching: BatchingConfig, folder: Path) -> list[Path]:
    """Write ``config.pbtxt`` and ``<version>/model.onnx`` into ``folder`` (the model's folder in a Triton
    repository); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    version_dir = folder / str(model.version)
    version_dir.mkdir()
    files = model_files(model)
    written = [version_dir / MODEL_FILE]
    shutil.copyfile(files[0], written[0])
    for extra in files[1:]:
        written.append(version_dir / extra.name)
        shutil.copyfile(extra, written[-1])
    config_path = folder / CONFIG_FILE
    config_path.write_text(to_pbtxt(triton_config(model, batching)), encoding="utf-8")
    return [config_path, *written]
