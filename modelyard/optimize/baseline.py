"""Turn a user's model file (and data) into the baseline Candidate, refusing unsafe files before loading."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ArtifactError, ConfigError, DataError, first_line
from modelyard.runtime.base import RunnerSpec, TensorSpec

MODEL_FORMATS = "an ONNX file, a safetensors state dict with --factory module:function, TorchScript, torch.export (.pt2), or a Hugging Face folder"


def _failure(exc: BaseException) -> str:
    """``Type: first line`` of an exception, or just its type when its message is empty (a bare ``assert``)."""
    name = type(exc).__name__
    line = first_line(exc, limit=200)
    return name if line == name else f"{name}: {line}"


def _probe_output(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = module(torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32)))
    if isinstance(out, tuple | list):
        out = out[0]
    return np.asarray(out.detach().float().numpy())


def _torch_spec(module: Any, dataset: Dataset, task: str, input_name: str) -> RunnerSpec:
    if not isinstance(dataset.x_test, np.ndarray):
        raise DataError(
            "a PyTorch module here takes numeric arrays; for text models use a Hugging Face folder"
        )
    try:
        out = _probe_output(module, dataset.x_test)
    except Exception as exc:
        raise DataError(
            f"the model cannot run on the data: inputs of shape {tuple(dataset.x_test.shape[1:])} per example "
            f"failed with {_failure(exc)}; check the data matches the model input"
        ) from None
    width = int(out.shape[-1])
    out_name = "logits" if task == "classification" else "embedding"
    return RunnerSpec(
        inputs=(TensorSpec(input_name, "float32", (None, *dataset.x_test.shape[1:])),),
        outputs=(TensorSpec(out_name, "float32", (None, width)),),
        task=task,  # type: ignore[arg-type]
        num_classes=width if task == "classification" else None,
        labels=tuple(dataset.classes) if dataset.classes and len(dataset.classes) == width else None,
    )


def load_baseline(
    path: str | Path,
    dataset: Dataset,
    *,
    task: str | None = None,
    factory: str | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    input_name: str = "input",
) -> Candidate:
    """Detect the model format by content, scan it, and build the baseline candidate.

    A pickle-based file (on ``trust_pickle``) or a factory-built module gets the trust decision that let it
    in recorded in ``candidate.meta["trust"]`` (see :mod:`modelyard.security.trust`)."""
    from modelyard.security import detect_format, require_safe
    from modelyard.security.trust import FACTORY, PICKLE, trust_record

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"model file {path} does not exist; check the path")
    fmt = detect_format(path)
    if fmt == "unknown":
        raise ArtifactError(f"cannot tell what kind of model {path} is; modelyard reads {MODEL_FORMATS}")
    scan = require_safe(path, trust_pickle=trust_pickle)
    task = task or ("classification" if dataset.y_test is not None else "embedding")
    if task not in ("classification", "embedding"):
        raise ConfigError(f"unknown task {task!r}; use classification or embedding")
    if fmt == "onnx":
        from modelyard.runtime.onnx import OrtRunner

        runner = OrtRunner(path, task=task)
        spec = runner.spec
        if dataset.classes and spec.num_classes == len(dataset.classes):
            spec = RunnerSpec(
                spec.inputs, spec.outputs, spec.task, spec.num_classes, labels=tuple(dataset.classes)
            )
        cand = Candidate("baseline", "onnx", path, spec)
    elif fmt == "hf-folder":
        from modelyard.runtime.hf import hf_spec, infer_task

        task = task if task != "classification" or dataset.y_test is not None else infer_task(path)
        cand = Candidate(
            "baseline", "hf", path, hf_spec(path, task), tokenizer_dir=path, meta={"max_length": 128}
        )
    elif fmt == "safetensors":
        if not factory:
            raise ConfigError(
                f"{path} is a safetensors state dict; pass --factory package.module:function that builds the module"
            )
        from modelyard.runtime.torch import load_torch_module

        meta: dict[str, Any] = {
            "torch_kind": "safetensors",
            "factory": factory,
            "factory_kwargs": dict(factory_kwargs or {}),
            "trust": trust_record(FACTORY, flag="--factory", scan=scan, factory=factory),
        }
        module = load_torch_module(path, meta)
        cand = Candidate("baseline", "torch", path, _torch_spec(module, dataset, task, input_name), meta=meta)
    elif fmt in ("torchscript", "torch-export"):
        from modelyard.runtime.torch import load_torch_module

        meta = {
            "torch_kind": "torchscript" if fmt == "torchscript" else "export",
            "trust": trust_record(PICKLE, flag="--trust-pickle", scan=scan),
        }
        try:
            module = load_torch_module(path, meta)
        except Exception as exc:
            raise ArtifactError(f"cannot load {fmt} file {path}: {first_line(exc, limit=200)}") from None
        cand = Candidate("baseline", "torch", path, _torch_spec(module, dataset, task, input_name), meta=meta)
    else:
        raise ArtifactError(
            f"{path} is a {fmt} file, which modelyard does not load as a model; convert it to ONNX or safetensors"
        )
    check_fit(cand, dataset)
    return cand


def check_fit(candidate: Candidate, dataset: Dataset) -> None:
    """Refuse data that does not fit the model: modality, per-example shape, label range; then a trial run."""
    spec = candidate.spec
    text_model = candidate.tokenizer_dir is not None
    is_text = not isinstance(dataset.x_test, np.ndarray)
    if text_model != is_text:
        raise DataError(
            f"the model takes {'text' if text_model else 'numeric arrays'} but the data holds "
            f"{'text' if is_text else 'numeric arrays'}; give matching data"
        )
    if not is_text:
        want = spec.inputs[0].shape[1:]
        got = tuple(dataset.x_test.shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
            shown = tuple("?" if w is None else w for w in want)
            raise DataError(
                f"data examples have shape {got} but the model input {spec.inputs[0].name!r} expects {shown} "
                "per example; reshape the data to fit"
            )
    if spec.task == "classification":
        if dataset.y_test is None:
            raise DataError("a classifier needs labels; give a 'y' array, a label column or 'label' fields")
        k = spec.num_classes
        top = max(int(np.max(y)) for y in (dataset.y_train, dataset.y_test) if y is not None and len(y))
        if k is not None and top >= k:
            raise DataError(
                f"labels go up to {top} but the model has {k} classes (0..{k - 1}); fix the labels or the model"
            )
    runner = candidate.load()
    try:
        out = runner.run(candidate.preprocessor()(dataset.x_test[:2]))
    except Exception as exc:
        raise DataError(
            f"the model failed on the first test examples: {_failure(exc)}; "
            "check the data matches the model input"
        ) from None
    with contextlib.suppress(StopIteration):
        arr = np.asarray(next(iter(out.values())))
        if not np.all(np.isfinite(arr)):
            raise DataError(
                "the model returned NaN or infinity on the first test examples; check the model and data"
            )
