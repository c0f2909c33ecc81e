"""prune pass: structured (real shrink, exported ONNX smaller) and unstructured (exact sparsity kept through
the fine-tune), rebuilding from the manifest alone, Hugging Face FFN pruning, and the skip/config errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

import modelyard.optimize.passes.prune  # noqa: F401  (registers the pass)
from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError, PassSkipped
from modelyard.optimize.passes import hf_surgery, surgery
from modelyard.optimize.passes.prune import PruneConfig, prune
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.runtime.preprocess import predict
from modelyard.zoo.demos import Demo
from tests.helpers.models import tiny_bert_candidate
from tests.helpers.passes import accuracy_of, pass_context


def _outputs(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


def _onnx_size(module: nn.Module, path: Path) -> int:
    torch.onnx.export(module.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


# --------------------------------------------------------------------------------------- structured, demos


def test_structured_prune_halves_digits_cnn_and_its_onnx(digits: Demo, tmp_path: Path) -> None:
    base = digits.baseline
    cand = prune(base, PruneConfig(amount=0.5), pass_context(tmp_path, digits.dataset))

    assert cand.format == "torch" and cand.path == tmp_path / "step" / "model.safetensors"
    assert cand.meta == {
        "torch_kind": "safetensors",
        "factory": "modelyard.zoo.nets:digits_cnn",
        "factory_kwargs": {"c1": 8, "c2": 16, "hidden": 32},
        "trust": base.meta["trust"],  # the built-in factory's trust record travels with the module
    }
    pruned, teacher = cand.torch_module(), base.torch_module()
    assert [pruned.features[0].out_channels, pruned.features[2].out_channels] == [8, 16]
    assert [pruned.classifier[1].in_features, pruned.classifier[1].out_features] == [16 * 16, 32]
    assert pruned.classifier[3].out_features == 10
    assert surgery.param_count(teacher) == 38282 and surgery.param_count(pruned) == 9802
    assert any("38,282 -> 9,802" in n for n in cand.notes)

    big, small = _onnx_size(teacher, tmp_path / "base.onnx"), _onnx_size(pruned, tmp_path / "pruned.onnx")
    assert small < 0.35 * big

    base_acc, acc = accuracy_of(base, digits.dataset), accuracy_of(cand, digits.dataset)
    assert base_acc > 0.95
    assert acc >= base_acc - 0.03


def test_structured_prune_keeps_the_largest_l1_filters_and_round_trips(digits: Demo, tmp_path: Path) -> None:
    """Oracle: the kept filters/neurons are the top-L1 ones, the Flatten→Linear columns follow the kept
    channels in blocks of 4x4, and the saved candidate computes what the in-memory pruned module computes."""
    base = digits.baseline
    cand = prune(base, PruneConfig(amount=0.5, finetune_epochs=0), pass_context(tmp_path, digits.dataset))
    w = {k: v.numpy() for k, v in load_file(str(base.path)).items()}
    got = {k: v.numpy() for k, v in load_file(str(cand.path)).items()}

    def top(weight: np.ndarray, k: int) -> np.ndarray:
        return np.sort(np.argsort(-np.abs(weight).reshape(len(weight), -1).sum(1), kind="stable")[:k])

    c1, c2, h = (
        top(w["features.0.weight"], 8),
        top(w["features.2.weight"], 16),
        top(w["classifier.1.weight"], 32),
    )
    np.testing.assert_array_equal(got["features.0.weight"], w["features.0.weight"][c1])
    np.testing.assert_array_equal(got["features.0.bias"], w["features.0.bias"][c1])
    np.testing.assert_array_equal(got["features.2.weight"], w["features.2.weight"][c2][:, c1])
    cols = (c2[:, None] * 16 + np.arange(16)[None, :]).ravel()
    np.testing.assert_array_equal(got["classifier.1.weight"], w["classifier.1.weight"][h][:, cols])
    np.testing.assert_array_equal(got["classifier.3.weight"], w["classifier.3.weight"][:, h])

    x = digits.dataset.x_test
    in_memory = surgery.structured_prune(base.torch_module(), 0.5, torch.from_numpy(x[:2])).module
    loaded = predict(cand.load(), cand.preprocessor(), x)
    np.testing.assert_allclose(loaded, _outputs(in_memory, x), rtol=0, atol=1e-5)


def test_structured_prune_tabular_mlp(tabular: Demo, tmp_path: Path) -> None:
    base = tabular.baseline
    cand = prune(base, PruneConfig(amount=0.5), pass_context(tmp_path, tabular.dataset))
    assert cand.meta["factory"] == "modelyard.zoo.nets:tabular_mlp"
    assert cand.meta["factory_kwargs"] == {"hidden": 32, "hidden2": 16}
    assert surgery.param_count(cand.torch_module()) == 30 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2
    # the input standardisation buffers travel with the pruned model
    np.testing.assert_array_equal(cand.torch_module().mean.numpy(), base.torch_module().mean.numpy())
    assert accuracy_of(cand, tabular.dataset) >= accuracy_of(base, tabular.dataset) - 0.03


def test_structured_prune_without_labels_matches_the_unpruned_outputs(digits: Demo, tmp_path: Path) -> None:
    ds = digits.dataset
    unlabelled = Dataset(
        "digits-unlabelled", "image", ds.x_train, None, ds.x_test, ds.y_test, classes=ds.classes
    )
    cand = prune(
        digits.baseline, PruneConfig(amount=0.25, finetune_epochs=2), pass_context(tmp_path, unlabelled)
    )
    assert cand.meta["factory_kwargs"] == {"c1": 12, "c2": 24, "hidden": 48}
    assert any("unpruned model's outputs" in n for n in cand.notes)
    assert accuracy_of(cand, ds) >= accuracy_of(digits.baseline, ds) - 0.03


# --------------------------------------------------------------------------------------- a user's own module


class UserNet(nn.Module):
    """Conv-BN-ReLU x2, functional pooling/flatten, Linear-ReLU-Dropout-Linear; no width arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 10, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.fc1 = nn.Linear(10 * 4 * 4, 20)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.c(h + self.b(h))


