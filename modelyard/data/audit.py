"""The data audit (metrics.md 5.6): exact and near duplicates, train/test leakage, label conflicts, label
issues, outliers, class balance and provenance, as one plain JSON-serialisable dict.

Its ``caveats`` are sentences attached to every accuracy figure; ``clean_test_indices`` are the test items
neither leaked nor flagged as mislabelled. Test rows are only ever flagged, never removed.

Near-duplicate thresholds (cosine, ≥), tuned on the built-in demos with raw inputs (``input_space``):
image 0.98 (sklearn digits, 1437 train / 360 test: one clean test item in 360 reaches it, at 0.9803;
copies with Gaussian noise σ = 0.02 on [0, 1] pixels stay ≥ 0.994), tabular 0.99 (breast cancer: no
clean test item above 0.979; all copies with 1% multiplicative noise stay ≥ 0.991, where 0.995 would miss
3%), text 0.95 (character 3-gram TF-IDF). Below ``dedup.MIN_NEAR_DIMS`` dimensions near duplicates are not
searched.

Representations: by default only the outlier check uses ``features_*`` (a model's penultimate activations
or embeddings). Near duplicates and label issues use the inputs, because a classifier's penultimate space
draws same-class items together (digits demo CNN: 95% of clean test items have a training neighbour at
cosine ≥ 0.98) and remembers its own training labels (with 5% of digits labels flipped, cleanlab on the
CNN's features finds 13% of them, on the inputs 83-90%). ``features_for`` changes that, e.g. for an embedder's
sentence embeddings, which were not fitted on these labels.
"""

from __future__ import annotations

import json
import time
import tomllib
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.data import dedup
from modelyard.data.dataset import Dataset
from modelyard.errors import ConfigError, DataError, first_line

Progress = Callable[[str, float], None]
NEAR_THRESHOLDS: dict[str, float] = {"image": 0.98, "tabular": 0.99, "text": 0.95}
FEATURE_USES = ("near_duplicates", "label_issues", "outliers")
CV_FOLDS = 5
LR_MAX_ITER = 500
LABEL_MAX_DIM = 256  # above this, dense inputs are reduced by PCA to LABEL_PCA_DIM before the classifier
LABEL_PCA_DIM = 128
MAX_EXAMPLES = dedup.MAX_EXAMPLES


def _labels(y: Any, n: int, split: str) -> np.ndarray | None:
    if y is None:
        return None
    arr = np.asarray(y)
    if arr.shape != (n,) or (n and (arr.dtype.kind not in "iub" or int(arr.min()) < 0)):
        raise DataError(
            f"{split} labels must be {n} non-negative integer class indices, got shape {arr.shape} and dtype "
            f"{arr.dtype}; encode classes as 0..K-1"
        )
    return arr.astype(np.int64)


def _features(f: Any, n: int, name: str) -> np.ndarray | None:
    if f is None:
        return None
    a = np.asarray(f, dtype=np.float32)
    if a.ndim != 2 or len(a) != n:
        raise DataError(f"{name} must be an (n, d) array with one row per item ({n}), got shape {a.shape}")
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise DataError(f"{name} has {bad} non-finite values; pass finite representations")
    return a


def _validate(
    dataset: Any, features_train: Any, features_test: Any, near_threshold: Any, features_for: Iterable[str]
) -> tuple[np.ndarray | None, np.ndarray | None, set[str]]:
    if not isinstance(dataset, Dataset):
        raise DataError(f"audit_data needs a modelyard Dataset, got {type(dataset).__name__}")
    if dataset.modality not in NEAR_THRESHOLDS:
        raise DataError(
            f"dataset modality must be one of {sorted(NEAR_THRESHOLDS)}, got {dataset.modality!r}"
        )
    if near_threshold is not None and not (0.0 < float(near_threshold) <= 1.0):
        raise ConfigError(f"near_threshold must be a cosine in (0, 1], got {near_threshold!r}")
    uses = set(features_for)
    if not uses <= set(FEATURE_USES):
        raise ConfigError(
            f"features_for takes {', '.join(FEATURE_USES)}; got unknown {sorted(uses - set(FEATURE_USES))}"
        )
    ftr = _features(features_train, dataset.n_train, "features_train")
    fte = _features(features_test, dataset.n_test, "features_test")
    if ftr is not None and fte is not None and ftr.shape[1] != fte.shape[1]:
        raise DataError(
            f"features_train has {ftr.shape[1]} columns but features_test {fte.shape[1]}; "
            "pass representations from the same model"
        )
    return ftr, fte, uses


