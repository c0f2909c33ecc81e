"""Quality, comparison-with-baseline and calibration evidence from predictions already computed."""

from __future__ import annotations

import numpy as np

from modelyard.evaluate import metrics as M
from modelyard.evaluate.checkspec import CLASSIFIERS, EMBEDDERS, CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.stats import wilson_interval

_CLS = CLASSIFIERS
_EMB = EMBEDDERS
CHECKS = declare(
    CheckSpec(
        "quality.accuracy",
        "fraction",
        "top-1 accuracy on the test split, 95% bootstrap interval",
        "higher",
        _CLS,
        ("labels",),
        column="Accuracy",
    ),
    CheckSpec(
        "quality.macro_f1",
        "fraction",
        "macro-averaged F1 on the test split, 95% bootstrap interval",
        "higher",
        _CLS,
        ("labels",),
        column="Macro F1",
    ),
    CheckSpec(
        "compare.accuracy_drop",
        "points",
        "baseline accuracy minus candidate accuracy, percentage points, paired 95% interval",
        "lower",
        _CLS,
        ("labels",),
        column="Accuracy drop",
        gate=GateSpec(
            "accuracy_drop",
            "quality.max_accuracy_drop_points",
            1.0,
            "<=",
            "accuracy drop against the baseline",
            unit="points",
            meaning="accuracy drop margin, percentage points: the point estimate AND the upper bound of the "
            "one-sided 95% paired interval (non-inferiority) must be below it",
        ),
    ),
    CheckSpec(
        "compare.flip_rate",
        "fraction",
        "fraction of test items whose predicted class differs from the baseline's",
        "lower",
        _CLS,
        gate=GateSpec(
            "flip_rate",
            "quality.max_flip_rate",
            0.02,
            "<=",
            "share of predictions that changed",
            kind="fraction",
            meaning="share of predictions that changed",
        ),
    ),
    CheckSpec(
        "compare.mcnemar_p",
        "p-value",
        "McNemar's exact test on paired correctness against the baseline",
        None,
        _CLS,
        ("labels",),
    ),
    CheckSpec(
        "calibration.ece",
        "fraction",
        "expected calibration error, 15 equal-width bins, top label",
        "lower",
        _CLS,
        ("labels",),
        column="ECE",
    ),
    CheckSpec(
        "calibration.ece_increase",
        "fraction",
        "candidate ECE minus baseline ECE",
        "lower",
        _CLS,
        ("labels",),
        gate=GateSpec(
            "ece_increase",
            "quality.max_ece_increase",
            0.02,
            "<=",
            "calibration error increase",
            kind="fraction",
            meaning="calibration error increase (15-bin ECE)",
        ),
    ),
    CheckSpec(
        "calibration.brier", "score", "multiclass Brier score, range [0, 2]", "lower", _CLS, ("labels",)
    ),
    CheckSpec(
        "calibration.nll",
        "nats",
        "mean negative log-likelihood of the true class",
        "lower",
        _CLS,
        ("labels",),
    ),
    CheckSpec(
        "quality.accuracy_clean",
        "fraction",
        "accuracy on the test items the data audit neither found leaked nor flagged as mislabelled",
        "higher",
        _CLS,
        ("labels", "audit"),
    ),
    CheckSpec(
        "quality.cosine_mean",
        "cosine",
        "mean cosine similarity to the baseline's embeddings",
        "higher",
        _EMB,
        column="Cosine mean",
        gate=GateSpec(
            "cosine_mean",
            "quality.min_cosine_mean",
            0.99,
            ">=",
            "mean cosine to the baseline's embeddings",
            kind="fraction",
            meaning="embedders: mean cosine to the baseline's embeddings",
        ),
    ),
    CheckSpec(
        "quality.cosine_p5",
        "cosine",
        "5th percentile of cosine similarity to the baseline's embeddings",
        "higher",
        _EMB,
        column="Cosine p5",
        gate=GateSpec(
            "cosine_p5",
            "quality.min_cosine_p5",
            0.98,
            ">=",
            "5th-percentile cosine to the baseline's embeddings",
            kind="fraction",
            meaning="embedders: 5th percentile cosine",
        ),
    ),
    CheckSpec(
        "quality.top10_agreement",
        "fraction",
        "mean overlap of each item's 10 nearest neighbours with the baseline's",
        "higher",
        _EMB,
        column="Top-10 agreement",
        gate=GateSpec(
            "top10_agreement",
            "quality.min_top10_agreement",
            0.95,
            ">=",
            "agreement of the 10 nearest neighbours with the baseline's",
            kind="fraction",
            meaning="embedders: 10-nearest-neighbour agreement with the baseline",
        ),
    ),
    CheckSpec(
        "quality.paraphrase_recall_at_1",
        "fraction",
        "fraction of paraphrase pairs whose partner is the nearest neighbour",
        "higher",
        _EMB,
        ("pairs",),
        column="Paraphrase recall@1",
    ),
)


