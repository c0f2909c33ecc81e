"""The data audit: duplicates, leakage, label conflicts, label issues, outliers, balance and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.data import dedup
from modelyard.data.audit import NEAR_THRESHOLDS, audit_data, read_datasheet
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError, DataError
from tests.helpers.models import make_blobs, sentiment_texts

SECTIONS = {
    "exact_duplicates",
    "near_duplicates",
    "leakage",
    "label_conflicts",
    "label_issues",
    "outliers",
    "balance",
    "provenance",
    "caveats",
    "clean_test_indices",
    "seconds",
}


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    assert (len(xtr), len(xte)) == (1437, 360)
    return xtr, xte, ytr, yte


def _digits(xtr, ytr, xte, yte, **kw) -> Dataset:  # type: ignore[no-untyped-def]
    return Dataset("digits", "image", xtr, ytr, xte, yte, classes=[str(i) for i in range(10)], **kw)


@pytest.fixture(scope="module")
def clean_digits(digits_split) -> dict:  # type: ignore[no-untyped-def]
    xtr, xte, ytr, yte = digits_split
    return audit_data(_digits(xtr, ytr, xte, yte))


def test_clean_digits_shows_no_exact_leak_and_a_small_near_rate(clean_digits: dict) -> None:
    r = clean_digits
    assert set(r) >= SECTIONS
    assert r["leakage"]["exact_fraction"] == 0.0
    assert r["leakage"]["n_test"] == 360
    assert r["leakage"]["near_fraction"] < 0.01
    assert r["exact_duplicates"]["train_groups"] == r["exact_duplicates"]["test_groups"] == 0
    assert r["label_conflicts"]["count"] == 0
    assert r["near_duplicates"]["threshold"] == NEAR_THRESHOLDS["image"] == 0.98
    assert "no dHash" in r["near_duplicates"]["method"]
    li = r["label_issues"]
    assert li["status"] == "ok" and li["n"] == 1797
    assert li["estimated_error_rate"] < 0.01
    assert li["cv_accuracy"] > 0.95
    excluded = set(r["leakage"]["test_indices"]) | set(li["test_indices"])
    assert r["clean_test_indices"] == [i for i in range(360) if i not in excluded]
    assert r["balance"]["train"]["0"] == 142 and sum(r["balance"]["test"].values()) == 360
    assert r["balance"]["imbalance_ratio"] == pytest.approx(146 / 139)
    assert r["balance"]["missing_from_test"] == []
    assert r["outliers"]["k"] == 10 and r["outliers"]["fraction"] < 0.05
    assert sum(r["outliers"]["histogram"]["train_counts"]) == 1437
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_planted_exact_and_near_leaks_are_found(digits_split) -> None:  # type: ignore[no-untyped-def]
    xtr, xte, ytr, yte = digits_split
    rng = np.random.default_rng(0)
    order = rng.permutation(len(xte))
    exact, near = order[:36], order[36:54]  # 10% exact copies, 5% noisy copies
    noisy = xte[near] + rng.normal(scale=0.02, size=xte[near].shape).astype(np.float32)
    x_train = np.concatenate([xtr, xte[exact], noisy])
    y_train = np.concatenate([ytr, yte[exact], yte[near]])
    r = audit_data(_digits(x_train, y_train, xte, yte), label_issues=False)
    lk = r["leakage"]
    assert lk["exact_fraction"] == pytest.approx(0.10)
    assert lk["near_fraction"] == pytest.approx(0.15, abs=0.01)
    assert set(exact) | set(near) <= set(lk["test_indices"])
    by_test = {p["test"]: p for p in lk["pairs"] if p["kind"] == "exact"}
    for t, p in by_test.items():
        assert p["train"] == len(xtr) + int(np.flatnonzero(exact == t)[0])
    near_pairs = [p for p in lk["pairs"] if p["kind"] == "near"]
    assert near_pairs and all(p["similarity"] >= 0.98 for p in near_pairs)
    assert len(lk["pairs"]) == 50
    assert not set(lk["test_indices"]) & set(r["clean_test_indices"])
    assert r["caveats"][0].startswith(
        f"{lk['near_fraction']:.1%} of test items have an exact or near duplicate"
    )
    assert f"({lk['near_count']} of 360; 36 exact)" in r["caveats"][0]
    assert r["label_issues"]["status"] == "skipped"


def test_cleanlab_finds_flipped_training_labels(digits_split) -> None:  # type: ignore[no-untyped-def]
    xtr, xte, ytr, yte = digits_split
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(ytr), size=round(0.05 * len(ytr)), replace=False)
    noisy = ytr.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    r = audit_data(_digits(xtr, noisy, xte, yte), seed=0)
    li = r["label_issues"]
    found = set(li["train_indices"])
    assert len(found) == li["train_flagged"]
    recall = len(found & set(flipped.tolist())) / len(flipped)
    precision = len(found & set(flipped.tolist())) / len(found)
    assert recall >= 0.7
    assert precision >= 0.6
    assert li["estimated_error_rate"] == pytest.approx((li["train_flagged"] + li["test_flagged"]) / 1797)
    top = li["examples"][0]
    assert top["split"] == "train" and top["given"] != top["suggested"]
    assert top["self_confidence"] < 0.1
    assert "out-of-sample" in li["method"] and "5-fold" in li["method"]
    assert any(c.startswith("an estimated ") and "cleanlab, out-of-sample" in c for c in r["caveats"])
    assert set(li["test_indices"]).isdisjoint(r["clean_test_indices"])
    assert r["leakage"]["n_test"] == 360  # flagged test rows are kept


TEXT_TRAIN = [
    "The movie was GREAT",
    "the   movie was great",
    "A slow and boring film",
    "Caf\u00e9 scenes were lovely",
    "I would watch it again tomorrow",
    "The plot made no sense at all",
]
TEXT_TEST = [
    " the movie   was great ",
    "Cafe\u0301 scenes were lovely",
    "i would watch it again tomorrow!",
    "Nothing about the actors stood out",
]


def test_text_duplicates_differing_in_case_and_whitespace_are_exact() -> None:
    y_train = np.array([1, 1, 0, 1, 1, 0])
    y_test = np.array([0, 1, 1, 0])
    ds = Dataset("reviews", "text", TEXT_TRAIN, y_train, TEXT_TEST, y_test, source="s", license="l")
    r = audit_data(ds, label_issues=False)
    assert r["exact_duplicates"]["train_groups"] == 1
    assert r["exact_duplicates"]["examples"][0] == {"split": "train", "size": 2, "indices": [0, 1]}
    lk = r["leakage"]
    assert lk["exact_count"] == 2  # case/whitespace and NFC (composed vs decomposed é)
    assert [p["test"] for p in lk["pairs"] if p["kind"] == "exact"] == [0, 1]
    near = [p for p in lk["pairs"] if p["kind"] == "near"]
    assert [(p["test"], p["train"]) for p in near] == [(2, 4)]
    assert near[0]["similarity"] >= NEAR_THRESHOLDS["text"]
    assert lk["test_indices"] == [0, 1, 2]
    assert r["clean_test_indices"] == [3]
    assert r["label_conflicts"]["count"] == 1
    assert r["label_conflicts"]["examples"] == [{"train": [0, 1], "test": [0], "labels": [0, 1]}]
    assert "1 input with conflicting labels (the same input labelled differently; 3 items)" in r["caveats"]
    assert "TF-IDF" in r["near_duplicates"]["method"]
    assert r["balance"]["nulls"]["train"] == {"empty_texts": 0}


def test_text_label_issues_run_on_tfidf() -> None:
    pairs = sentiment_texts(120, seed=3)
    texts, labels = [t for t, _ in pairs], np.array([y for _, y in pairs])
    ds = Dataset("s", "text", texts[:90], labels[:90], texts[90:], labels[90:])
    r = audit_data(ds)
    assert r["label_issues"]["status"] == "ok"
    assert "TF-IDF" in r["label_issues"]["method"]
    assert r["label_issues"]["cv_accuracy"] > 0.9


def test_provenance_caveats_follow_what_is_declared(tmp_path: Path) -> None:
    x, y = make_blobs(60)
    bare = audit_data(Dataset("b", "tabular", x[:40], y[:40], x[40:], y[40:]), label_issues=False)
    assert "the dataset's source is not declared" in bare["caveats"]
    assert "the dataset's licence is not declared" in bare["caveats"]
    assert bare["provenance"]["source"] is None and bare["provenance"]["license"] is None
    assert len(bare["provenance"]["fingerprint_sha256"]) == 64
    ds = Dataset("b", "tabular", x[:40], y[:40], x[40:], y[40:], source="made in code", license="CC0")
    declared = audit_data(ds, label_issues=False)
    assert not [c for c in declared["caveats"] if "not declared" in c]
    assert declared["provenance"]["fingerprint_sha256"] == ds.fingerprint()
    sheet = tmp_path / "datasheet.toml"
    sheet.write_text('source = "a survey"\nlicence = "CC BY 4.0"\ncollection = "2024"\n')
    from_sheet = audit_data(
        Dataset("b", "tabular", x[:40], y[:40], x[40:], y[40:]), label_issues=False, datasheet=sheet
    )
    prov = from_sheet["provenance"]
    assert (prov["source"], prov["license"], prov["datasheet"]) == ("a survey", "CC BY 4.0", str(sheet))
    assert prov["datasheet_fields"] == ["collection", "license", "source"]
    assert not [c for c in from_sheet["caveats"] if "not declared" in c]


def test_read_datasheet_reads_toml_and_json_and_refuses_the_rest(tmp_path: Path) -> None:
    j = tmp_path / "d.json"
    j.write_text(json.dumps({"source": "x", "license": "MIT", "description": "d"}))
    assert read_datasheet(j) == {"source": "x", "license": "MIT", "description": "d"}
    bad = tmp_path / "d.toml"
    bad.write_text("source = \n")
    with pytest.raises(DataError, match=r"cannot read datasheet .*d\.toml: .*give a readable TOML or JSON"):
        read_datasheet(bad)
    with pytest.raises(DataError, match=r"cannot read datasheet .*missing\.json"):
        read_datasheet(tmp_path / "missing.json")
    y = tmp_path / "d.yaml"
    y.write_text("source: x\n")
    with pytest.raises(DataError, match=r"must be a \.toml or \.json file, got '\.yaml'"):
        read_datasheet(y)
    lst = tmp_path / "l.json"
    lst.write_text("[1, 2]")
    with pytest.raises(DataError, match="must hold a table of fields, got list"):
        read_datasheet(lst)
    num = tmp_path / "n.json"
    num.write_text('{"source": 3}')
    with pytest.raises(DataError, match="source must be text"):
        read_datasheet(num)


def test_unlabelled_test_only_split_skips_what_needs_labels_or_training_data() -> None:
    texts = ["first sentence here", "a second one", "and a third sentence"]
    ds = Dataset("e", "text", texts[:0], None, texts, None)
    r = audit_data(ds)
    assert r["label_issues"]["status"] == "skipped"
    assert r["label_issues"]["reason"] == "the dataset has no labels (an embedder's data)"
    assert r["leakage"]["near_fraction"] == 0.0 and r["leakage"]["pairs"] == []
    assert r["outliers"]["status"] == "skipped"
    assert r["balance"]["reason"] == "the dataset has no labels"
    assert r["clean_test_indices"] == [0, 1, 2]
    assert not [c for c in r["caveats"] if "labels" in c]
    json.dumps(r, allow_nan=False)


def test_features_are_used_for_outliers_and_validated() -> None:
    x, y = make_blobs(200, features=20, seed=2)
    xte = x[150:].copy()
    far = np.random.default_rng(5).normal(scale=10.0, size=(5, 20)).astype(np.float32)
    xte[:5] = far
    ds = Dataset("b", "tabular", x[:150], y[:150], xte, y[150:])
    f_tr, f_te = x[:150] * 2.0, xte * 2.0
    r = audit_data(ds, features_train=f_tr, features_test=f_te, label_issues=False)
    out = r["outliers"]
    assert "the given representations" in out["method"]
    assert {t["index"] for t in out["top"][:5]} == set(range(5))
    assert out["count"] <= 7
    # oracle: sklearn's exact cosine kNN on the same representation
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(f_tr)
    dist, _ = nn.kneighbors(f_te)
    assert out["top"][0]["score"] == pytest.approx(float(dist.mean(1).max()), abs=1e-5)
    # near duplicates stay in input space unless asked
    assert "z-scores" in r["near_duplicates"]["method"]
    r2 = audit_data(ds, features_train=f_tr, features_test=f_te, label_issues=False, features_for=())
    assert "z-scores" in r2["outliers"]["method"]
    one = audit_data(ds, features_test=f_te, label_issues=False)
    assert "given for one split only" in one["outliers"]["method"]
    with pytest.raises(
        DataError, match=r"features_train must be an \(n, d\) array with one row per item \(150\)"
    ):
        audit_data(ds, features_train=f_tr[:10], features_test=f_te)
    with pytest.raises(DataError, match="features_test has 1 non-finite values"):
        bad = f_te.copy()
        bad[0, 0] = np.nan
        audit_data(ds, features_train=f_tr, features_test=bad)
    with pytest.raises(DataError, match="features_train has 20 columns but features_test 3"):
        audit_data(ds, features_train=f_tr, features_test=f_te[:, :3])
    with pytest.raises(ConfigError, match=r"features_for takes .*got unknown \['labels'\]"):
        audit_data(ds, features_for=("labels",))


def test_balance_nulls_and_constant_features() -> None:
    x, y = make_blobs(90, features=4, classes=3)
    x[:, 2] = 1.5  # constant
    y_train = y[:60].copy()
    y_train[:10] = 0
    xte, yte = x[60:].copy(), y[60:].copy()
    keep = yte != 2
    xte, yte = xte[keep], yte[keep]
    xte[0, 0] = np.nan
    xte[1, 1] = np.inf
    ds = Dataset("b", "tabular", x[:60], y_train, xte, yte, classes=["a", "b", "c"], source="s", license="l")
    r = audit_data(ds, label_issues=False)
    b = r["balance"]
    counts = np.bincount(y_train, minlength=3)
    assert b["train"] == dict(zip(["a", "b", "c"], counts.tolist(), strict=True))
    assert b["imbalance_ratio"] == pytest.approx(counts.max() / counts.min())
    assert b["missing_from_test"] == ["c"] and b["test"]["c"] == 0
    assert b["nulls"]["test"] == {"nan": 1, "inf": 1, "items": 2}
    assert b["nulls"]["train"] == {"nan": 0, "inf": 0, "items": 0}
    assert b["constant_features"] == {"count": 1, "indices": [2]}
    assert "classes without test items (c) are not measured" in r["caveats"]
    assert "labels were not checked for errors: the label-issue check was turned off" in r["caveats"]


def test_tiny_classes_use_fewer_folds_and_too_few_items_skip() -> None:
    x, y = make_blobs(60, features=4, classes=3, seed=4)
    y = y.copy()
    y[0] = 3  # a class with one member
    ds = Dataset("b", "tabular", x[:45], y[:45], x[45:], y[45:])
    r = audit_data(ds)
    assert r["label_issues"]["status"] == "ok"
    assert "2-fold" in r["label_issues"]["method"]
    tiny = Dataset("t", "tabular", x[:6], y[1:7], x[6:8], y[7:9])
    r = audit_data(tiny)
    assert r["label_issues"]["status"] == "skipped"
    assert r["label_issues"]["reason"].startswith("cross-validation needs at least 10 labelled items")


def test_dhash_finds_a_contrast_changed_copy_that_cosine_misses() -> None:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        a = gaussian_filter(rng.normal(size=(n, 3, 32, 32)), sigma=(0, 0, 3, 3))
        a -= a.min(axis=(1, 2, 3), keepdims=True)
        return (a / a.max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)

    xtr, xte = images(200), images(40)
    planted = (0.5 * xte[:4] + 0.3).astype(np.float32)
    ytr, yte = np.arange(204) % 2, np.arange(40) % 2
    ds = Dataset("img", "image", np.concatenate([xtr, planted]), ytr, xte, yte)
    r = audit_data(ds, label_issues=False)
    assert "dHash within Hamming distance 4" in r["near_duplicates"]["method"]
    lk = r["leakage"]
    assert lk["test_indices"] == [0, 1, 2, 3]
    assert [p["hamming"] for p in lk["pairs"]] == [0, 0, 0, 0]
    assert all("similarity" not in p for p in lk["pairs"])


def test_breast_cancer_planted_noisy_copies_are_near_and_the_clean_split_is_not() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    d = load_breast_cancer()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clean = audit_data(Dataset("bc", "tabular", xtr, ytr, xte, yte), label_issues=False)
    assert clean["leakage"]["near_fraction"] == 0.0
    assert clean["near_duplicates"]["threshold"] == NEAR_THRESHOLDS["tabular"] == 0.99
    rng = np.random.default_rng(0)
    planted = (xte[:20] * (1 + rng.normal(scale=0.01, size=xte[:20].shape))).astype(np.float32)
    ds = Dataset("bc", "tabular", np.concatenate([xtr, planted]), np.concatenate([ytr, yte[:20]]), xte, yte)
    r = audit_data(ds, label_issues=False)
    assert r["leakage"]["exact_count"] == 0
    assert r["leakage"]["test_indices"] == list(range(20))
    assert {p["train"] for p in r["leakage"]["pairs"]} == set(range(len(xtr), len(xtr) + 20))


def test_few_features_search_exact_duplicates_only() -> None:
    x, y = make_blobs(100, features=4)
    xtr = np.concatenate([x[:80], x[80:83]])
    ds = Dataset("b", "tabular", xtr, np.concatenate([y[:80], y[80:83]]), x[80:], y[80:])
    r = audit_data(ds, label_issues=False)
    assert r["near_duplicates"]["status"] == "skipped"
    assert r["near_duplicates"]["pairs"] is None
    assert "has 4 dimensions, too few" in r["near_duplicates"]["method"]
    lk = r["leakage"]
    assert (lk["exact_count"], lk["near_count"], lk["near_fraction"]) == (3, None, None)
    assert lk["exact_fraction"] == pytest.approx(0.15) and lk["test_indices"] == [0, 1, 2]
    assert r["caveats"][:2] == [
        "15.0% of test items have an exact duplicate in training (3 of 20); accuracy may be inflated",
        "near-duplicate leakage was not checked (too few features for cosine similarity to tell duplicates "
        "from neighbours); only exact copies were looked for",
    ]


def test_invalid_arguments_are_refused() -> None:
    x, y = make_blobs(30)
    ds = Dataset("b", "tabular", x[:20], y[:20], x[20:], y[20:])
    with pytest.raises(ConfigError, match=r"near_threshold must be a cosine in \(0, 1\], got 1.5"):
        audit_data(ds, near_threshold=1.5)
    with pytest.raises(DataError, match="audit_data needs a modelyard Dataset, got dict"):
        audit_data({"x": 1})  # type: ignore[arg-type]
    neg = Dataset("b", "tabular", x[:20], y[:20] - 1, x[20:], y[20:])
    with pytest.raises(DataError, match="train labels must be 20 non-negative integer class indices"):
        audit_data(neg)


def test_progress_is_reported_and_near_threshold_overrides() -> None:
    x, y = make_blobs(60, features=12)
    seen: list[tuple[str, float]] = []
    ds = Dataset("b", "tabular", x[:40], y[:40], x[40:], y[40:])
    r = audit_data(ds, near_threshold=0.5, label_issues=False, progress=lambda m, f: seen.append((m, f)))
    assert seen[0] == ("data audit: hashes", 0.0) and seen[-1] == ("data audit: done", 1.0)
    assert r["near_duplicates"]["threshold"] == 0.5
    assert r["leakage"]["near_fraction"] > 0.5  # blobs are near each other at a loose threshold
    assert set(r["seconds"]) >= {"hashes", "near_duplicates", "outliers", "total"}


# ------------------------------------------------------------------------------------------ dedup helpers


def test_canonical_text_and_hashes() -> None:
    assert dedup.canonical_text("  Cafe\u0301\tBAR \n baz ") == "caf\u00e9 bar baz"
    a = np.array([[[0.0, -0.0]], [[0.0, 0.0]]], dtype=np.float64)
    h = dedup.item_hashes(a, "tabular")
    assert h[0] == h[1]
    assert dedup.item_hashes(a.reshape(2, 2), "tabular")[0] != h[0]  # the shape is part of the bytes
    assert dedup.item_hashes(["A  b", "a b"], "text")[0] == dedup.item_hashes(["a b"], "text")[0]
    assert dedup.duplicate_groups(["x", "y", "x", "z", "y", "x"]) == [[0, 2, 5], [1, 4]]


def test_topk_and_pairs_match_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a = dedup.unit_rows(rng.normal(size=(37, 5)))
    b = dedup.unit_rows(rng.normal(size=(23, 5)))
    monkeypatch.setattr(dedup, "CHUNK_ENTRIES", 50)  # several rows per chunk, many chunks
    idx, sims = dedup.topk_cosine(b, a, 4)
    full = b @ a.T
    assert np.array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :4])
    assert sims == pytest.approx(np.sort(full, axis=1)[:, ::-1][:, :4], abs=1e-6)
    idx_s, _ = dedup.topk_cosine(a, a, 50, same=True)
    assert idx_s.shape == (37, 36) and not (idx_s == np.arange(37)[:, None]).any()
    own = a @ a.T
    i, j = np.triu_indices(37, k=1)
    expected = int(np.sum(own[i, j] >= 0.6))
    count, pairs = dedup.near_pairs_within(a, 0.6, [str(k) for k in range(37)], max_examples=5)
    assert count == expected and len(pairs) == 5
    assert pairs[0][2] == pytest.approx(float(own[i, j].max()), abs=1e-6)


def test_dhash_is_invariant_to_contrast_and_hamming_search_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.random((12, 1, 40, 40)).astype(np.float32)
    h = dedup.dhash64(imgs)
    assert h.dtype == np.uint64 and np.array_equal(h, dedup.dhash64(2.0 * imgs + 1.0))
    q = dedup.dhash64(rng.random((5, 40, 40)).astype(np.float32))
    idx, dist = dedup.hamming_nearest(q, h)
    brute = np.array([[bin(int(a) ^ int(b)).count("1") for b in h] for a in q])
    assert np.array_equal(dist, brute.min(1)) and np.array_equal(idx, brute.argmin(1))


def test_repeated_test_items_are_counted_and_named_in_a_caveat() -> None:
    x, y = make_blobs(60, features=12)
    xte = np.concatenate([x[40:], x[40:42]])
    ds = Dataset(
        "b", "tabular", x[:40], y[:40], xte, np.concatenate([y[40:], y[40:42]]), source="s", license="l"
    )
    r = audit_data(ds, label_issues=False)
    assert r["exact_duplicates"]["test_groups"] == 2
    assert r["exact_duplicates"]["test_duplicate_items"] == 2
    assert r["exact_duplicates"]["examples"] == [
        {"split": "test", "size": 2, "indices": [0, 20]},
        {"split": "test", "size": 2, "indices": [1, 21]},
    ]
    assert (
        "the test split holds 2 exact repeats of other test items; repeated items count more than once"
        in (r["caveats"])
    )
