"""The ``onnx`` pass: exact export of the demo nets and of tiny BERT models, dynamic axes, graph optimization."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import modelyard.optimize.passes.export as export_pass  # registers "onnx"
from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError, PassSkipped
from modelyard.optimize.registry import PassContext
from modelyard.zoo.demos import load_demo
from tests.helpers.models import text_bert_candidate, text_dataset, texts

EXACT = 1e-4


@pytest.fixture(scope="session")
def zoo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)  # session fixtures run before conftest's per-test thread setting
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def digits(zoo_home: Path):  # type: ignore[no-untyped-def]
    return load_demo("digits", zoo_home)


@pytest.fixture(scope="session")
def tabular(zoo_home: Path):  # type: ignore[no-untyped-def]
    return load_demo("tabular", zoo_home)


def ctx_for(tmp: Path, dataset: Dataset) -> PassContext:
    return PassContext(workdir=tmp, dataset=dataset, threads=1)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


# ---------------------------------------------------------------------------------------------------
# torch demos


@pytest.mark.parametrize("batch", [1, 7, 360])
def test_digits_export_matches_torch_at_any_batch(digits, tmp_path: Path, batch: int) -> None:  # type: ignore[no-untyped-def]
    cand = export_pass.onnx_pass(
        digits.baseline, export_pass.OnnxExportConfig(), ctx_for(tmp_path, digits.dataset)
    )
    assert cand.format == "onnx" and cand.path == tmp_path / "model.onnx"
    assert cand.files() == [cand.path]  # weights inside the single file
    x = digits.dataset.x_test[:batch]
    ref = digits.baseline.load().run({"pixels": x})["logits"]
    got = cand.load(threads=1).run({"pixels": x})["logits"]
    assert got.shape == (batch, 10)
    assert max_diff(got, ref) < EXACT


def test_digits_graph_stays_standard_onnx(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cand = export_pass.onnx_pass(
        digits.baseline, export_pass.OnnxExportConfig(), ctx_for(tmp_path, digits.dataset)
    )
    model = onnx.load(str(cand.path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert cand.meta["graph_optimizer"] == "ort-basic"
    assert cand.meta["opset"] == 17
    assert "torch_kind" not in cand.meta and "factory" not in cand.meta
    assert any("TorchScript" in n for n in cand.notes)
    assert list(tmp_path.iterdir()) == [cand.path]  # no leftovers in the workdir


def test_tabular_export_matches_torch(tabular, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cand = export_pass.onnx_pass(
        tabular.baseline, export_pass.OnnxExportConfig(), ctx_for(tmp_path, tabular.dataset)
    )
    x = tabular.dataset.x_test
    ref = tabular.baseline.load().run({"features": x})["logits"]
    for batch in (1, 7, len(x)):
        got = cand.load(threads=1).run({"features": x[:batch]})["logits"]
        assert max_diff(got, ref[:batch]) < EXACT


def test_export_does_not_leak_exporter_warnings(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_pass.onnx_pass(
            digits.baseline, export_pass.OnnxExportConfig(), ctx_for(tmp_path, digits.dataset)
        )
    leaked = [w for w in caught if issubclass(w.category, DeprecationWarning | torch.jit.TracerWarning)]
    assert leaked == []
    # and the filters were local: a DeprecationWarning raised now is still seen
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        warnings.warn("still visible", DeprecationWarning, stacklevel=1)
    assert len(after) == 1


def test_unoptimized_export_then_optimize_onnx_candidate(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = export_pass.onnx_pass(
        digits.baseline, export_pass.OnnxExportConfig(optimize=False), ctx_for(tmp_path / "a", digits.dataset)
    )
    assert "graph_optimizer" not in raw.meta
    assert any("optimize=False" in n for n in raw.notes)
    with pytest.raises(PassSkipped, match="already ONNX"):
        export_pass.onnx_pass(
            raw, export_pass.OnnxExportConfig(optimize=False), ctx_for(tmp_path / "b", digits.dataset)
        )
    opt = export_pass.onnx_pass(raw, export_pass.OnnxExportConfig(), ctx_for(tmp_path / "c", digits.dataset))
    assert opt.meta["graph_optimizer"] == "ort-basic"
    x = digits.dataset.x_test[:7]
    assert max_diff(opt.load().run({"pixels": x})["logits"], raw.load().run({"pixels": x})["logits"]) < EXACT
    with pytest.raises(PassSkipped, match="already ONNX and graph-optimized"):
        export_pass.onnx_pass(opt, export_pass.OnnxExportConfig(), ctx_for(tmp_path / "d", digits.dataset))


@pytest.mark.parametrize("opset", [9, 12, 21, "17", True])
def test_bad_opset_is_a_config_error(opset: object) -> None:
    with pytest.raises(ConfigError, match="opset must be an integer from 13 to 20"):
        export_pass.OnnxExportConfig(opset=opset)  # type: ignore[arg-type]


def test_optimize_must_be_bool() -> None:
    with pytest.raises(ConfigError, match="optimize must be true or false"):
        export_pass.OnnxExportConfig(optimize="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# tiny BERT (Hugging Face folder)


@pytest.mark.parametrize("task", ["classification", "embedding"])
def test_tiny_bert_export_is_exact_and_fused(tmp_path: Path, task: str) -> None:
    base = text_bert_candidate(tmp_path / "hf", task)
    ds = text_dataset()
    cand = export_pass.onnx_pass(
        base, export_pass.OnnxExportConfig(fuse="always"), ctx_for(tmp_path / "work", ds)
    )
    assert cand.tokenizer_dir == base.tokenizer_dir
    assert cand.meta["max_length"] == 32
    assert cand.meta["bert_shape"] == {"model_type": "bert", "num_heads": 2, "hidden_size": 32}
    fusion = cand.meta["fusion"]
    assert fusion["Attention"] == 2
    assert fusion["EmbedLayerNormalization"] == 1
    assert fusion["SkipLayerNormalization"] >= 2
    torch_runner = base.load(threads=1)
    ort_runner = cand.load(threads=1)
    out = cand.spec.output_name
    # two batch sizes x natural lengths, plus a fixed padded length
    cases = [(texts(2, 10), None), (texts(5, 11), None), (texts(3, 12), 20)]
    lengths = set()
    for batch, pad_to in cases:
        feeds = base.preprocessor(pad_to=pad_to)(batch)
        lengths.add(feeds["input_ids"].shape[1])
        ref = torch_runner.run(feeds)[out]
        got = ort_runner.run(feeds)[out]
        assert got.shape == (len(batch), 3 if task == "classification" else 32)
        assert max_diff(got, ref) < EXACT
    assert len(lengths) >= 2  # the sequence axis really varied


def test_unfused_bert_onnx_candidate_gets_fused(tmp_path: Path) -> None:
    base = text_bert_candidate(tmp_path / "hf", "embedding")
    ds = text_dataset()
    raw = export_pass.onnx_pass(
        base, export_pass.OnnxExportConfig(optimize=False), ctx_for(tmp_path / "a", ds)
    )
    assert "fusion" not in raw.meta and raw.meta["bert_shape"]["num_heads"] == 2
    fused = export_pass.onnx_pass(
        raw, export_pass.OnnxExportConfig(fuse="always"), ctx_for(tmp_path / "b", ds)
    )
    assert fused.meta["graph_optimizer"] == "ort-transformers-bert"
    assert fused.meta["fusion"]["Attention"] == 2
    feeds = base.preprocessor()(texts(4, 3))
    assert max_diff(fused.load().run(feeds)["embedding"], raw.load().run(feeds)["embedding"]) < EXACT


def test_onnx_pass_refuses_unknown_format(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    odd = Candidate(name="x", format="tflite", path=tmp_path / "m.tflite", spec=digits.baseline.spec)  # type: ignore[arg-type]
    with pytest.raises(PassSkipped, match="cannot export a 'tflite' candidate"):
        export_pass.onnx_pass(odd, export_pass.OnnxExportConfig(), ctx_for(tmp_path / "w", digits.dataset))


def test_bert_shape_reads_hf_config() -> None:
    assert export_pass.bert_shape({"model_type": "bert", "num_attention_heads": 12, "hidden_size": 384}) == {
        "model_type": "bert",
        "num_heads": 12,
        "hidden_size": 384,
    }
    assert export_pass.bert_shape({"model_type": "distilbert", "n_heads": 12, "dim": 768}) == {
        "model_type": "distilbert",
        "num_heads": 12,
        "hidden_size": 768,
    }
    assert export_pass.bert_shape({"model_type": "gpt2", "n_head": 12}) is None


@pytest.mark.parametrize("fuse", ["auto", "never"])
def test_fusion_is_measured_or_forced(tmp_path: Path, fuse: str) -> None:
    base = text_bert_candidate(tmp_path / "hf", "embedding")
    ds = text_dataset()
    cand = export_pass.onnx_pass(base, export_pass.OnnxExportConfig(fuse=fuse), ctx_for(tmp_path / "w", ds))
    import onnx

    ops = {n.op_type for n in onnx.load(str(cand.path)).graph.node}
    if fuse == "never":
        assert "Attention" not in ops and "fusion_speed_items_per_s" not in cand.meta
    else:
        speeds = cand.meta["fusion_speed_items_per_s"]
        kept_unfused = "Attention" not in ops
        assert kept_unfused == (speeds["unfused"] > 1.05 * speeds["fused"])
        assert any("items/s" in n for n in cand.notes) == kept_unfused
    feeds = base.preprocessor()(texts(4, 3))
    assert max_diff(cand.load().run(feeds)["embedding"], base.load().run(feeds)["embedding"]) < EXACT


def test_bad_fuse_choice() -> None:
    with pytest.raises(ConfigError, match="fuse must be one of auto, always, never"):
        export_pass.OnnxExportConfig(fuse="sometimes")
