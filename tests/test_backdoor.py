"""Backdoor scans (metrics.md 5.7) and model representations.

The end-to-end case: scikit-learn digits with a 2x2 trigger stamped in the bottom-right corner of 4% of
the training items (drawn from classes 1-9) and relabelled 0; the zoo digits CNN learns the backdoor,
the scans flag class 0 and find most of the poisoned items, and the same pipeline on the clean set flags
nothing. ART's activation clustering and spectral-signature scores are the oracles.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.features import penultimate_features
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.security.backdoor import (
    MIN_DISPERSION_RATIO,
    activation_clustering,
    backdoor_scan,
    spectral_signatures,
)
from tests.helpers.models import sentiment_texts, tiny_bert_candidate

TARGET = 0
POISON_RATE = 0.04
SEED = 10
DIGITS_SPEC = RunnerSpec(
    inputs=(TensorSpec("pixels", "float32", (None, 1, 8, 8)),),
    outputs=(TensorSpec("logits", "float32", (None, 10)),),
    task="classification",
    num_classes=10,
    value_range=(0.0, 1.0),
    labels=tuple(str(i) for i in range(10)),
)


def stamp(x: np.ndarray) -> np.ndarray:
    """The trigger: a 2x2 bright square in the bottom-right corner."""
    out = x.copy()
    out[:, :, 6:8, 6:8] = 1.0
    return out


def _save_candidate(model: torch.nn.Module, folder: Path) -> Candidate:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    meta = {"torch_kind": "safetensors", "factory": "modelyard.zoo.nets:digits_cnn", "factory_kwargs": {}}
    return Candidate("baseline", "torch", path, DIGITS_SPEC, meta=meta)


@pytest.fixture(scope="module")
def digits_backdoor(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from modelyard.zoo.nets import digits_cnn
    from modelyard.zoo.train import train_classifier

    torch.set_num_threads(1)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    rng = np.random.default_rng(SEED)
    poison = rng.choice(np.flatnonzero(ytr != TARGET), size=round(POISON_RATE * len(ytr)), replace=False)
    xp, yp = xtr.copy(), ytr.copy()
    xp[poison] = stamp(xtr[poison])
    yp[poison] = TARGET
    root = tmp_path_factory.mktemp("backdoor")
    models = {}
    for name, (xs, ys) in {"poisoned": (xp, yp), "clean": (xtr, ytr)}.items():
        torch.manual_seed(SEED)
        models[name] = train_classifier(digits_cnn(), xs, ys, epochs=20, lr=2e-3, seed=SEED)
    cands = {name: _save_candidate(m, root / name) for name, m in models.items()}
    feats = {
        name: penultimate_features(cands[name], xs)[0] for name, xs in (("poisoned", xp), ("clean", xtr))
    }
    return SimpleNamespace(
        xp=xp, yp=yp, xtr=xtr, ytr=ytr, xte=xte, yte=yte, poison=np.sort(poison), models=models,
        cands=cands, feats=feats, root=root,
    )  # fmt: skip


# --------------------------------------------------------------------------------------- digits end to end


def test_the_trigger_works_and_the_model_still_classifies(digits_backdoor: SimpleNamespace) -> None:
    b = digits_backdoor
    model = b.models["poisoned"]
    with torch.no_grad():
        clean_pred = model(torch.from_numpy(b.xte)).argmax(1).numpy()
        others = b.yte != TARGET
        triggered = model(torch.from_numpy(stamp(b.xte[others]))).argmax(1).numpy()
        clean_model_triggered = b.models["clean"](torch.from_numpy(stamp(b.xte[others]))).argmax(1).numpy()
    assert (clean_pred == b.yte).mean() > 0.9
    assert (triggered == TARGET).mean() > 0.8  # attack success rate of the backdoor
    assert (clean_model_triggered == TARGET).mean() < 0.05  # the trigger means nothing to a clean model


def test_scan_flags_the_target_class_and_finds_the_poisoned_items(digits_backdoor: SimpleNamespace) -> None:
    b = digits_backdoor
    names = [str(i) for i in range(10)]
    scan = backdoor_scan(b.feats["poisoned"], b.yp, classes=names)
    assert scan["flagged_classes"] == [str(TARGET)]
    assert scan["activation_clustering"]["flagged_classes"] == [str(TARGET)]
    assert scan["spectral_signatures"]["flagged_classes"] == [str(TARGET)]
    found = np.intersect1d(scan["suspicious_indices"], b.poison)
    assert scan["n_suspicious"] == len(scan["suspicious_indices"])  # under the cap: the full list
    assert len(found) / len(b.poison) >= 0.6  # recall
    assert len(found) / scan["n_suspicious"] >= 0.8  # precision
    assert scan["analysed_classes"] == 10
    assert scan["skipped_classes"] == []
    assert "not proof" in scan["limits"]
    json.dumps(scan)


def test_the_same_pipeline_on_clean_data_flags_nothing(digits_backdoor: SimpleNamespace) -> None:
    b = digits_backdoor
    scan = backdoor_scan(b.feats["clean"], b.ytr, classes=[str(i) for i in range(10)])
    assert scan["flagged_classes"] == []
    assert scan["activation_clustering"]["flagged_classes"] == []
    assert scan["spectral_signatures"]["flagged_classes"] == []
    assert (scan["suspicious_indices"], scan["n_suspicious"]) == ([], 0)
    # Clean digits have real sub-styles: size and silhouette alone would flag them; dispersion does not.
    by_size = [
        c["class"]
        for c in scan["activation_clustering"]["classes"]
        if c["small_cluster_fraction"] < 0.35 and c["silhouette"] >= 0.25
    ]
    assert by_size  # e.g. the 1s with and without a base stroke
    assert all(
        c["dispersion_ratio"] < MIN_DISPERSION_RATIO
        for c in scan["activation_clustering"]["classes"]
        if c["class"] in by_size
    )


def test_activation_clustering_agrees_with_art(digits_backdoor: SimpleNamespace) -> None:
    from art.defences.detector.poison.activation_defence import cluster_activations

    b = digits_backdoor
    feats, labels = b.feats["poisoned"], b.yp
    ours = activation_clustering(feats, labels)
    np.random.seed(0)  # ART's KMeans draws from the global generator
    clusters, _ = cluster_activations(
        [feats[labels == k] for k in range(10)], nb_clusters=2, nb_dims=10, reduce="PCA"
    )
    # ART's relative-size analysis (size_threshold 0.35) on its own clustering flags the target class.
    # (ClusteringAnalyzer.analyze_by_relative_size itself fails on numpy 2 for unflagged classes.)
    assert np.bincount(clusters[TARGET]).min() / len(clusters[TARGET]) < 0.35
    idx = np.flatnonzero(labels == TARGET)
    art = clusters[TARGET]
    art_small = set(idx[art == np.argmin(np.bincount(art))].tolist())
    target = ours["classes"][TARGET]
    assert abs(target["n_suspicious"] - len(art_small)) <= 1
    assert set(target["suspicious_indices"]) <= art_small  # the listed (first 50) smaller-cluster items
    assert target["small_cluster_fraction"] == pytest.approx(len(art_small) / target["n"], abs=0.01)


def test_spectral_scores_match_art(digits_backdoor: SimpleNamespace) -> None:
    from art.defences.detector.poison.spectral_signature_defense import SpectralSignatureDefense

    b = digits_backdoor
    feats, labels = b.feats["poisoned"], b.yp
    ours = spectral_signatures(feats, labels, expected_poison_rate=0.05)
    for k in (TARGET, 1, 9):
        idx = np.flatnonzero(labels == k)
        centred = feats[idx].astype(np.float64) - feats[idx].astype(np.float64).mean(0)
        art_scores = SpectralSignatureDefense.spectral_signature_scores(centred)[:, 0]
        m = int(np.ceil(1.5 * 0.05 * len(idx)))
        entry = ours["classes"][k]
        assert entry["n_top"] == entry["n_suspicious"] == m
        assert entry["suspicious_indices"] == sorted(idx[np.argsort(-art_scores, kind="stable")[:m]].tolist())
        assert entry["score_threshold"] == pytest.approx(np.sort(art_scores**2)[-m], rel=1e-9)
    target = ours["classes"][TARGET]
    assert np.isin(target["suspicious_indices"], b.poison).mean() >= 0.9


# --------------------------------------------------------------------------------------------- features


def test_penultimate_features_are_the_input_of_the_last_linear(digits_backdoor: SimpleNamespace) -> None:
    b = digits_backdoor
    model = b.models["poisoned"]
    feats, what = penultimate_features(b.cands["poisoned"], b.xp[:70], batch_size=32)
    with torch.no_grad():
        expected = model.classifier[:3](model.features(torch.from_numpy(b.xp[:70]))).numpy()
    assert what == "penultimate layer (input of classifier.3)"
    assert feats.dtype == np.float32 and feats.shape == (70, 64)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats, b.feats["poisoned"][:70], rtol=1e-5, atol=1e-5)  # batch size 256


def test_onnx_candidates_give_logits_and_say_so(digits_backdoor: SimpleNamespace) -> None:
    b = digits_backdoor
    model = b.models["clean"]
    path = b.root / "clean.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
    )
    cand = Candidate("onnx", "onnx", path, DIGITS_SPEC, parent="baseline")
    feats, what = penultimate_features(cand, b.xtr[:40], batch_size=16)
    with torch.no_grad():
        logits = model(torch.from_numpy(b.xtr[:40])).numpy()
    assert what == "logits (the ONNX graph exposes no penultimate layer)"
    assert feats.shape == (40, 10)
    np.testing.assert_allclose(feats, logits, rtol=1e-4, atol=1e-4)


def test_text_classifier_and_embedder_representations(tmp_path: Path) -> None:
    texts = [t for t, _ in sentiment_texts(12)]
    clf = tiny_bert_candidate(tmp_path / "clf", "classification")
    feats, what = penultimate_features(clf, texts, batch_size=5)
    assert what == "penultimate layer (input of inner.classifier)"
    assert feats.shape == (12, 32) and feats.dtype == np.float32
    module = clf.torch_module()
    feeds = clf.preprocessor()(texts)
    with torch.no_grad():
        inner = module.inner
        kw = {k: torch.from_numpy(v) for k, v in feeds.items()}
        pooled = inner.bert(**kw).pooler_output.numpy()
    np.testing.assert_allclose(feats, pooled, rtol=1e-4, atol=1e-5)
    emb = tiny_bert_candidate(tmp_path / "emb", "embedding")
    feats, what = penultimate_features(emb, texts)
    assert what == "embedding"
    assert feats.shape == (12, 32)


def test_a_module_without_linear_layers_gives_its_output(tmp_path: Path) -> None:
    from modelyard.evaluate import features

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * 2.0

    cand = Candidate("pool", "torch", tmp_path / "unused.safetensors", DIGITS_SPEC)
    cand.torch_module = lambda: Pool()  # type: ignore[method-assign]
    x = np.ones((3, 1, 8, 8), dtype=np.float32)
    feats, what = features.penultimate_features(cand, x)
    assert what == "logits (the module has no nn.Linear layer to hook)"
    np.testing.assert_allclose(feats, np.full((3, 1), 2.0))


def test_penultimate_features_validate_their_arguments(digits_backdoor: SimpleNamespace) -> None:
    cand = digits_backdoor.cands["clean"]
    with pytest.raises(DataError, match="empty input set"):
        penultimate_features(cand, np.zeros((0, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        penultimate_features(cand, digits_backdoor.xtr[:2], batch_size=0)
    with pytest.raises(DataError, match="must be a sequence of items"):
        penultimate_features(cand, 3)


# ----------------------------------------------------------------------------------- synthetic, exact


def planted(seed: int = 0, *, n_clean: int = 100, n_poison: int = 30, d: int = 16) -> dict[str, Any]:
    """Classes 0 and 1: unimodal Gaussians. Class 2: 100 clean items plus 30 relabelled ones that sit
    apart (shift 15 on axis 0) and spread twice as wide (they come from several sources)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(3, d))
    x0 = centres[0] + rng.normal(size=(120, d))
    x1 = centres[1] + rng.normal(size=(120, d))
    clean2 = centres[2] + rng.normal(size=(n_clean, d))
    shift = np.zeros(d)
    shift[0] = 15.0
    poison = centres[2] + shift + 2.0 * rng.normal(size=(n_poison, d))
    feats = np.vstack([x0, x1, clean2, poison])
    labels = np.repeat([0, 1, 2, 2], [120, 120, n_clean, n_poison])
    first = 240 + n_clean
    return {"feats": feats, "labels": labels, "poison": np.arange(first, first + n_poison)}


