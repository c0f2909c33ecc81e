"""int8-dynamic, int8-static, int8-auto and fp16 passes, and the sensitivity helpers behind int8-auto."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import modelyard.optimize.passes.export as export_pass  # registers "onnx"
import modelyard.optimize.passes.fp16 as fp16_pass  # registers "fp16"
from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import ArtifactError, ConfigError, PassSkipped
from modelyard.optimize.passes.int8 import auto, configs, dynamic, static  # registers the int8 passes
from modelyard.optimize.passes.int8 import sensitivity as sens
from modelyard.optimize.passes.int8.ort import default_reduce_range
from modelyard.optimize.registry import PassContext
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.zoo.demos import load_demo
from tests.helpers.models import text_bert_candidate, text_dataset


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # session fixtures run before conftest's per-test thread setting
    return load_demo("digits", tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def digits_onnx(digits, tmp_path_factory: pytest.TempPathFactory) -> Candidate:  # type: ignore[no-untyped-def]
    ctx = PassContext(workdir=tmp_path_factory.mktemp("onnx"), dataset=digits.dataset, threads=1)
    return export_pass.onnx_pass(digits.baseline, export_pass.OnnxExportConfig(), ctx)


def ctx_for(tmp: Path, dataset: Dataset, **kwargs) -> PassContext:  # type: ignore[no-untyped-def]
    return PassContext(workdir=tmp, dataset=dataset, threads=1, **kwargs)


def op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def agreement_with(cand: Candidate, parent: Candidate, x: np.ndarray) -> float:
    a = cand.load(threads=1).run({"pixels": x})["logits"]
    b = parent.load(threads=1).run({"pixels": x})["logits"]
    return float(np.mean(a.argmax(1) == b.argmax(1)))


# ---------------------------------------------------------------------------------------------------
# a model that int8 breaks: one input feature spans [0, 1000], the ones that matter span [-1, 1]


def outlier_candidate(folder: Path) -> tuple[Candidate, Dataset]:
    """MatMul(4->16)+Add, Relu, MatMul(16->3)+Add. Feature 0 is huge and ignored (zero weights), so an
    int8 scale for the whole input crushes features 1-3: plain quantization flips most predictions, and
    keeping 'mm1' in fp32 fixes it."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 16)).astype(np.float32)
    w1[0] = 0.0
    b1 = rng.normal(scale=0.1, size=16).astype(np.float32)
    w2 = rng.normal(size=(16, 3)).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "W1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "W2"], ["l0"], name="mm2"),
        helper.make_node("Add", ["l0", "b2"], ["logits"], name="add2"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outlier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    def data(n: int) -> np.ndarray:
        x = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
        x[:, 0] = rng.uniform(0, 1000, size=n)
        return x

    ds = Dataset(
        name="outlier", modality="tabular", x_train=data(200), y_train=None, x_test=data(50), y_test=None
    )
    spec = RunnerSpec(
        (TensorSpec("features", "float32", (None, 4)),),
        (TensorSpec("logits", "float32", (None, 3)),),
        "classification",
        3,
    )
    return Candidate(name="baseline", format="onnx", path=path, spec=spec), ds


def conv_only_candidate(folder: Path) -> Candidate:
    w = np.ones((2, 1, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixels", "W"], ["logits"], name="conv", pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [numpy_helper.from_array(w, "W")],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = RunnerSpec(
        (TensorSpec("pixels", "float32", (None, 1, 8, 8)),),
        (TensorSpec("logits", "float32", (None, 2, 8, 8)),),
        "embedding",
    )
    return Candidate(name="baseline", format="onnx", path=path, spec=spec)


# ---------------------------------------------------------------------------------------------------
# int8-dynamic


def test_dynamic_on_digits_keeps_conv_fp32_and_runs(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    q = dynamic.int8_dynamic(digits_onnx, configs.DynamicQuantConfig(), ctx_for(tmp_path, digits.dataset))
    ops = op_counts(q.path)
    assert ops["Conv"] == 2 and ops["ConvInteger"] == 0
    assert ops["MatMulInteger"] == 2  # both Linear layers (exported as Gemm) are quantized
    assert q.meta["quantization"] == {
        "method": "dynamic",
        "per_channel": True,
        "reduce_range": default_reduce_range(),
        "weight_type": "int8",
        "quantized_nodes": 2,
    }
    assert any("op types kept fp32: Conv" in n for n in q.notes)
    assert agreement_with(q, digits_onnx, digits.dataset.x_test) >= 0.97
    assert list(tmp_path.iterdir()) == [q.path]


def test_dynamic_with_conv_gives_convinteger_that_ort_132_runs(
    digits, digits_onnx: Candidate, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Older ONNX Runtime builds had no CPU kernel for ConvInteger(u8, s8) and refused such a model at session
    # creation (ORT #3130/#6430). ONNX Runtime 1.32 (pinned here) runs it; the pass checks every produced model
    # by loading and running it, so a build without the kernel gives PassSkipped (see the next test).
    q = dynamic.int8_dynamic(
        digits_onnx, configs.DynamicQuantConfig(exclude_op_types=()), ctx_for(tmp_path, digits.dataset)
    )
    assert op_counts(q.path)["ConvInteger"] == 2
    assert q.meta["quantization"]["quantized_nodes"] == 4
    assert agreement_with(q, digits_onnx, digits.dataset.x_test) >= 0.97


def test_a_model_ort_refuses_becomes_pass_skipped(
    digits,
    digits_onnx: Candidate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    def refuse(path: Path, feeds: dict, threads: int | None = None) -> np.ndarray:  # type: ignore[type-arg]
        raise ArtifactError(
            f"ONNX Runtime cannot load {path}: NOT_IMPLEMENTED : Could not find an implementation for ConvInteger(10)"
        )

    monkeypatch.setattr(export_pass, "run_onnx", refuse)
    with pytest.raises(
        PassSkipped, match=r"int8-dynamic: ONNX Runtime refuses the quantized model .*ConvInteger"
    ):
        dynamic.int8_dynamic(
            digits_onnx, configs.DynamicQuantConfig(exclude_op_types=()), ctx_for(tmp_path, digits.dataset)
        )


def test_dynamic_with_nothing_to_quantize_is_skipped(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cand = conv_only_candidate(tmp_path / "m")
    with pytest.raises(PassSkipped, match=r"nothing to quantize .*exclude_op_types=\['Conv'\]"):
        dynamic.int8_dynamic(cand, configs.DynamicQuantConfig(), ctx_for(tmp_path / "w", digits.dataset))
    assert not (tmp_path / "w" / "model.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_type": "int4"}, "weight_type must be one of int8, uint8; got 'int4'"),
        ({"per_channel": "yes"}, "per_channel must be true or false"),
        ({"exclude_op_types": "Conv"}, "exclude_op_types must be a list of names"),
    ],
)
def test_dynamic_config_validation(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        configs.DynamicQuantConfig(**kwargs)


def test_list_options_become_tuples() -> None:
    assert configs.DynamicQuantConfig(exclude_op_types=["Conv", "Gather"]).exclude_op_types == (
        "Conv",
        "Gather",
    )  # type: ignore[arg-type]
    assert configs.StaticQuantConfig(exclude_nodes=["a"]).exclude_nodes == ("a",)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# int8-static


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy"])
def test_static_each_calibration_agrees_on_test_split(
    digits, digits_onnx: Candidate, tmp_path: Path, calibration: str
) -> None:  # type: ignore[no-untyped-def]
    cfg = configs.StaticQuantConfig(calibration=calibration, samples=64)
    q = static.int8_static(digits_onnx, cfg, ctx_for(tmp_path, digits.dataset))
    ops = op_counts(q.path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert q.meta["quantization"]["calibration"] == calibration
    assert q.meta["quantization"]["calibration_samples"] == 64
    assert q.notes[0].startswith(
        f"static int8 QDQ (activations int8, per-channel int8 weights), {calibration} calibration"
    )
    assert agreement_with(q, digits_onnx, digits.dataset.x_test) >= 0.97


def test_static_exclude_nodes_keeps_them_float(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first_conv = next(n.name for n in onnx.load(str(digits_onnx.path)).graph.node if n.op_type == "Conv")
    q = static.int8_static(
        digits_onnx, configs.StaticQuantConfig(exclude_nodes=(first_conv,)), ctx_for(tmp_path, digits.dataset)
    )
    quantized = {n.name for n in sens.quantized_qdq_nodes(onnx.load(str(q.path)))}
    assert first_conv not in quantized
    assert any(n.startswith("/features/features.2/Conv") for n in quantized)
    assert any(first_conv in n for n in q.notes)


def test_bad_calibration_name_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"int8-static: calibration must be one of minmax, percentile, entropy; got 'kl'"
    ):
        configs.StaticQuantConfig(calibration="kl")
    with pytest.raises(
        ConfigError, match=r"int8-auto: calibration must be one of minmax, percentile, entropy"
    ):
        configs.AutoQuantConfig(calibration="MinMax")


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (configs.StaticQuantConfig, {"samples": 0}, "samples must be an integer >= 1"),
        (configs.StaticQuantConfig, {"activation_type": "fp8"}, "activation_type must be one of int8, uint8"),
        (configs.AutoQuantConfig, {"mode": "fast"}, "mode must be one of auto, dynamic, static"),
        (configs.AutoQuantConfig, {"max_fp32_nodes": -1}, "max_fp32_nodes must be an integer >= 0"),
        (configs.AutoQuantConfig, {"margin": 0.7}, r"margin must be a number in \[0, 0.5\)"),
    ],
)
def test_static_and_auto_config_validation(cls: type, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


# ---------------------------------------------------------------------------------------------------
# wrong formats, fp16


@pytest.mark.parametrize(
    ("fn", "config"),
    [
        (dynamic.int8_dynamic, configs.DynamicQuantConfig()),
        (static.int8_static, configs.StaticQuantConfig()),
        (auto.int8_auto, configs.AutoQuantConfig()),
    ],
)
def test_int8_passes_skip_non_onnx_candidates(digits, tmp_path: Path, fn, config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        PassSkipped, match=r"works on ONNX models and this candidate is torch; run 'onnx' first"
    ):
        fn(digits.baseline, config, ctx_for(tmp_path, digits.dataset))


def test_fp16_is_skipped_on_cpu(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        PassSkipped, match=r"fp16 needs a GPU target; this machine has none \(CPU fp16 kernels"
    ):
        fp16_pass.fp16_pass(digits_onnx, fp16_pass.Fp16Config(), ctx_for(tmp_path, digits.dataset))


def test_fp16_converts_for_a_gpu_target(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = ctx_for(tmp_path, digits.dataset, is_gpu=True)
    with pytest.raises(PassSkipped, match="this candidate is torch; run 'onnx' first"):
        fp16_pass.fp16_pass(digits.baseline, fp16_pass.Fp16Config(), ctx)
    half = fp16_pass.fp16_pass(digits_onnx, fp16_pass.Fp16Config(), ctx)
    model = onnx.load(str(half.path))
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert half.spec == digits_onnx.spec
    assert half.meta["precision"] == "fp16"
    bare = fp16_pass.fp16_pass(
        digits_onnx,
        fp16_pass.Fp16Config(keep_io_types=False),
        ctx_for(tmp_path / "b", digits.dataset, is_gpu=True),
    )
    assert bare.spec.inputs[0].dtype == "float16"


def test_fp16_refuses_an_int8_model(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    q = dynamic.int8_dynamic(
        digits_onnx, configs.DynamicQuantConfig(), ctx_for(tmp_path / "q", digits.dataset)
    )
    with pytest.raises(PassSkipped, match="already quantized to int8"):
        fp16_pass.fp16_pass(q, fp16_pass.Fp16Config(), ctx_for(tmp_path / "h", digits.dataset, is_gpu=True))


# ---------------------------------------------------------------------------------------------------
# int8-auto


def test_auto_on_digits_needs_no_fp32_nodes(digits, digits_onnx: Candidate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    q = auto.int8_auto(digits_onnx, configs.AutoQuantConfig(samples=64), ctx_for(tmp_path, digits.dataset))
    assert q.meta["quantization"]["method"] == "auto-static"
    assert q.meta["fp32_nodes"] == []
    assert len(q.meta["search"]) == 1 and q.meta["search"][0]["passed"] is True
    assert q.meta["fidelity_floors"] == {"agreement_min": 0.99}
    assert q.meta["fidelity_targets"] == {"agreement_min": pytest.approx(0.995)}
    assert "sensitivity" not in q.meta
    assert agreement_with(q, digits_onnx, digits.dataset.x_test) >= 0.97


def test_outlier_model_breaks_plain_int8(tmp_path: Path) -> None:
    cand, ds = outlier_candidate(tmp_path / "m")
    q = static.int8_static(cand, configs.StaticQuantConfig(), ctx_for(tmp_path / "w", ds))
    x = ds.x_test
    a = q.load().run({"features": x})["logits"].argmax(1)
    b = cand.load().run({"features": x})["logits"].argmax(1)
    assert np.mean(a == b) < 0.9  # the premise of the next tests


def test_auto_static_keeps_the_crushed_layer_in_fp32(tmp_path: Path) -> None:
    cand, ds = outlier_candidate(tmp_path / "m")
    q = auto.int8_auto(
        cand, configs.AutoQuantConfig(), ctx_for(tmp_path / "w", ds, fidelity={"agreement_min": 0.99})
    )
    assert q.meta["quantization"]["method"] == "auto-static"
    # quant_pre_process fuses MatMul+Add into a Gemm named after the MatMul
    assert len(q.meta["fp32_nodes"]) == 1 and q.meta["fp32_nodes"][0].startswith("mm1")
    assert q.meta["quantization"]["quantized_nodes"] == 1
    rounds = q.meta["search"]
    assert [r["fp32_nodes"] for r in rounds] == [0, 1]
    assert rounds[0]["passed"] is False and rounds[0]["fidelity"]["agreement"] < 0.9
    assert rounds[1]["passed"] is True and rounds[1]["fidelity"]["agreement"] == 1.0
    assert q.meta["sensitivity"]["top"][0]["node"] == q.meta["fp32_nodes"][0]
    assert any(n.startswith("kept 1 of 2 quantizable nodes in fp32") for n in q.notes)
    assert any(n.startswith("round 0 (all 2 quantized): agreement") for n in q.notes)
    a = q.load().run({"features": ds.x_test})["logits"].argmax(1)
    b = cand.load().run({"features": ds.x_test})["logits"].argmax(1)
    assert np.mean(a == b) >= 0.98


def test_auto_dynamic_ranks_by_isolation(tmp_path: Path) -> None:
    cand, ds = outlier_candidate(tmp_path / "m")
    # smoothing off: with it the zero-weight outlier channel is simply shrunk and nothing stays fp32
    cfg = configs.AutoQuantConfig(mode="dynamic", margin=0.0, smooth_alphas=())
    q = auto.int8_auto(cand, cfg, ctx_for(tmp_path / "w", ds, fidelity={"agreement_min": 0.98}))
    assert q.meta["quantization"]["method"] == "auto-dynamic"
    assert q.meta["fp32_nodes"] == ["mm1"]
    assert q.meta["sensitivity"]["method"].startswith("isolation")
    assert op_counts(q.path)["MatMulInteger"] == 1
    smoothed = auto.int8_auto(
        cand,
        configs.AutoQuantConfig(mode="dynamic", margin=0.0),
        ctx_for(tmp_path / "s", ds, fidelity={"agreement_min": 0.98}),
    )
    assert smoothed.meta["fp32_nodes"] == [] and smoothed.meta["quantization"]["smooth_alpha"] is not None


def test_auto_gives_up_at_max_fp32_nodes_with_the_best_reached(tmp_path: Path) -> None:
    cand, ds = outlier_candidate(tmp_path / "m")
    with pytest.raises(
        PassSkipped,
        match=r"keeping at most 0 of 2 quantizable node\(s\) in fp32 .*best reached with 0 fp32 node\(s\): agreement 0\.\d+ \(target 0\.9950\)",
    ):
        auto.int8_auto(cand, configs.AutoQuantConfig(max_fp32_nodes=0), ctx_for(tmp_path / "w", ds))


def test_auto_picks_dynamic_for_a_transformer_graph(tmp_path: Path) -> None:
    base = text_bert_candidate(tmp_path / "hf", "embedding")
    ds = text_dataset()
    onnx_cand = export_pass.onnx_pass(
        base, export_pass.OnnxExportConfig(fuse="always"), ctx_for(tmp_path / "onnx", ds)
    )
    q = auto.int8_auto(
        onnx_cand,
        configs.AutoQuantConfig(samples=24),
        ctx_for(tmp_path / "w", ds, fidelity={"cosine_mean_min": 0.9, "cosine_p5_min": 0.8}),
    )
    assert q.meta["quantization"]["method"] == "auto-dynamic"
    assert q.meta["fidelity_floors"] == {"cosine_mean_min": 0.9, "cosine_p5_min": 0.8}
    assert set(q.meta["search"][0]["fidelity"]) >= {"cosine_mean", "cosine_p5", "top10"}
    assert op_counts(q.path)["QAttention"] >= 1
    d = dynamic.int8_dynamic(onnx_cand, configs.DynamicQuantConfig(), ctx_for(tmp_path / "d", ds))
    assert op_counts(d.path)["QAttention"] == 2  # the fused graph quantizes (DefaultTensorType is passed)


# ---------------------------------------------------------------------------------------------------
# sensitivity helpers


def test_fidelity_for_classifiers_is_agreement_and_kl() -> None:
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    out = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    fid = sens.fidelity(out, ref, "classification")
    assert fid["agreement"] == pytest.approx(0.75)
    p = np.exp(1) / (1 + np.exp(1))  # softmax of (1, 0)
    kl_row3 = p * np.log(p / (1 - p)) + (1 - p) * np.log((1 - p) / p)
    assert fid["damage"] == pytest.approx(kl_row3 / 4)
    assert sens.fidelity(ref, ref, "classification") == {"agreement": 1.0, "damage": pytest.approx(0.0)}


def test_fidelity_for_embedders_is_cosine_and_neighbours() -> None:
    ref = np.eye(12)
    out = np.eye(12)
    out[0] = [np.cos(0.5), np.sin(0.5)] + [0.0] * 10
    fid = sens.fidelity(out, ref, "embedding")
    cos = np.array([np.cos(0.5)] + [1.0] * 11)
    assert fid["cosine_mean"] == pytest.approx(cos.mean())
    assert fid["cosine_min"] == pytest.approx(np.cos(0.5))
    assert fid["cosine_p5"] == pytest.approx(np.percentile(cos, 5))
    assert fid["damage"] == pytest.approx(1 - cos.mean())
    assert 0.0 <= fid["top10"] <= 1.0


def test_fidelity_floors_defaults_and_overrides() -> None:
    assert sens.fidelity_floors(None, "classification") == {"agreement_min": 0.99}
    assert sens.fidelity_floors({}, "embedding") == {"cosine_mean_min": 0.99, "cosine_p5_min": 0.98}
    policy = {"agreement_min": 0.98, "cosine_mean_min": 0.995, "cosine_p5_min": 0.98, "top10_min": 0.95}
    assert sens.fidelity_floors(policy, "embedding") == {
        "cosine_mean_min": 0.995,
        "cosine_p5_min": 0.98,
        "top10_min": 0.95,
    }
    with pytest.raises(ConfigError, match=r"fidelity floor agreement_min must be within \[0, 1\], got 1.5"):
        sens.fidelity_floors({"agreement_min": 1.5}, "classification")
    assert sens.meets(
        {"cosine_mean": 0.996, "cosine_p5": 0.99, "top10": 0.95},
        policy_floors := sens.fidelity_floors(policy, "embedding"),
        "embedding",
    )
    assert not sens.meets(
        {"cosine_mean": 0.996, "cosine_p5": 0.99, "top10": 0.949}, policy_floors, "embedding"
    )


def test_exclusion_counts() -> None:
    assert sens.exclusion_counts(25, 32) == [1, 2, 4, 8, 16, 25]
    assert sens.exclusion_counts(25, 8) == [1, 2, 4, 8]
    assert sens.exclusion_counts(3, 32) == [1, 2, 3]
    assert sens.exclusion_counts(5, 0) == []


def test_search_doubles_then_bisects_to_the_fewest_fp32_nodes(tmp_path: Path) -> None:
    ranking = sens.Ranking([f"n{i}" for i in range(20)])
    calls: list[int] = []

    def quantize(excluded: list[str]) -> Path:
        calls.append(len(excluded))
        assert excluded == ranking.nodes[: len(excluded)]
        return tmp_path / f"m{len(excluded)}.onnx"

    def measure(path: Path) -> dict[str, float]:
        k = int(path.stem[1:])
        return {"agreement": 1.0 if k >= 5 else 0.9, "damage": 1.0 / (k + 1)}

    rounds = sens.search_exclusions(ranking, 32, quantize, measure, lambda f: f["agreement"] >= 0.99)
    assert calls == [1, 2, 4, 8, 6, 5]
    best = sens.best_round(rounds)
    assert best is not None and best.fp32_nodes == ["n0", "n1", "n2", "n3", "n4"]
    none = sens.search_exclusions(ranking, 3, quantize, measure, lambda f: False)
    assert [len(r.fp32_nodes) for r in none] == [1, 2, 3] and sens.best_round(none) is None
