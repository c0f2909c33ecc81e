"""A tiny PyTorch classifier saved as a safetensors state dict with its factory (``blobs_mlp``), trained here
on Gaussian blobs in well under a second, and its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers.models import make_blobs

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.data.dataset import Dataset

FACTORY = "tests.helpers.torch_mlp:blobs_mlp"


def blobs_mlp() -> Any:
    """The factory: features [N, 6] -> logits [N, 3]."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def blobs_dataset() -> Dataset:
    from modelyard.data.dataset import Dataset

    x, y = make_blobs(n=300)
    return Dataset(
        "blobs",
        "tabular",
        x[:180],
        y[:180],
        x[240:],
        y[240:],
        classes=["0", "1", "2"],
        x_cal=x[180:240],
        y_cal=y[180:240],
    )


def mlp_candidate(folder: Path) -> tuple[Candidate, Dataset]:
    """The trained MLP as a baseline Candidate (format torch, safetensors + factory) and its dataset."""
    import torch
    from safetensors.torch import save_file

    from modelyard.candidate import Candidate
    from modelyard.runtime.base import RunnerSpec, TensorSpec
    from modelyard.zoo.train import train_classifier

    ds = blobs_dataset()
    torch.manual_seed(0)
    model = blobs_mlp()
    assert ds.y_train is not None
    train_classifier(model, ds.x_train, ds.y_train, epochs=20, lr=1e-2, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    spec = RunnerSpec(
        inputs=(TensorSpec("features", "float32", (None, 6)),),
        outputs=(TensorSpec("logits", "float32", (None, 3)),),
        task="classification",
        num_classes=3,
        labels=("0", "1", "2"),
    )
    meta = {"torch_kind": "safetensors", "factory": FACTORY, "factory_kwargs": {}}
    return Candidate(name="baseline", format="torch", path=path, spec=spec, meta=meta), ds