@pytest.fixture
def user_factories(monkeypatch: pytest.MonkeyPatch) -> str:
    mod = types.ModuleType("modelyard_test_user_nets")
    mod.user_net = lambda **kw: UserNet(**kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def _user_baseline(tmp_path: Path, factories: str) -> Candidate:
    torch.manual_seed(3)
    net = UserNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so slicing them matters
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    path = tmp_path / "user.safetensors"
    save_file(net.state_dict(), str(path))
    spec = RunnerSpec(
        (TensorSpec("pixels", "float32", (None, 1, 8, 8)),),
        (TensorSpec("logits", "float32", (None, 10)),),
        "classification",
        10,
    )
    meta = {"torch_kind": "safetensors", "factory": f"{factories}:user_net", "factory_kwargs": {}}
    return Candidate("baseline", "torch", path, spec, meta=meta)


def test_user_module_is_rebuilt_from_stored_shapes(digits: Demo, user_factories: str, tmp_path: Path) -> None:
    base = _user_baseline(tmp_path, user_factories)
    cand = prune(base, PruneConfig(amount=0.5, finetune_epochs=0), pass_context(tmp_path, digits.dataset))

    assert cand.meta["factory"] == surgery.REBUILD_REF
    kwargs = cand.meta["factory_kwargs"]
    assert kwargs["factory"] == f"{user_factories}:user_net"
    assert kwargs["shapes"] == {
        "bn1": {"num_features": 3},
        "bn2": {"num_features": 5},
        "conv1": {"in_channels": 1, "out_channels": 3},
        "conv2": {"in_channels": 3, "out_channels": 5},
        "fc1": {"in_features": 80, "out_features": 10},
        "fc2": {"in_features": 10, "out_features": 10},
    }
    x = digits.dataset.x_test[:50]
    in_memory = surgery.structured_prune(base.torch_module(), 0.5, torch.from_numpy(x[:2])).module
    loaded = predict(cand.load(), cand.preprocessor(), x)
    np.testing.assert_allclose(loaded, _outputs(in_memory, x), rtol=0, atol=1e-5)

    # pruning the pruned model again stacks onto the same original factory
    again = prune(
        cand, PruneConfig(amount=0.5, finetune_epochs=1), pass_context(tmp_path, digits.dataset, "again")
    )
    assert again.meta["factory_kwargs"]["factory"] == f"{user_factories}:user_net"
    assert again.meta["factory_kwargs"]["shapes"]["conv2"] == {"in_channels": 1, "out_channels": 2}
    assert predict(again.load(), again.preprocessor(), x).shape == (50, 10)


def test_layers_feeding_a_residual_add_are_not_cut() -> None:
    links = surgery.find_links(Residual(), torch.zeros(2, 8))
    assert links == []  # a feeds both b and the add; b feeds the add; c feeds the output
    with pytest.raises(PassSkipped, match=r"found no Conv/Linear layer in Residual"):
        surgery.structured_prune(Residual(), 0.5, torch.zeros(2, 8))


# --------------------------------------------------------------------------------------- unstructured


def test_unstructured_prune_reaches_sparsity_and_zeros_stay_zero(digits: Demo, tmp_path: Path) -> None:
    base = digits.baseline
    cand = prune(
        base,
        PruneConfig(amount=0.6, structured=False, finetune_epochs=3),
        pass_context(tmp_path, digits.dataset),
    )
    assert cand.meta == base.meta  # shapes unchanged: same factory
    before = load_file(str(base.path))
    after = load_file(str(cand.path))
    names = ["features.0.weight", "features.2.weight", "classifier.1.weight"]  # all but the classifier layer
    flat_before = torch.cat([before[n].flatten() for n in names])
    flat_after = torch.cat([after[n].flatten() for n in names])
    sparsity = float((flat_after == 0).float().mean())
    assert sparsity == pytest.approx(0.6, abs=0.01)
    # the zeros are exactly the 60% smallest-magnitude weights of the original, still zero after fine-tuning
    pruned_idx = torch.argsort(flat_before.abs(), stable=True)[: round(0.6 * flat_before.numel())]
    expected = torch.zeros(flat_before.numel(), dtype=torch.bool)
    expected[pruned_idx] = True
    assert torch.equal(flat_after == 0, expected)
    assert not torch.equal(flat_after[~expected], flat_before[~expected])  # the fine-tune did move the rest
    assert int((after["classifier.3.weight"] == 0).sum()) == 0
    assert any("does not shrink" in n for n in cand.notes)
    assert accuracy_of(cand, digits.dataset) >= accuracy_of(base, digits.dataset) - 0.03


def test_global_magnitude_masks_count_is_exact() -> None:
    weights = [torch.tensor([[0.1, -0.5], [2.0, 0.0]]), torch.tensor([-0.2, 0.3, 0.05])]
    masks = surgery.global_magnitude_masks(weights, 0.4)  # 7 weights -> 3 zeroed: 0.0, 0.05, 0.1
    assert [m.tolist() for m in masks] == [[[False, True], [True, False]], [True, True, False]]


# --------------------------------------------------------------------------------------- Hugging Face


def _tiny_bert(folder: Path, task: str, seed: int = 0) -> Candidate:
    return tiny_bert_candidate(
        folder, task, seed=seed, words=WORDS, labels=None, initializer_range=0.1, split_on_punctuation=False
    )


WORDS = [f"w{i}" for i in range(60)]


def _texts(n: int = 120) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]
    labels = np.array([int(any(int(w[1:]) < 8 for w in t.split())) for t in texts], dtype=np.int64)
    return texts, labels