def classification_evidence(
    y: np.ndarray,
    logits_base: np.ndarray,
    logits_cand: np.ndarray,
    *,
    num_classes: int,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Measurement]:
    """Accuracy and macro-F1 with bootstrap intervals; drop, flips and McNemar against the baseline;
    ECE (15 bins), Brier, NLL and the reliability table."""
    y = np.asarray(y, dtype=np.int64)
    pb, pc = M.softmax(logits_base), M.softmax(logits_cand)
    yb, yc = pb.argmax(1), pc.argmax(1)
    out: dict[str, Measurement] = {}

    acc = M.accuracy(y, yc)
    out["quality.accuracy"] = measure(
        "quality.accuracy",
        acc,
        M.bootstrap_ci(lambda a, b: M.accuracy(a, b), y, yc, n_resamples=n_resamples, seed=seed),
        n=len(y),
    )
    out["quality.macro_f1"] = measure(
        "quality.macro_f1",
        M.macro_f1(y, yc, num_classes=num_classes),
        M.bootstrap_ci(
            lambda a, b: M.macro_f1(a, b, num_classes=num_classes),
            y,
            yc,
            n_resamples=min(n_resamples, 1000),
            seed=seed,
        ),
    )
    drop = M.accuracy_drop(y, yb, yc, n_resamples=n_resamples, seed=seed)
    out["compare.accuracy_drop"] = measure(
        "compare.accuracy_drop",
        drop["drop_points"],
        tuple(drop["interval"]),
        upper_one_sided_95=drop["upper_one_sided_95"],
        baseline_accuracy=M.accuracy(y, yb),
    )
    out["compare.flip_rate"] = measure(
        "compare.flip_rate",
        M.flip_rate(yb, yc),
        negative_flip_rate=M.negative_flip_rate(y, yb, yc),
        flips=int(np.sum(yb != yc)),
        n=len(y),
    )
    mc = M.mcnemar_exact(yb == y, yc == y)
    out["compare.mcnemar_p"] = measure(
        "compare.mcnemar_p",
        mc["p_value"],
        b=int(mc["b"]),
        c=int(mc["c"]),
        n=int(mc["n"]),
        test="McNemar exact, two-sided",
    )
    ece_c, ece_b = M.ece(pc, y), M.ece(pb, y)
    out["calibration.ece"] = measure(
        "calibration.ece", ece_c, bins=M.reliability_bins(pc, y), n_bins=15, baseline_ece=ece_b
    )
    out["calibration.ece_increase"] = measure("calibration.ece_increase", ece_c - ece_b)
    out["calibration.brier"] = measure("calibration.brier", M.brier(pc, y))
    out["calibration.nll"] = measure("calibration.nll", M.nll(logits_cand, y, from_logits=True))
    return out


def embedding_evidence(
    emb_base: np.ndarray, emb_cand: np.ndarray, pairs: list[tuple[int, int]], *, k: int = 10
) -> dict[str, Measurement]:
    """Cosine to the baseline (mean, 5th percentile), top-k neighbour agreement and paraphrase recall@1."""
    cos = M.cosine_to_reference(emb_cand, emb_base)
    out = {
        "quality.cosine_mean": measure(
            "quality.cosine_mean", float(np.mean(cos)), min=float(np.min(cos)), n=len(cos)
        ),
        "quality.cosine_p5": measure("quality.cosine_p5", float(np.percentile(cos, 5))),
    }
    kk = min(k, len(cos) - 1)
    if kk >= 1:
        out["quality.top10_agreement"] = measure(
            "quality.top10_agreement", M.topk_agreement(emb_cand, emb_base, k=kk), k=kk
        )
    else:
        out["quality.top10_agreement"] = measure(
            "quality.top10_agreement", None, reason="needs at least 2 items"
        )
    if pairs:
        out["quality.paraphrase_recall_at_1"] = measure(
            "quality.paraphrase_recall_at_1",
            M.paraphrase_recall_at_1(emb_cand, pairs),
            baseline=M.paraphrase_recall_at_1(emb_base, pairs),
            pairs=len(pairs),
        )
    return out


def clean_accuracy(
    y: np.ndarray, logits_base: np.ndarray, logits_cand: np.ndarray, clean_idx: list[int]
) -> Measurement:
    """Accuracy on the test items the data audit kept (neither leaked nor flagged), Wilson 95% interval."""
    idx = np.asarray(clean_idx, dtype=np.int64)
    if not len(idx):
        return measure(
            "quality.accuracy_clean", None, reason="every test item is leaked or flagged by the data audit"
        )
    correct = logits_cand[idx].argmax(1) == y[idx]
    k = int(np.sum(correct))
    return measure(
        "quality.accuracy_clean",
        float(np.mean(correct)),
        wilson_interval(k, len(idx)),
        n=len(idx),
        excluded=int(len(y) - len(idx)),
        baseline=float(np.mean(logits_base[idx].argmax(1) == y[idx])),
    )
