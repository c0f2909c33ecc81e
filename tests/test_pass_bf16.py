"""The torch-bf16 pass: built only where the CPU has BF16/AMX instructions (flags monkeypatched here), skipped
with its reason elsewhere; the candidate it builds really runs in bfloat16 and stays close to its parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.config import Policy
from modelyard.data.dataset import Dataset
from modelyard.errors import PassSkipped
from modelyard.optimize.passes.bf16 import TorchBf16Config, torch_bf16_pass
from modelyard.pipeline import build_candidates
from modelyard.runtime import device
from modelyard.runtime.preprocess import predict
from tests.helpers.models import sentiment_texts, tiny_bert_candidate
from tests.helpers.passes import pass_context
from tests.helpers.torch_mlp import mlp_candidate


def set_bf16(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    """The CPU's flags as the pass reads them, with or without AVX512_BF16/AMX-BF16."""
    real = device.cpu_info()
    isa = {**real["isa"], "bf16": present, "amx": present}
    monkeypatch.setattr(device, "cpu_info", lambda: {**real, "isa": isa})


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Candidate, Dataset]:
    return mlp_candidate(tmp_path_factory.mktemp("mlp"))


def test_without_bf16_instructions_the_pass_is_skipped_with_the_reason(
    mlp: tuple[Candidate, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, ds = mlp
    set_bf16(monkeypatch, False)
    with pytest.raises(PassSkipped, match=r"^torch-bf16: this CPU has no BF16/AMX instructions"):
        torch_bf16_pass(base, TorchBf16Config(), pass_context(tmp_path, ds))
    cands, skipped = build_candidates(base, ds, ["torch-bf16"], tmp_path / "b", policy=Policy(), threads=1)
    assert cands == []
    assert skipped == [
        {
            "recipe": "torch-bf16",
            "pass": "torch-bf16",
            "reason": "torch-bf16: this CPU has no BF16/AMX instructions (avx512_bf16 or amx_bf16); PyTorch "
            "would emulate bf16 matrix multiplies here, slower than fp32",
        }
    ]


def test_with_bf16_instructions_a_bf16_candidate_is_built_and_runs(
    mlp: tuple[Candidate, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, ds = mlp
    set_bf16(monkeypatch, True)
    cand = torch_bf16_pass(base, TorchBf16Config(), pass_context(tmp_path, ds))
    assert (
        cand.format == "torch" and cand.meta["torch_dtype"] == "bfloat16" and cand.meta["precision"] == "bf16"
    )
    runner: Any = cand.load(threads=1)
    assert runner.dtype == "bfloat16" and runner.describe()["settings"]["dtype"] == "bfloat16"
    assert {str(p.dtype) for p in runner.module.parameters()} == {"torch.bfloat16"}
    assert cand.size_bytes() < 0.6 * base.size_bytes()  # 2 bytes a weight instead of 4
    got = predict(runner, cand.preprocessor(), ds.x_test)
    ref = predict(base.load(threads=1), base.preprocessor(), ds.x_test)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert 0 < np.max(np.abs(got - ref)) < 0.1 * np.max(np.abs(ref))  # bf16 rounding: close, not identical
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.95
    assert cand.meta["parent_max_abs_diff"] > 0 and "bfloat16 weights and compute" in cand.notes[0]


def test_a_hugging_face_model_becomes_a_bf16_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_bf16(monkeypatch, True)
    base = tiny_bert_candidate(tmp_path / "bert", "embedding")
    texts = [t for t, _ in sentiment_texts(40)]
    ds = Dataset("texts", "text", texts[:24], None, texts[24:], None)
    cand = torch_bf16_pass(base, TorchBf16Config(), pass_context(tmp_path, ds))
    assert cand.format == "hf" and cand.meta["torch_dtype"] == "bfloat16"
    runner: Any = cand.load(threads=1)
    assert runner.describe()["settings"]["dtype"] == "bfloat16"
    got = predict(runner, cand.preprocessor(), ds.x_test)
    ref = predict(base.load(threads=1), base.preprocessor(), ds.x_test)
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert float(cos.min()) > 0.99


def test_what_the_pass_cannot_convert_is_skipped_with_the_reason(
    mlp: tuple[Candidate, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, ds = mlp
    set_bf16(monkeypatch, True)
    onnx = Candidate("onnx", "onnx", tmp_path / "m.onnx", base.spec)
    with pytest.raises(
        PassSkipped, match=r"works on PyTorch and Hugging Face candidates; this candidate is onnx"
    ):
        torch_bf16_pass(onnx, TorchBf16Config(), pass_context(tmp_path, ds, "a"))
    scripted = Candidate("ts", "torch", base.path, base.spec, meta={"torch_kind": "torchscript"})
    with pytest.raises(PassSkipped, match=r"needs a safetensors state dict with a factory"):
        torch_bf16_pass(scripted, TorchBf16Config(), pass_context(tmp_path, ds, "b"))
    already = Candidate("bf", "torch", base.path, base.spec, meta={**base.meta, "torch_dtype": "bfloat16"})
    with pytest.raises(PassSkipped, match=r"already runs in bfloat16"):
        torch_bf16_pass(already, TorchBf16Config(), pass_context(tmp_path, ds, "c"))


def test_the_minilm_demo_tries_both_runtimes_at_fp32_bf16_and_int8() -> None:
    from modelyard.optimize.recipes import parse_recipe
    from modelyard.zoo.demos import _minilm

    recipes = _minilm(Path("unused")).default_recipes
    for recipe in recipes:
        parse_recipe(recipe)  # every one names registered passes
    assert {"onnx", "onnx > int8-auto", "torch-bf16"} <= set(recipes)  # ONNX Runtime / PyTorch
    assert {"onnx > openvino", "onnx > openvino-bf16", "onnx > openvino-int8"} <= set(recipes)  # OpenVINO