@pytest.fixture(scope="module")
def text_data() -> Dataset:
    texts, labels = _texts()
    return Dataset(
        "tiny-text", "text", texts[:96], labels[:96], texts[96:], labels[96:], classes=["no", "yes"]
    )


def test_hf_ffn_pruning_shrinks_and_reloads_to_the_same_outputs(tmp_path: Path, text_data: Dataset) -> None:
    from transformers import AutoConfig

    base = _tiny_bert(tmp_path / "bert", "classification")
    cand = prune(base, PruneConfig(amount=0.5, finetune_epochs=0), pass_context(tmp_path, text_data))
    assert cand.format == "hf" and cand.path == tmp_path / "step" / "model"
    assert (cand.path / "tokenizer.json").is_file() and (cand.path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(str(cand.path)).intermediate_size == 32
    teacher = base.torch_module()
    before = surgery.param_count(teacher)
    assert surgery.param_count(cand.torch_module()) == before - 2 * (32 * 32 + 32 + 32 * 32)
    assert any("attention heads were not pruned" in n for n in cand.notes)

    expected = base.torch_module()
    hf_surgery.prune_hf_ffn(expected.inner, 0.5)
    feeds = {k: torch.from_numpy(v) for k, v in base.preprocessor()(text_data.x_test).items()}
    with torch.no_grad():
        want = expected.eval()(**feeds).numpy()
    got = predict(cand.load(), cand.preprocessor(), text_data.x_test)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_hf_embedder_prune_finetunes_toward_the_teacher(tmp_path: Path, text_data: Dataset) -> None:
    base = _tiny_bert(tmp_path / "bert", "embedding")
    unlabelled = Dataset("tiny-text", "text", text_data.x_train, None, text_data.x_test, None)
    raw = prune(base, PruneConfig(amount=0.5, finetune_epochs=0), pass_context(tmp_path, unlabelled, "raw"))
    tuned = prune(
        base, PruneConfig(amount=0.5, finetune_epochs=4, lr=3e-3), pass_context(tmp_path, unlabelled, "tuned")
    )
    teacher = predict(base.load(), base.preprocessor(), unlabelled.x_test)

    def cos(c: Candidate) -> float:
        e = predict(c.load(), c.preprocessor(), unlabelled.x_test)
        return float(
            np.mean((e * teacher).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(teacher, axis=1))
        )

    raw_cos, tuned_cos = cos(raw), cos(tuned)  # measured: 0.960 -> 0.995
    assert tuned_cos > raw_cos + 0.02
    assert tuned_cos > 0.98


def test_hf_unstructured_prune(tmp_path: Path, text_data: Dataset) -> None:
    base = _tiny_bert(tmp_path / "bert", "classification")
    cand = prune(
        base, PruneConfig(amount=0.5, structured=False, finetune_epochs=1), pass_context(tmp_path, text_data)
    )
    inner = cand.torch_module().inner
    ws = [m.weight for n, m in inner.named_modules() if isinstance(m, nn.Linear) and n != "classifier"]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------------------- skips and errors


def test_onnx_candidate_is_skipped_with_the_reason(digits: Demo, tmp_path: Path) -> None:
    onnx = Candidate("baseline", "onnx", tmp_path / "model.onnx", digits.baseline.spec)
    with pytest.raises(
        PassSkipped, match=r"needs the PyTorch model; an ONNX-only model cannot be pruned here"
    ):
        prune(onnx, PruneConfig(), pass_context(tmp_path, digits.dataset))


def test_no_training_data_is_skipped(digits: Demo, tmp_path: Path) -> None:
    ds = digits.dataset
    empty = Dataset("no-train", "image", ds.x_train[:0], ds.y_train[:0], ds.x_test, ds.y_test)
    with pytest.raises(
        PassSkipped, match=r"prune needs training data .* 'no-train' has an empty train split"
    ):
        prune(digits.baseline, PruneConfig(), pass_context(tmp_path, empty))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 1.5}, r"amount must be in \(0, 1\) \(a fraction to remove\), got 1\.5"),
        ({"amount": 0}, r"amount must be in \(0, 1\).*got 0"),
        ({"finetune_epochs": -1}, r"finetune_epochs must be an integer >= 0, got -1"),
        ({"lr": 0.0}, r"lr must be > 0, got 0\.0"),
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)
