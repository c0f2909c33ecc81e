"""distill pass: narrower demo students, fewer-layer HF students initialised from teacher layers, the
soft-target loss, image augmentation, and the skip/config errors."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import modelyard.optimize.passes.distill  # noqa: F401  (registers the pass)
from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError, PassSkipped
from modelyard.optimize.passes import hf_surgery, surgery
from modelyard.optimize.passes.distill import DistillConfig, distill, image_augment, soft_target_loss
from modelyard.runtime.preprocess import predict
from modelyard.zoo.demos import Demo
from tests.helpers.models import tiny_bert_candidate
from tests.helpers.passes import accuracy_of, pass_context

# --------------------------------------------------------------------------------------- demo nets


def test_distill_digits_half_width_student(digits: Demo, tmp_path: Path) -> None:
    base = digits.baseline
    cand = distill(base, DistillConfig(width=0.5), pass_context(tmp_path, digits.dataset))

    assert cand.format == "torch" and cand.path == tmp_path / "step" / "model.safetensors"
    assert cand.meta["factory"] == "modelyard.zoo.nets:digits_cnn"
    assert cand.meta["factory_kwargs"] == {"c1": 8, "c2": 16, "hidden": 32}
    n_teacher, n_student = surgery.param_count(base.torch_module()), surgery.param_count(cand.torch_module())
    assert (n_teacher, n_student) == (38282, 9802)
    assert any("9,802 parameters vs the teacher's 38,282" in n for n in cand.notes)
    assert any("augmentation" in n for n in cand.notes)
    assert accuracy_of(cand, digits.dataset) >= accuracy_of(base, digits.dataset) - 0.04


def test_distill_tabular_copies_the_input_scaling(tabular: Demo, tmp_path: Path) -> None:
    base = tabular.baseline
    cand = distill(base, DistillConfig(width=0.5, epochs=40), pass_context(tmp_path, tabular.dataset))
    assert cand.meta["factory_kwargs"] == {"hidden": 32, "hidden2": 16}
    student, teacher = cand.torch_module(), base.torch_module()
    np.testing.assert_array_equal(student.mean.numpy(), teacher.mean.numpy())
    np.testing.assert_array_equal(student.std.numpy(), teacher.std.numpy())
    assert not any("augmentation" in n for n in cand.notes)  # tabular inputs are not images
    assert accuracy_of(cand, tabular.dataset) >= accuracy_of(base, tabular.dataset) - 0.04


def test_distill_is_deterministic(tabular: Demo, tmp_path: Path) -> None:
    cfg = DistillConfig(width=0.25, epochs=2)
    a = distill(tabular.baseline, cfg, pass_context(tmp_path, tabular.dataset, "a")).torch_module()
    b = distill(tabular.baseline, cfg, pass_context(tmp_path, tabular.dataset, "b")).torch_module()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


# --------------------------------------------------------------------------------------- losses and augmentation


def test_soft_target_loss_is_t_squared_kl() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    temp = 2.0
    p = np.exp(t.numpy() / temp) / np.exp(t.numpy() / temp).sum(1, keepdims=True)
    q = np.exp(s.numpy() / temp) / np.exp(s.numpy() / temp).sum(1, keepdims=True)
    expected = float((p * np.log(p / q)).sum(1).mean() * temp**2)
    assert float(soft_target_loss(s, t, temp)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_target_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-7)


def test_image_augment_shifts_by_at_most_one_pixel_and_clips() -> None:
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    shifted = image_augment(0.0, 1.0, noise=0.0)(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(shifted[i], padded[i, :, 1 + dy : 9 + dy, 1 + dx : 9 + dx])
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # all nine shifts occur in 64 draws
    noisy = image_augment(0.0, 1.0, noise=0.5)(x, torch.Generator().manual_seed(0))
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0


# --------------------------------------------------------------------------------------- Hugging Face

WORDS = [f"w{i}" for i in range(60)]


def _tiny_bert(folder: Path, task: str, seed: int = 0) -> Candidate:
    return tiny_bert_candidate(
        folder,
        task,
        seed=seed,
        words=WORDS,
        layers=4,
        labels=None,
        initializer_range=0.1,
        split_on_punctuation=False,
        normalize=task == "embedding",
    )


@pytest.fixture(scope="module")
def text_data() -> Dataset:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(120)]
    labels = np.array([int(any(int(w[1:]) < 8 for w in t.split())) for t in texts], dtype=np.int64)
    return Dataset(
        "tiny-text", "text", texts[:96], labels[:96], texts[96:], labels[96:], classes=["no", "yes"]
    )


def test_student_layers_are_every_kth_teacher_layer() -> None:
    assert hf_surgery.student_layer_indices(6, 3) == [1, 3, 5]
    assert hf_surgery.student_layer_indices(12, 4) == [2, 5, 8, 11]
    assert hf_surgery.student_layer_indices(4, 1) == [3]
    assert hf_surgery.student_layer_indices(4, 4) == [0, 1, 2, 3]


def test_hf_student_is_initialised_from_teacher_layers(tmp_path: Path) -> None:
    teacher = _tiny_bert(tmp_path / "bert", "classification").torch_module().inner
    student = hf_surgery.hf_student(teacher, 2)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    picked = hf_surgery.student_layer_indices(4, 2)
    assert picked == [1, 3]
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        m = re.match(r"(.*encoder\.layer\.)(\d+)\.(.*)", key)
        source = f"{m[1]}{picked[int(m[2])]}.{m[3]}" if m else key
        assert torch.equal(value, t_state[source]), key


def test_hf_classifier_distill_to_fewer_layers(tmp_path: Path, text_data: Dataset) -> None:
    from transformers import AutoConfig

    base = _tiny_bert(tmp_path / "bert", "classification")
    cand = distill(base, DistillConfig(layers=1, epochs=2), pass_context(tmp_path, text_data))
    assert cand.format == "hf" and (cand.path / "tokenizer.json").is_file()
    assert AutoConfig.from_pretrained(str(cand.path)).num_hidden_layers == 1
    assert surgery.param_count(cand.torch_module()) < surgery.param_count(base.torch_module())
    assert any("1 of 4 layers, initialised from teacher layers [3]" in n for n in cand.notes)
    logits = predict(cand.load(), cand.preprocessor(), text_data.x_test)
    assert logits.shape == (len(text_data.x_test), 2) and np.isfinite(logits).all()


def test_hf_embedder_distill_moves_toward_the_teacher(tmp_path: Path, text_data: Dataset) -> None:
    base = _tiny_bert(tmp_path / "bert", "embedding")
    assert base.spec.extra == {"normalize": True}
    unlabelled = Dataset("tiny-text", "text", text_data.x_train, None, text_data.x_test, None)
    cand = distill(base, DistillConfig(width=0.5, epochs=6, lr=3e-3), pass_context(tmp_path, unlabelled))
    assert cand.spec.extra == {"normalize": True}  # the Normalize module description travelled with it
    teacher = base.torch_module()
    init = base.torch_module()
    init.inner = hf_surgery.hf_student(teacher.inner, 2)  # width 0.5 of 4 layers, before training
    feeds = {k: torch.from_numpy(v) for k, v in base.preprocessor()(unlabelled.x_test).items()}
    with torch.no_grad():
        t, s0 = teacher(**feeds), init.eval()(**feeds)
    s1 = torch.from_numpy(predict(cand.load(), cand.preprocessor(), unlabelled.x_test))
    cos0 = float(torch.nn.functional.cosine_similarity(s0, t).mean())
    cos1 = float(torch.nn.functional.cosine_similarity(s1, t).mean())
    assert cos1 > cos0 + 0.05  # measured: 0.891 -> 0.989


# --------------------------------------------------------------------------------------- skips and errors


class NoWidthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(30, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_module_without_width_knob_is_skipped(
    tabular: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = types.ModuleType("modelyard_test_nowidth")
    mod.make = lambda: NoWidthNet()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    path = tmp_path / "w.safetensors"
    save_file(NoWidthNet().state_dict(), str(path))
    meta = {"torch_kind": "safetensors", "factory": "modelyard_test_nowidth:make", "factory_kwargs": {}}
    cand = Candidate("baseline", "torch", path, tabular.baseline.spec, meta=meta)
    with pytest.raises(PassSkipped, match=r"distill needs a width-parameterised factory .* or an HF model"):
        distill(cand, DistillConfig(), pass_context(tmp_path, tabular.dataset))


def test_onnx_candidate_is_skipped_with_the_reason(digits: Demo, tmp_path: Path) -> None:
    onnx = Candidate("baseline", "onnx", tmp_path / "model.onnx", digits.baseline.spec)
    with pytest.raises(
        PassSkipped, match=r"needs the PyTorch model; an ONNX-only model cannot be distilled here"
    ):
        distill(onnx, DistillConfig(), pass_context(tmp_path, digits.dataset))


def test_no_training_data_is_skipped(digits: Demo, tmp_path: Path) -> None:
    ds = digits.dataset
    empty = Dataset("no-train", "image", ds.x_train[:0], ds.y_train[:0], ds.x_test, ds.y_test)
    with pytest.raises(
        PassSkipped, match=r"distill needs training data .* 'no-train' has an empty train split"
    ):
        distill(digits.baseline, DistillConfig(), pass_context(tmp_path, empty))


def test_more_layers_than_the_teacher_is_a_config_error(tmp_path: Path, text_data: Dataset) -> None:
    base = _tiny_bert(tmp_path / "bert", "classification")
    with pytest.raises(ConfigError, match=r"distill\(layers=9\) but the teacher has 4 layers; choose 1\.\.4"):
        distill(base, DistillConfig(layers=9), pass_context(tmp_path, text_data))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, r"width must be in \(0, 1\], got 0"),
        ({"width": 1.5}, r"width must be in \(0, 1\], got 1\.5"),
        ({"alpha": 2}, r"alpha must be in \[0, 1\], got 2"),
        ({"layers": 0}, r"layers must be a positive integer or None, got 0"),
        ({"epochs": 0, "temperature": -1}, r"epochs must be an integer >= 1, got 0; temperature must be > 0"),
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kwargs)
