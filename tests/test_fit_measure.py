"""Fit and measure on different items: passes and fitted checks see the fit part only; the evidence, measured on
the test part, exposes a pass that overfits its fit items; fitted quantities ignore the test items."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.config import Policy, Settings
from modelyard.data.dataset import Dataset, FitData
from modelyard.data.loaders import load_dataset
from modelyard.data.splits import split_indices
from modelyard.errors import DataError
from modelyard.evaluate.run import EvalOptions, evaluate_candidates
from modelyard.optimize import registry as passes_registry
from modelyard.optimize.baseline import load_baseline
from modelyard.optimize.passes.int8 import auto, configs
from modelyard.optimize.registry import PassContext, register_pass
from modelyard.pipeline import run_pipeline
from modelyard.zoo.demos import sentences_dataset
from tests.helpers.models import outlier_mlp

FAST = EvalOptions(
    batch_sizes=(1, 8),
    latency_calls=10,
    min_time_s=0.02,
    measure_rss=False,
    n_resamples=200,
    backdoor_scan=False,
)

# ---------------------------------------------------------------------------------------------------
# the split


def test_split_keeps_linked_items_on_one_side_and_is_deterministic() -> None:
    links = [(0, 1), (1, 2), (10, 11), (20, 30)]
    tr, te, how = split_indices(40, test_size=0.5, seed=3, links=links)
    assert len(te) >= 20 and len(set(tr) | set(te)) == 40 and not set(tr) & set(te)
    for a, b in links:
        assert (a in te) == (b in te), (a, b)
    again = split_indices(40, test_size=0.5, seed=3, links=links)
    assert np.array_equal(tr, again[0]) and np.array_equal(te, again[1])
    assert "seed 3" in how and "kept on one side" in how
    with pytest.raises(DataError, match=r"outside 0\.\.39"):
        split_indices(40, test_size=0.5, seed=0, links=[(0, 40)])


def test_minilm_demo_measures_on_sentences_no_pass_can_see() -> None:
    ds = sentences_dataset()
    fit, test = set(ds.x_train), set(ds.x_test)
    assert not fit & test and len(fit) + len(test) == 366
    assert ds.pairs and all(0 <= i < ds.n_test and 0 <= j < ds.n_test for i, j in ds.pairs)
    assert "held out for evaluation" in (ds.split or "") and ds.describe()["split"] == ds.split
    ctx = PassContext(workdir=Path("."), dataset=ds)  # a pass's view of the data
    assert isinstance(ctx.dataset, FitData) and not hasattr(ctx.dataset, "x_test")
    assert set(ctx.dataset.fit_sample(1000)) == fit


def test_fit_items_never_fall_back_to_test_items() -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    with pytest.raises(DataError, match=r"the train .* split is the test split"):
        Dataset("same", "tabular", x, None, x, None)
    empty = Dataset("no-fit", "tabular", x[:0], None, x, None)
    with pytest.raises(DataError, match=r"no fit items .* never drawn from the test split"):
        empty.fit_sample(8)
    only_cal = Dataset(
        "cal", "tabular", x[:0], None, x[10:], None, x_cal=x[:10], y_cal=np.zeros(10, np.int64)
    )
    assert set(map(tuple, only_cal.fit_sample(100))) == set(map(tuple, x[:10]))


def test_pipeline_refuses_a_dataset_without_fit_items(home: Path, onnx_classifier: tuple[Path, Path]) -> None:
    model, data = onnx_classifier
    ds = load_dataset(data)
    baseline = load_baseline(model, ds)
    empty = replace(ds, x_train=ds.x_train[:0], y_train=ds.y_train[:0] if ds.y_train is not None else None)
    with pytest.raises(DataError, match="no fit items"):
        run_pipeline(
            baseline,
            empty,
            model_name="m",
            model_source="test",
            recipes=[],
            policy=Policy(),
            settings=Settings.from_env(home=home),
            options=FAST,
        )
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


# ---------------------------------------------------------------------------------------------------
# a pass that memorises its fit items is caught by the evidence


@dataclass(frozen=True)
class MemoriseConfig:
    """A deliberately overfitting pass: answers like the parent on the items it fitted on, class 0 elsewhere."""


SEEN: dict[str, object] = {}


def _memorise(candidate: Candidate, config: MemoriseConfig, ctx: PassContext) -> Candidate:
    import torch

    SEEN["has_test"] = hasattr(ctx.dataset, "x_test")
    keys = np.asarray(ctx.dataset.fit_inputs(), dtype=np.float32)
    values = candidate.load().run({candidate.spec.inputs[0].name: keys})[candidate.spec.output_name]

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("keys", torch.from_numpy(keys.reshape(len(keys), -1)))
            self.register_buffer("values", torch.from_numpy(np.asarray(values, np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = torch.cdist(x.reshape(x.shape[0], -1), self.keys, compute_mode="donot_use_mm_for_euclid_dist")
            dmin, idx = d.min(1)
            miss = torch.zeros_like(self.values[idx])
            miss[:, 0] = 10.0
            return torch.where((dmin < 1e-5).unsqueeze(1), self.values[idx], miss)

    path = Path(ctx.workdir) / "memorised.pt"
    torch.jit.save(torch.jit.script(Lookup()), str(path))
    # the pass's own check, on the items it fitted on, says it is perfect
    fitted = torch.jit.load(str(path))(torch.from_numpy(keys)).numpy()
    agreement = float(np.mean(fitted.argmax(1) == values.argmax(1)))
    return Candidate(
        name=candidate.name,
        format="torch",
        path=path,
        spec=candidate.spec,
        meta={"torch_kind": "torchscript", "fit_agreement": agreement},
    )


@pytest.fixture
def memorise_pass() -> Iterator[str]:
    register_pass("memorise", MemoriseConfig, "test only: memorises its fit items")(_memorise)
    try:
        yield "memorise"
    finally:
        passes_registry._PASSES.pop("memorise", None)


def test_a_pass_that_memorises_its_fit_items_is_exposed_on_the_test_items(
    home: Path, onnx_classifier: tuple[Path, Path], memorise_pass: str
) -> None:
    model, data = onnx_classifier
    ds = load_dataset(data)
    baseline = load_baseline(model, ds)
    result = run_pipeline(
        baseline,
        ds,
        model_name="m",
        model_source="test",
        recipes=[memorise_pass],
        policy=Policy(),
        settings=Settings.from_env(home=home),
        options=FAST,
        register=False,
    )
    assert not result.evidence["skipped"], result.evidence["skipped"]
    assert SEEN["has_test"] is False  # the pass could not even see the test items
    by_name = {c["name"]: c for c in result.evidence["candidates"]}
    mem = by_name["memorise"]
    assert mem["meta"]["fit_agreement"] == 1.0  # perfect where it fitted ...
    assert any(
        "top-1 agreement 1.000" in n for n in mem["notes"]
    )  # ... and on the fit items it was checked on
    ms, base = mem["measurements"], by_name["baseline"]["measurements"]
    # ... and exposed on the test items, which it never saw
    assert base["quality.accuracy"]["value"] > 0.9
    assert ms["quality.accuracy"]["value"] < 0.5
    assert ms["compare.flip_rate"]["value"] > 0.5
    assert not mem["verdict"]["passed"] and result.champion != "memorise"
    assert any(c.startswith("fitted on the fit part") for c in result.evidence["caveats"])


# ---------------------------------------------------------------------------------------------------
# fitted quantities do not move when only the evaluation items change


def _new_test_items(ds: Dataset, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = np.asarray(ds.x_test) + rng.normal(scale=0.5, size=np.shape(ds.x_test)).astype(np.float32)
    return replace(ds, x_test=x.astype(np.float32))


def test_int8_auto_smoothing_and_fp32_nodes_ignore_the_test_items(tmp_path: Path) -> None:
    cand, ds = outlier_mlp(tmp_path / "m")
    other = _new_test_items(ds, 1)
    floors = {"agreement_min": 0.97}
    metas = []
    for cfg_name, cfg in (
        ("smooth", configs.AutoQuantConfig(mode="dynamic", smooth_alphas=(0.5, 0.8))),
        ("rank", configs.AutoQuantConfig(mode="dynamic", smooth_alphas=())),
    ):
        a = auto.int8_auto(cand, cfg, PassContext(tmp_path / f"{cfg_name}a", ds, threads=1, fidelity=floors))
        b = auto.int8_auto(
            cand, cfg, PassContext(tmp_path / f"{cfg_name}b", other, threads=1, fidelity=floors)
        )
        for key in ("fp32_nodes", "search", "fidelity_train", "quantization"):
            assert a.meta[key] == b.meta[key], key
        assert a.meta.get("smoothing", {}).get("alpha") == b.meta.get("smoothing", {}).get("alpha")
        assert a.artifact_sha256() == b.artifact_sha256()
        metas.append(a.meta)
    assert metas[0]["smoothing"]["alpha"] in (0.5, 0.8)  # the smoothing search ran and chose
    assert metas[1]["fp32_nodes"]  # the sensitivity search ran and kept nodes in fp32


def test_temperature_and_ood_threshold_ignore_the_test_items(onnx_classifier: tuple[Path, Path]) -> None:
    model, data = onnx_classifier
    ds = load_dataset(data)
    baseline = load_baseline(model, ds)
    ood = {"far": np.random.default_rng(0).normal(scale=8.0, size=(60, 6)).astype(np.float32)}
    runs = []
    for d in (ds, _new_test_items(ds, 2)):
        ms, suite, rules = evaluate_candidates(
            baseline, [], d, policy=Policy(), price_usd_per_hour=1.0, options=FAST, threads=1, ood_data=ood
        )
        runs.append((ms["baseline"], suite, rules["baseline"]))
    (ms_a, suite_a, rule_a), (ms_b, suite_b, rule_b) = runs
    assert rule_a["temperature"] is not None and rule_a["ood"]["threshold"] is not None
    assert rule_a["temperature"] == rule_b["temperature"]
    assert rule_a["ood"] == rule_b["ood"]
    assert (
        rule_a["ood"]["fitted_on"] == "calibration split"
        and suite_a["calibration_split"] == suite_b["calibration_split"]
    )
    # the evidence itself did change with the test items (the premise of the test)
    assert ms_a["calibration.ece"].value != ms_b["calibration.ece"].value