class _Spaces:
    """The two representations, built once on first use: inputs (``dedup.input_space``) and features."""

    def __init__(self, ds: Dataset, ftr: np.ndarray | None, fte: np.ndarray | None) -> None:
        self.ds = ds
        self._inputs: tuple[Any, Any, str] | None = None
        self.features: tuple[Any, Any, str] | None = None
        self.note = ""
        if fte is not None and (ftr is not None or ds.n_train == 0):
            ftr = ftr if ftr is not None else np.zeros((0, fte.shape[1]), dtype=np.float32)
            self.features = (ftr, fte, "the given representations")
        elif ftr is not None or fte is not None:
            self.note = "representations were given for one split only, so the inputs were used"

    def inputs(self) -> tuple[Any, Any, str]:
        if self._inputs is None:
            self._inputs = dedup.input_space(self.ds.x_train, self.ds.x_test, self.ds.modality)
        return self._inputs

    def pick(self, use: str, uses: set[str]) -> tuple[Any, Any, str]:
        if use in uses and self.features is not None:
            return self.features
        tr, te, how = self.inputs()
        return tr, te, f"{how} ({self.note})" if use in uses and self.note else how


def _exact(ds: Dataset, h_tr: list[str], h_te: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"examples": []}
    for split, hashes in (("train", h_tr), ("test", h_te)):
        groups = dedup.duplicate_groups(hashes)
        out[f"{split}_groups"] = len(groups)
        out[f"{split}_duplicate_items"] = sum(len(g) - 1 for g in groups)
        room = MAX_EXAMPLES - len(out["examples"])
        out["examples"] += [{"split": split, "size": len(g), "indices": g[:20]} for g in groups[:room]]
    return out


def _conflicts(
    h_tr: list[str], h_te: list[str], y_tr: np.ndarray | None, y_te: np.ndarray | None
) -> dict[str, Any]:
    members: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for split, hashes, y in (("train", h_tr, y_tr), ("test", h_te, y_te)):
        if y is not None:
            for i, h in enumerate(hashes):
                members[h].append((split, i, int(y[i])))
    bad = [m for m in members.values() if len({lab for _, _, lab in m}) > 1]
    examples = [
        {
            "train": [i for s, i, _ in m if s == "train"][:20],
            "test": [i for s, i, _ in m if s == "test"][:20],
            "labels": sorted({lab for _, _, lab in m}),
        }
        for m in bad[:MAX_EXAMPLES]
    ]
    return {"count": len(bad), "items": sum(len(m) for m in bad), "examples": examples}