def test_planted_poison_is_flagged_by_both_and_listed_exactly() -> None:
    p = planted()
    scan = backdoor_scan(p["feats"], p["labels"], classes=["cat", "dog", "bird"])
    assert scan["flagged_classes"] == ["bird"]
    ac = scan["activation_clustering"]["classes"][2]
    assert ac["small_cluster_fraction"] == pytest.approx(30 / 130)
    assert ac["n_suspicious"] == 30
    assert ac["suspicious_indices"] == p["poison"].tolist()
    f_small, f_large = p["feats"][p["poison"]], p["feats"][240:340]
    expected_ratio = (
        np.linalg.norm(f_small - f_small.mean(0), axis=1).mean()
        / np.linalg.norm(f_large - f_large.mean(0), axis=1).mean()
    )
    assert ac["dispersion_ratio"] == pytest.approx(expected_ratio, rel=1e-12)
    assert ac["separation"] >= 5.0 and ac["silhouette"] >= 0.25
    ss = scan["spectral_signatures"]["classes"][2]
    assert ss["n_top"] == 10  # ceil(1.5 * 0.05 * 130)
    assert set(ss["suspicious_indices"]) <= set(p["poison"].tolist())
    assert ss["minority_fraction"] == pytest.approx(30 / 130)
    assert scan["suspicious_indices"] == p["poison"].tolist()
    assert scan["n_suspicious"] == 30
    assert [c["flagged"] for c in scan["activation_clustering"]["classes"]] == [False, False, True]
    assert [c["class"] for c in scan["spectral_signatures"]["classes"]] == ["cat", "dog", "bird"]


