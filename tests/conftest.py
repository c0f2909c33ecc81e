"""Shared fixtures: tiny models and datasets built in code, and an isolated home folder. Plain helper functions
live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.models import make_blobs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def onnx_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own small MLP classifier, trained and exported to ONNX here, with its .npz dataset."""
    import torch

    from modelyard.zoo.train import train_classifier

    d = tmp_path_factory.mktemp("user")
    x, y = make_blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    train_classifier(model, x, y, epochs=20, lr=1e-2, seed=0)
    path = d / "classifier.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 6),),
        str(path),
        dynamo=False,
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
    )
    data = d / "data.npz"
    np.savez(data, x=x, y=y)
    return path, data


@pytest.fixture(scope="session")
def zoo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per test session where the demos train once and are cached."""
    return tmp_path_factory.getbasetemp() / "modelyard-pass-zoo"


@pytest.fixture(scope="session")
def digits(zoo_home: Path):  # type: ignore[no-untyped-def]
    import torch

    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    return load_demo("digits", zoo_home)


@pytest.fixture(scope="session")
def tabular(zoo_home: Path):  # type: ignore[no-untyped-def]
    import torch

    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    return load_demo("tabular", zoo_home)