def _pred_probs_oos(x: Any, y: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample class probabilities: stratified k-fold, standardised logistic regression."""
    from scipy import sparse
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(with_mean=not sparse.issparse(x)), LogisticRegression(max_iter=LR_MAX_ITER)
    )
    probs = np.zeros((len(y), k), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for fit_idx, eval_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(
            np.zeros(len(y)), y
        ):
            m = clone(model).fit(x[fit_idx], y[fit_idx])
            if len(m.classes_) == 1:
                probs[np.ix_(eval_idx, m.classes_)] = 1.0
            else:
                probs[np.ix_(eval_idx, m.classes_)] = m.predict_proba(x[eval_idx])
    if not np.all(np.isin(np.arange(k), np.unique(y))) or np.any(probs.sum(1) < 1 - 1e-6):
        probs = (probs + 1e-9) / (probs + 1e-9).sum(1, keepdims=True)
    return probs


def _skipped_label_issues(reason: str) -> dict[str, Any]:
    return {
        "status": "skipped",
        "reason": reason,
        "method": None,
        "train_flagged": None,
        "test_flagged": None,
        "estimated_error_rate": None,
        "train_indices": [],
        "test_indices": [],
        "examples": [],
    }


def _label_issues(
    ds: Dataset, y_tr: np.ndarray | None, y_te: np.ndarray | None, space: tuple[Any, Any, str], seed: int
) -> dict[str, Any]:
    skipped = _skipped_label_issues("")
    labelled = [
        (s, y, x) for s, y, x in (("train", y_tr, space[0]), ("test", y_te, space[1])) if y is not None
    ]
    if not labelled:
        return {**skipped, "reason": "the dataset has no labels (an embedder's data)"}
    from scipy import sparse

    y = np.concatenate([y for _, y, _ in labelled])
    present, y_idx = np.unique(y, return_inverse=True)
    counts = np.bincount(y_idx)
    if len(present) < 2 or len(y) < 10 or np.sort(counts)[-2] < 2:
        return {
            **skipped,
            "reason": f"cross-validation needs at least 10 labelled items and two classes with 2 or more "
            f"items each; got {len(y)} items, class counts {counts.tolist()}",
        }
    parts = [x for _, _, x in labelled]
    x = sparse.vstack(parts).tocsr() if sparse.issparse(parts[0]) else np.vstack(parts)
    how = space[2]
    if not sparse.issparse(x) and x.shape[1] > LABEL_MAX_DIM:
        from sklearn.decomposition import PCA

        x = PCA(LABEL_PCA_DIM, svd_solver="randomized", random_state=seed).fit_transform(x)
        how += f", reduced to {LABEL_PCA_DIM} dimensions by PCA"
    folds = int(max(2, min(CV_FOLDS, counts.min())))
    probs = _pred_probs_oos(x, y_idx, len(present), folds, seed)
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = find_label_issues(y_idx, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    n_tr = len(y_tr) if y_tr is not None and labelled[0][0] == "train" else 0
    names = ds.classes or []

    def name(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    examples = []
    for r in ranked[:MAX_EXAMPLES].tolist():
        split, idx = ("train", r) if r < n_tr else ("test", r - n_tr)
        given, suggested = int(present[y_idx[r]]), int(present[int(np.argmax(probs[r]))])
        examples.append(
            {
                "index": idx,
                "split": split,
                "given": given,
                "given_name": name(given),
                "suggested": suggested,
                "suggested_name": name(suggested),
                "self_confidence": round(float(probs[r, y_idx[r]]), 6),
            }
        )
    test_idx = sorted(int(r - n_tr) for r in ranked if r >= n_tr)
    return {
        "status": "ok",
        "reason": None,
        "method": (
            f"cleanlab {_cleanlab_version()} find_label_issues (ranked by self-confidence) on out-of-sample "
            f"probabilities of a {folds}-fold stratified cross-validated logistic regression over train and "
            f"test together, on {how}; test rows are flagged, never removed"
        ),
        "n": len(y),
        "cv_accuracy": float(np.mean(probs.argmax(1) == y_idx)),
        "train_flagged": int(np.sum(ranked < n_tr)),
        "test_flagged": len(test_idx),
        "estimated_error_rate": len(ranked) / len(y),
        "train_indices": sorted(int(r) for r in ranked if r < n_tr),
        "test_indices": test_idx,
        "examples": examples,
    }


def _cleanlab_version() -> str:
    from importlib.metadata import version

    return version("cleanlab")


def _balance(ds: Dataset, y_tr: np.ndarray | None, y_te: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if y_tr is not None or y_te is not None:
        k = max([ds.num_classes or 0] + [int(y.max()) + 1 for y in (y_tr, y_te) if y is not None and len(y)])
        names = [(ds.classes or [])[c] if c < len(ds.classes or []) else str(c) for c in range(k)]
        c_tr = np.bincount(y_tr, minlength=k) if y_tr is not None else None
        c_te = np.bincount(y_te, minlength=k) if y_te is not None else None
        out.update(
            classes=names,
            train=None if c_tr is None else dict(zip(names, c_tr.tolist(), strict=True)),
            test=None if c_te is None else dict(zip(names, c_te.tolist(), strict=True)),
            imbalance_ratio=float(c_tr.max() / c_tr.min()) if c_tr is not None and c_tr.min() > 0 else None,
            missing_from_train=[] if c_tr is None else [names[c] for c in np.flatnonzero(c_tr == 0)],
            missing_from_test=[] if c_te is None else [names[c] for c in np.flatnonzero(c_te == 0)],
        )
    else:
        out["reason"] = "the dataset has no labels"
    nulls: dict[str, Any] = {}
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        if ds.modality == "text":
            nulls[split] = {"empty_texts": sum(1 for t in x if not str(t).strip())}
        else:
            a = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
            bad = ~np.isfinite(a)
            nulls[split] = {
                "nan": int(np.isnan(a).sum()),
                "inf": int(np.isinf(a).sum()),
                "items": int(bad.any(axis=1).sum()),
            }
    out["nulls"] = nulls
    out["constant_features"] = None
    if ds.modality == "tabular" and ds.n_train:
        a = np.asarray(ds.x_train, dtype=np.float32).reshape(ds.n_train, -1)
        with np.errstate(all="ignore"):
            const = np.flatnonzero(np.nanmax(a, axis=0) == np.nanmin(a, axis=0))
        out["constant_features"] = {"count": len(const), "indices": const[:MAX_EXAMPLES].tolist()}
    return out


def read_datasheet(path: str | Path) -> dict[str, Any]:
    """A datasheet (TOML or JSON table with keys such as source, license, description, collection);
    ``licence`` is read as ``license``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise DataError(f"datasheet {p} must be a .toml or .json file, got {p.suffix or 'no suffix'!r}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"cannot read datasheet {p}: {first_line(exc)}; give a readable TOML or JSON file"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"datasheet {p} must hold a table of fields, got {type(data).__name__}")
    if "licence" in data and "license" not in data:
        data["license"] = data.pop("licence")
    wrong = [k for k in ("source", "license") if k in data and not isinstance(data[k], str)]
    if wrong:
        raise DataError(f"datasheet {p}: {', '.join(wrong)} must be text, got {[data[k] for k in wrong]}")
    return data


def _provenance(ds: Dataset, datasheet: str | Path | None) -> dict[str, Any]:
    sheet = dict(ds.datasheet or {})
    if datasheet is not None:
        sheet.update(read_datasheet(datasheet))
    sheet_license = sheet.get("license", sheet.get("licence"))
    return {
        "fingerprint_sha256": ds.fingerprint(),
        "source": ds.source or sheet.get("source") or None,
        "license": ds.license or sheet_license or None,
        "datasheet": None if datasheet is None else str(datasheet),
        "datasheet_fields": sorted(sheet),
    }


def _items(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _caveats(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    lk, n = r["leakage"], r["leakage"]["n_test"]
    if lk["near_count"]:
        how = f"{lk['exact_count']} exact" if lk["near_count"] > lk["exact_count"] else "all exact"
        out.append(
            f"{lk['near_fraction']:.1%} of test items have an exact or near duplicate in training "
            f"({lk['near_count']} of {n}; {how}); accuracy may be inflated"
        )
    elif lk["near_count"] is None:
        if lk["exact_count"]:
            out.append(
                f"{lk['exact_fraction']:.1%} of test items have an exact duplicate in training "
                f"({lk['exact_count']} of {n}); accuracy may be inflated"
            )
        out.append(
            "near-duplicate leakage was not checked (too few features for cosine similarity to tell "
            "duplicates from neighbours); only exact copies were looked for"
        )
    if r["exact_duplicates"]["test_duplicate_items"]:
        out.append(
            f"the test split holds {_items(r['exact_duplicates']['test_duplicate_items'], 'exact repeat')} of "
            "other test items; repeated items count more than once"
        )
    if r["label_conflicts"]["count"]:
        out.append(
            f"{_items(r['label_conflicts']['count'], 'input')} with conflicting labels (the same input "
            f"labelled differently; {r['label_conflicts']['items']} items)"
        )
    li = r["label_issues"]
    if li["status"] == "ok" and li["train_flagged"] + li["test_flagged"]:
        out.append(
            f"an estimated {li['estimated_error_rate']:.1%} of labels may be wrong (cleanlab, out-of-sample); "
            f"{_items(li['test_flagged'], 'test item')} flagged"
        )
    elif li["status"] != "ok" and r["balance"].get("classes"):
        out.append(f"labels were not checked for errors: {li['reason']}")
    missing = r["balance"].get("missing_from_test") or []
    if missing:
        out.append(f"classes without test items ({', '.join(missing[:10])}) are not measured")
    for key, word in (("source", "source"), ("license", "licence")):
        if r["provenance"][key] is None:
            out.append(f"the dataset's {word} is not declared")
    return out


def audit_data(
    dataset: Dataset,
    *,
    features_train: np.ndarray | None = None,
    features_test: np.ndarray | None = None,
    near_threshold: float | None = None,
    label_issues: bool = True,
    features_for: Iterable[str] = ("outliers",),
    datasheet: str | Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Audit a dataset's splits (metrics.md 5.6); returns a plain JSON-serialisable dict (module docstring).

    ``features_*`` are representations of each split (one row per item) for the checks named in
    ``features_for``; the others use the inputs. ``near_threshold`` overrides ``NEAR_THRESHOLDS``."""
    ftr, fte, uses = _validate(dataset, features_train, features_test, near_threshold, features_for)
    say = progress or (lambda message, fraction: None)
    ds = dataset
    y_tr = _labels(ds.y_train, ds.n_train, "train")
    y_te = _labels(ds.y_test, ds.n_test, "test")
    threshold = float(near_threshold) if near_threshold is not None else NEAR_THRESHOLDS[ds.modality]
    spaces = _Spaces(ds, ftr, fte)
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {}
    t_all = time.perf_counter()

    def step(name: str, fraction: float, fn: Callable[[], Any]) -> Any:
        say(f"data audit: {name.replace('_', ' ')}", fraction)
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - t0, 3)
        return value

    h_tr, h_te = step(
        "hashes",
        0.0,
        lambda: (dedup.item_hashes(ds.x_train, ds.modality), dedup.item_hashes(ds.x_test, ds.modality)),
    )
    result["exact_duplicates"] = step("exact_duplicates", 0.1, lambda: _exact(ds, h_tr, h_te))
    result["label_conflicts"] = step("label_conflicts", 0.15, lambda: _conflicts(h_tr, h_te, y_tr, y_te))

    def near() -> tuple[dict[str, Any], dict[str, Any]]:
        space = spaces.pick("near_duplicates", uses)
        return dedup.near_duplicates_and_leakage(
            ds.x_train, ds.x_test, ds.modality, h_tr, h_te, space, threshold, raw=space is not spaces.features
        )

    result["near_duplicates"], result["leakage"] = step("near_duplicates", 0.2, near)
    if label_issues:
        result["label_issues"] = step(
            "label_issues",
            0.4,
            lambda: _label_issues(ds, y_tr, y_te, spaces.pick("label_issues", uses), seed),
        )
    else:
        result["label_issues"] = _skipped_label_issues("the label-issue check was turned off")
    result["outliers"] = step("outliers", 0.8, lambda: dedup.outlier_scores(spaces.pick("outliers", uses)))
    result["balance"] = step("balance", 0.9, lambda: _balance(ds, y_tr, y_te))
    result["provenance"] = step("provenance", 0.95, lambda: _provenance(ds, datasheet))
    result["caveats"] = _caveats(result)
    excluded = set(result["leakage"]["test_indices"]) | set(result["label_issues"]["test_indices"])
    result["clean_test_indices"] = [i for i in range(ds.n_test) if i not in excluded]
    seconds["total"] = round(time.perf_counter() - t_all, 3)
    result["seconds"] = seconds
    say("data audit: done", 1.0)
    return result