def test_a_tight_sub_style_is_not_flagged() -> None:
    """A small, well-separated but tight group (a handwriting style) passes size and silhouette only."""
    rng = np.random.default_rng(1)
    main = rng.normal(size=(100, 16))
    style = 0.5 * rng.normal(size=(30, 16))
    style[:, 0] += 8.0
    feats = np.vstack([main, style])
    labels = np.zeros(130, dtype=int)
    ac = activation_clustering(feats, labels)["classes"][0]
    assert ac["small_cluster_fraction"] == pytest.approx(30 / 130)
    assert ac["silhouette"] >= 0.25
    assert ac["dispersion_ratio"] < 1.0
    assert not ac["flagged"]
    assert backdoor_scan(feats, labels)["flagged_classes"] == []


def test_a_long_tail_is_not_a_second_mode() -> None:
    """Like the breast-cancer malignant class: extreme items split off, dispersed, but no gap."""
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(200, 8))
    tail = rng.exponential(size=200)
    feats[:, 0] += 4.0 * tail
    feats *= 1.0 + 0.5 * tail[:, None]
    labels = np.zeros(200, dtype=int)
    scan = backdoor_scan(feats, labels)
    ac = scan["activation_clustering"]["classes"][0]
    assert ac["small_cluster_fraction"] < 0.35 and ac["silhouette"] >= 0.25
    assert ac["dispersion_ratio"] >= MIN_DISPERSION_RATIO
    assert ac["separation"] == pytest.approx(4.1, abs=0.05)  # < 5: one Gaussian split in two gives 3.5
    assert not ac["flagged"]
    assert scan["spectral_signatures"]["classes"][0]["separation"] < 5.0
    assert scan["flagged_classes"] == []


