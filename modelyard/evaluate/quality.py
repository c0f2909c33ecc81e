"""Quality, comparison-with-baseline and calibration evidence from predictions already computed."""

from __future__ import annotations

import numpy as np

from modelyard.evaluate import metrics as M
from modelyard.evaluate.evidence import Measurement, measure


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
