"""SmoothQuant-style smoothing (modelyard.optimize.passes.int8.smooth) and its use in int8-dynamic / int8-auto."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import modelyard.optimize.passes.export as export_pass
from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError
from modelyard.optimize.passes.int8 import auto, configs, dynamic, smooth
from modelyard.optimize.passes.int8.ort import dynamic_op_types
from modelyard.optimize.registry import PassContext
from tests.helpers.models import outlier_mlp, text_bert_candidate, text_dataset


def ctx_for(tmp: Path, dataset: Dataset, **kwargs) -> PassContext:  # type: ignore[no-untyped-def]
    return PassContext(workdir=tmp, dataset=dataset, threads=1, **kwargs)


def run_all(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(o) for o in sess.run(None, {k: v for k, v in feeds.items() if k in names})]


def op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def tiny_bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Candidate, Dataset]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bert")
    base = text_bert_candidate(tmp / "hf", "embedding")
    ds = text_dataset()
    cand = export_pass.onnx_pass(base, export_pass.OnnxExportConfig(fuse="always"), ctx_for(tmp / "onnx", ds))
    return cand, ds


# ---------------------------------------------------------------------------------------------------
# the rewrite is exact in fp32


def test_scales_formula_clip_and_zero_channels() -> None:
    s = smooth.smoothing_scales(
        np.array([4.0, 1.0, 0.0, 1e6, 2.0]), np.array([1.0, 4.0, 1.0, 1e-6, 0.0]), 0.5
    )
    assert s == pytest.approx([2.0, 0.5, 1.0, 100.0, 100.0])
    assert smooth.smoothing_scales(np.array([9.0]), np.array([3.0]), 1.0) == pytest.approx([9.0])
    assert smooth.smoothing_scales(np.array([9.0]), np.array([3.0]), 0.0) == pytest.approx([1 / 3])


def test_mlp_smoothing_is_exact_and_shares_one_mul(tmp_path: Path) -> None:
    cand, ds = outlier_mlp(tmp_path / "m")
    targets = smooth.find_targets(onnx.load(str(cand.path)))
    assert [(t.node, t.x) for t in targets] == [("mmA", "features"), ("mmB", "features"), ("mm2", "h")]
    stats = smooth.channel_max(cand.path, ["features", "h"], [{"features": ds.x_train}], threads=1)
    assert stats["features"][0] == pytest.approx(np.abs(ds.x_train[:, 0]).max())
    assert stats["features"].shape == (8,) and stats["h"].shape == (16,)
    dst = tmp_path / "smoothed.onnx"
    report = smooth.smooth_file(cand.path, dst, stats, 0.5, targets)
    assert report.nodes == ["mmA", "mmB", "mm2"] and report.tensors == 2
    assert report.scale_range[1] > 10 * report.scale_range[0]  # a real rescaling, not ~1
    assert op_counts(dst)["Mul"] == 2  # one for features (shared by mmA and mmB), one for h
    model = onnx.load(str(dst))
    rmax = next(n for n in model.graph.node if n.name == "rmax")
    assert list(rmax.input) == ["features"]  # the unsmoothed consumer still reads the raw tensor
    onnx.checker.check_model(model)
    feeds = {"features": ds.x_test}
    for a, b in zip(run_all(cand.path, feeds), run_all(dst, feeds), strict=True):
        assert float(np.max(np.abs(a - b))) < 1e-4


def test_tiny_bert_smoothing_is_exact_with_attention(tiny_bert_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cand, ds = tiny_bert_onnx
    assert op_counts(cand.path)["Attention"] == 2  # the fused graph
    sm = smooth.smoother(cand, ctx_for(tmp_path, ds), 16, dynamic_op_types(("Conv",)))
    assert sm is not None
    kinds = Counter(t.op_type for t in sm.targets)
    assert kinds["Attention"] == 2 and kinds["MatMul"] == 6
    feeds = cand.preprocessor()(list(ds.x_test))
    for alpha in (0.5, 1.0):
        dst = tmp_path / f"s{alpha}.onnx"
        report = sm.write(dst, alpha)
        assert len(report.nodes) == 8
        assert report.scale_range[0] != pytest.approx(1.0) or report.scale_range[1] != pytest.approx(1.0)
        a, b = run_all(cand.path, feeds)[0], run_all(dst, feeds)[0]
        assert float(np.max(np.abs(a - b))) < 1e-4
    assert smooth.smoothing_error(cand.path, dst, feeds, 1) < 1e-4


# ---------------------------------------------------------------------------------------------------
# smoothing makes int8 better where an outlier channel crushes the others


def relative_error(cand: Candidate, parent: Candidate, x: np.ndarray) -> float:
    a = cand.load(threads=1).run({"features": x})["logits"]
    b = parent.load(threads=1).run({"features": x})["logits"]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_smoothing_improves_dynamic_int8_on_an_outlier_channel(tmp_path: Path) -> None:
    cand, ds = outlier_mlp(tmp_path / "m")
    plain = dynamic.int8_dynamic(cand, configs.DynamicQuantConfig(), ctx_for(tmp_path / "p", ds))
    smoothed = dynamic.int8_dynamic(
        cand, configs.DynamicQuantConfig(smooth_alpha=0.5), ctx_for(tmp_path / "s", ds)
    )
    err_plain = relative_error(plain, cand, ds.x_test)
    err_smooth = relative_error(smoothed, cand, ds.x_test)
    assert err_plain > 0.05  # the premise: the outlier channel hurts plain int8
    assert err_smooth < 0.3 * err_plain
    assert op_counts(smoothed.path)["MatMulInteger"] == 3
    smooth_muls = [n for n in onnx.load(str(smoothed.path)).graph.node if n.name.startswith("Smooth_")]
    assert [n.op_type for n in smooth_muls] == ["Mul", "Mul"]
    q = smoothed.meta["quantization"]
    assert q["smooth_alpha"] == 0.5 and q["quantized_nodes"] == 3
    s = smoothed.meta["smoothing"]
    assert s["alpha"] == 0.5 and s["smoothed_nodes"] == 3 and s["mul_nodes"] == 2
    assert s["samples"] == 128 and s["fp32_max_rel_diff"] < 1e-5
    assert any(
        n.startswith("SmoothQuant smoothing alpha 0.5 on 2 input tensor(s) of 3 node(s)")
        for n in smoothed.notes
    )
    assert "smooth_alpha" not in plain.meta["quantization"] and "smoothing" not in plain.meta
    assert list((tmp_path / "s").iterdir()) == [smoothed.path]


def test_auto_smooths_instead_of_keeping_nodes_fp32(tmp_path: Path) -> None:
    cand, ds = outlier_mlp(tmp_path / "m")
    cfg = configs.AutoQuantConfig(mode="dynamic", smooth_alphas=(0.5, 0.8))
    floors = {"agreement_min": 0.97}
    q = auto.int8_auto(cand, cfg, ctx_for(tmp_path / "w", ds, fidelity=floors))
    rounds = q.meta["search"]
    assert rounds[0]["passed"] is False and rounds[0]["smooth_alpha"] is None
    assert [r["smooth_alpha"] for r in rounds[1:3]] == [0.5, 0.8]
    assert any(r["passed"] for r in rounds[1:3])
    assert q.meta["fp32_nodes"] == []
    alpha = q.meta["quantization"]["smooth_alpha"]
    assert alpha in (0.5, 0.8) and q.meta["smoothing"]["alpha"] == alpha
    assert q.meta["smoothing"]["alphas_tried"] == [0.5, 0.8]
    assert q.meta["fidelity_train"]["agreement"] >= 0.975
    assert any(n.startswith("round 1 (alpha 0.5, 3 nodes smoothed, all quantized)") for n in q.notes)
    assert op_counts(q.path)["MatMulInteger"] == 3
    plain = auto.int8_auto(
        cand,
        configs.AutoQuantConfig(mode="dynamic", smooth_alphas=()),
        ctx_for(tmp_path / "p", ds, fidelity=floors),
    )
    assert plain.meta["quantization"]["smooth_alpha"] is None and "smoothing" not in plain.meta
    assert len(plain.meta["fp32_nodes"]) >= 1  # without smoothing the floors cost fp32 nodes
    assert op_counts(plain.path)["MatMulInteger"] < 3


def test_static_auto_does_not_smooth(tmp_path: Path) -> None:
    cand, ds = outlier_mlp(tmp_path / "m")
    q = auto.int8_auto(cand, configs.AutoQuantConfig(mode="static"), ctx_for(tmp_path / "w", ds))
    assert "smooth_alpha" not in q.meta["quantization"] and "smoothing" not in q.meta


def test_nothing_to_smooth_is_noted(tmp_path: Path) -> None:
    w = np.ones((2, 1, 3, 3), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["features", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"], name="flat"),
            helper.make_node("MatMul", ["f", "f2"], ["logits"], name="mm_act"),  # no initializer weight
        ],
        "g",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1, 2, 2]),
            helper.make_tensor_value_info("f2", TensorProto.FLOAT, [8, 3]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W")],
    )
    assert smooth.find_targets(helper.make_model(graph)) == []


# ---------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (
            configs.DynamicQuantConfig,
            {"smooth_alpha": 1.5},
            r"int8-dynamic: smooth_alpha must be a number in \[0, 1\]",
        ),
        (
            configs.DynamicQuantConfig,
            {"smooth_alpha": True},
            r"smooth_alpha must be a number in \[0, 1\].*got True",
        ),
        (
            configs.DynamicQuantConfig,
            {"smooth_alpha": "0.5"},
            r"smooth_alpha must be a number in \[0, 1\].*got '0.5'",
        ),
        (
            configs.DynamicQuantConfig,
            {"smooth_samples": 0},
            "int8-dynamic: smooth_samples must be an integer >= 1",
        ),
        (
            configs.AutoQuantConfig,
            {"smooth_alphas": 0.5},
            r"int8-auto: smooth_alphas must be a list of numbers",
        ),
        (
            configs.AutoQuantConfig,
            {"smooth_alphas": (0.5, -0.1)},
            r"int8-auto: smooth_alphas must be a number in \[0, 1\].*got -0.1",
        ),
    ],
)
def test_smoothing_option_validation(cls: type, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_smoothing_option_defaults() -> None:
    assert configs.DynamicQuantConfig().smooth_alpha is None
    assert configs.AutoQuantConfig().smooth_alphas == (0.5, 0.65, 0.8)
    assert configs.AutoQuantConfig(smooth_alphas=[1, 0.5]).smooth_alphas == (1.0, 0.5)  # type: ignore[arg-type]


def test_shortfall_sums_the_gaps_below_the_floors() -> None:
    from modelyard.optimize.passes.int8.sensitivity import shortfall

    floors = {"cosine_mean_min": 0.99, "cosine_p5_min": 0.98, "top10_min": 0.95}
    fid = {"cosine_mean": 0.995, "cosine_p5": 0.97, "top10": 0.93, "damage": 0.01}
    assert shortfall(fid, floors, "embedding") == pytest.approx(0.01 + 0.02)
    assert shortfall({"agreement": 1.0}, {"agreement_min": 0.99}, "classification") == 0.0