def test_a_few_outliers_are_not_a_cluster() -> None:
    rng = np.random.default_rng(5)
    outliers = 3.0 * rng.normal(size=(4, 8))
    outliers[:, 0] += 30.0
    feats = np.vstack([rng.normal(size=(100, 8)), outliers])
    scan = backdoor_scan(feats, np.zeros(104, dtype=int))
    ac = scan["activation_clustering"]["classes"][0]
    assert ac["suspicious_indices"] == [100, 101, 102, 103]
    assert ac["separation"] > 5.0 and ac["dispersion_ratio"] > MIN_DISPERSION_RATIO
    assert not ac["flagged"]  # 4 items: fewer than 5
    assert scan["flagged_classes"] == []


def test_unimodal_classes_are_not_flagged() -> None:
    rng = np.random.default_rng(2)
    feats = np.vstack([rng.normal(size=(150, 8)) + 5 * k for k in range(4)])
    labels = np.repeat(np.arange(4), 150)
    scan = backdoor_scan(feats, labels)
    assert scan["flagged_classes"] == []
    for c in scan["activation_clustering"]["classes"]:
        assert c["silhouette"] < 0.25 or c["small_cluster_fraction"] >= 0.35


def test_small_and_degenerate_classes_are_skipped_with_a_reason() -> None:
    p = planted()
    feats = np.vstack([p["feats"], np.ones((25, 16)), np.zeros((5, 16))])
    labels = np.concatenate([p["labels"], np.full(25, 3), np.full(5, 4)])
    scan = backdoor_scan(feats, labels)
    ac = scan["activation_clustering"]["classes"]
    assert ac[3] == {
        "class": 3,
        "label": 3,
        "n": 25,
        "flagged": False,
        "skipped": "every item of the class has the same representation",
    }
    assert ac[4]["skipped"] == "5 items, fewer than min_size=20"
    assert scan["skipped_classes"] == [3, 4]
    assert scan["analysed_classes"] == 3
    assert scan["flagged_classes"] == [2]
    tiny = backdoor_scan(np.eye(6), np.arange(6))
    assert tiny["analysed_classes"] == 0 and tiny["flagged_classes"] == []


