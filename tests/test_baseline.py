"""A user's own model files become the baseline candidate: every supported format, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelyard.data.dataset import Dataset
from modelyard.errors import ArtifactError, ConfigError, UnsafeModelError
from modelyard.optimize.baseline import load_baseline
from modelyard.runtime.preprocess import predict
from modelyard.zoo.nets import tabular_mlp
from tests.helpers.models import build_tiny_bert, make_blobs


@pytest.fixture(scope="module")
def module_and_data() -> tuple[torch.nn.Module, Dataset]:
    x, y = make_blobs(features=30, classes=2)
    torch.manual_seed(0)
    m = tabular_mlp().eval()
    ds = Dataset("blobs", "tabular", x[:200], y[:200], x[200:], y[200:])
    return m, ds


def _reference(m: torch.nn.Module, ds: Dataset) -> np.ndarray:
    with torch.inference_mode():
        return m(torch.from_numpy(ds.x_test)).numpy()


def test_safetensors_with_factory(tmp_path: Path, module_and_data: tuple[torch.nn.Module, Dataset]) -> None:
    from safetensors.torch import save_file

    m, ds = module_and_data
    path = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(path))
    cand = load_baseline(path, ds, factory="modelyard.zoo.nets:tabular_mlp")
    assert cand.format == "torch" and cand.spec.num_classes == 2
    out = predict(cand.load(), cand.preprocessor(), ds.x_test)
    np.testing.assert_allclose(out, _reference(m, ds), atol=1e-6)
    with pytest.raises(ConfigError, match="pass --factory"):
        load_baseline(path, ds)


def test_torchscript_needs_trust_then_loads(
    tmp_path: Path, module_and_data: tuple[torch.nn.Module, Dataset]
) -> None:
    m, ds = module_and_data
    path = tmp_path / "scripted.pt"
    torch.jit.trace(m, torch.from_numpy(ds.x_test[:2])).save(str(path))
    with pytest.raises(UnsafeModelError, match="--trust-pickle"):
        load_baseline(path, ds)
    cand = load_baseline(path, ds, trust_pickle=True)
    assert cand.meta["torch_kind"] == "torchscript"
    np.testing.assert_allclose(
        predict(cand.load(), cand.preprocessor(), ds.x_test), _reference(m, ds), atol=1e-6
    )


def test_torch_export_needs_trust_then_loads(
    tmp_path: Path, module_and_data: tuple[torch.nn.Module, Dataset]
) -> None:
    m, ds = module_and_data
    path = tmp_path / "exported.pt2"
    ep = torch.export.export(
        m, (torch.from_numpy(ds.x_test[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(ep, str(path))
    with pytest.raises(UnsafeModelError, match="--trust-pickle"):
        load_baseline(path, ds)
    cand = load_baseline(path, ds, trust_pickle=True)
    assert cand.meta["torch_kind"] == "export"
    np.testing.assert_allclose(
        predict(cand.load(), cand.preprocessor(), ds.x_test), _reference(m, ds), atol=1e-5
    )


def test_hugging_face_folder(tmp_path: Path) -> None:
    folder = build_tiny_bert(tmp_path / "bert", classification=True)
    texts = ["good movie", "bad film", "very nice", "awful sad"] * 5
    ds = Dataset("t", "text", texts, np.array([1, 0, 1, 0] * 5), list(texts), np.array([1, 0, 1, 0] * 5))
    cand = load_baseline(folder, ds)
    assert cand.format == "hf" and cand.spec.labels == ("negative", "positive")
    assert predict(cand.load(), cand.preprocessor(), ds.x_test).shape == (20, 2)


def test_hf_folder_with_pickle_weights_is_refused(tmp_path: Path) -> None:
    folder = build_tiny_bert(tmp_path / "bert", classification=True)
    torch.save({"w": torch.zeros(2)}, str(folder / "pytorch_model.bin"))
    ds = Dataset("t", "text", ["a", "b"], np.array([0, 1]), ["a", "b"], np.array([0, 1]))
    with pytest.raises(UnsafeModelError):
        load_baseline(folder, ds)


def test_text_data_for_an_array_model(tmp_path: Path, onnx_classifier: tuple[Path, Path]) -> None:
    model, _ = onnx_classifier
    ds = Dataset("t", "text", ["a", "b"], np.array([0, 1]), ["a", "b"], np.array([0, 1]))
    with pytest.raises(Exception, match="takes numeric arrays but the data holds text"):
        load_baseline(model, ds)


def test_missing_model(tmp_path: Path, module_and_data: tuple[torch.nn.Module, Dataset]) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_baseline(tmp_path / "nope.onnx", module_and_data[1])