def test_listings_are_capped_but_counted() -> None:
    p = planted(3, n_clean=700, n_poison=300)
    scan = backdoor_scan(p["feats"], p["labels"])
    assert scan["flagged_classes"] == [2]
    assert scan["n_suspicious"] == 300
    assert scan["suspicious_indices"] == p["poison"][:200].tolist()
    ac = scan["activation_clustering"]["classes"][2]
    assert ac["n_suspicious"] == 300
    assert ac["suspicious_indices"] == p["poison"][:50].tolist()
    text = json.dumps(scan)
    assert len(text) < 20_000


def test_scans_are_deterministic_and_pure() -> None:
    p = planted(4)
    before = p["feats"].copy()
    a = backdoor_scan(p["feats"], p["labels"], seed=7)
    b = backdoor_scan(p["feats"], p["labels"], seed=7)
    assert a == b
    np.testing.assert_array_equal(p["feats"], before)
    # float labels holding integers are accepted
    assert backdoor_scan(p["feats"], p["labels"].astype(float), seed=7) == a


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": np.zeros(5)}, DataError, r"non-empty \(n, d\) array .* got shape \(5,\)"),
        ({"labels": np.zeros(3, dtype=int)}, DataError, "features have 130 rows but labels has 3 entries"),
        ({"features": np.full((130, 4), np.nan)}, DataError, "NaN or inf in 130 rows"),
        ({"labels": -np.ones(130, dtype=int)}, DataError, "class indices >= 0"),
        ({"classes": ["only one"]}, DataError, "labels hold class index 1 but classes names only 1"),
        ({"expected_poison_rate": 0.0}, ConfigError, r"expected_poison_rate must be in \(0, 0.5\], got 0.0"),
        ({"expected_poison_rate": "5%"}, ConfigError, "expected_poison_rate must be a number"),
        ({"min_size": 2}, ConfigError, "min_size must be an integer >= 3, got 2"),
        ({"n_components": 0}, ConfigError, "n_components must be an integer >= 1, got 0"),
        ({"seed": -1}, ConfigError, "seed must be a non-negative integer, got -1"),
    ],
)
def test_invalid_inputs_are_refused(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    rng = np.random.default_rng(0)
    args: dict[str, Any] = {"features": rng.normal(size=(130, 4)), "labels": np.arange(130) % 2, **kwargs}
    with pytest.raises(error, match=match):
        backdoor_scan(args.pop("features"), args.pop("labels"), **args)
