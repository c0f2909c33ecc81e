"""The evidence suite: every check beyond speed, on every candidate, paired with the baseline.

Inputs for the checks (calibration split, OOD sets, corrupted and perturbed copies, adversarials crafted once
on the differentiable baseline) are built once per run; each candidate's predictions on each input set are
computed once, through its Runner, and cached; the checks are pure functions of those predictions.
Sample sizes for the perturbation checks come from the smallest difference the policy gates on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.config import Policy
from modelyard.data.dataset import Dataset
from modelyard.data.splits import take
from modelyard.errors import DataError, ModelyardError, first_line
from modelyard.evaluate import calibration as calibration_checks
from modelyard.evaluate import compare as compare_checks
from modelyard.evaluate import ood as ood_checks
from modelyard.evaluate import robustness as robustness_checks
from modelyard.evaluate import slices as slice_checks
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.runtime.preprocess import predict

Progress = Callable[[str, float], None]
Z95 = 1.959963984540054
EMBED_OOD_VAL_MIN = 10  # fit items kept out of the kNN reference to fit the OOD threshold on
EMBED_OOD_REFERENCE_MAX = 2000


def no_progress(msg: str, advance: float = 0.0) -> None:
    """The default ``Progress`` callback: says nothing."""
    return None


def robust_sample_size(policy: Policy, n_available: int) -> tuple[int, str]:
    """Items per perturbed set: enough for a 95% interval half-width at most the smallest robustness margin
    (worst case p = 0.5), capped by what the test split has."""
    margins = [
        policy.threshold("robustness.max_consistency_drop_points"),
        policy.threshold("robustness.max_adversarial_drop_points"),
    ]
    margin = min(m for m in margins if m is not None) / 100.0
    needed = math.ceil((Z95 / max(margin, 1e-3)) ** 2 * 0.25) if margin > 0 else n_available
    n = min(n_available, needed)
    why = (
        f"{needed} items give a 95% interval half-width of at most {margin * 100:.3g} points "
        f"(the smallest robustness margin of the policy); the test split has {n_available}"
    )
    return n, why


@dataclass
class SuiteInputs:
    """Input sets built once per run. ``sets`` maps a key to inputs every candidate is run on."""

    sets: dict[str, Any] = field(default_factory=dict)
    cal_labels: np.ndarray | None = None
    cal_how: str | None = None
    ood_names: list[str] = field(default_factory=list)
    ood_source: str | None = None
    corruption_keys: dict[str, dict[int, str]] = field(default_factory=dict)
    perturbation_keys: dict[str, str] = field(default_factory=dict)
    robust_idx: np.ndarray | None = None
    adversarial: dict[str, Any] = field(
        default_factory=dict
    )  # epsilon (mean), text, steps: JSON for Evidence
    epsilon: Any = None  # the attack budget as used: a number, or one per feature
    ood_fit_how: str | None = None  # what the embedder's kNN reference and OOD threshold were fitted on
    unknown: dict[str, str] = field(default_factory=dict)  # check -> why it cannot run
    seconds: dict[str, float] = field(default_factory=dict)
    sample_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - t0, 3)


def prepare_inputs(
    baseline: Candidate,
    dataset: Dataset,
    policy: Policy,
    *,
    ood_data: dict[str, Any] | None = None,
    ood_source: str | None = None,
    progress: Progress | None = None,
) -> SuiteInputs:
    """Build the calibration, OOD, perturbed and adversarial input sets for one run."""
    from modelyard.data.ood_sets import builtin_ood
    from modelyard.evaluate import corruptions as C

    say: Progress = progress or no_progress
    task = baseline.spec.task
    inp = SuiteInputs()
    cal = dataset.calibration_split() if task == "classification" else None
    if cal is not None:
        inp.sets["cal"], inp.cal_labels, inp.cal_how = cal
    if task == "embedding":
        # kNN OOD scores need a reference set of in-distribution items and, for the threshold, other ID items
        # that are not in it: both from the fit part (a fixed split of it), never from the test items scored.
        fit = dataset.fit_inputs()
        perm = np.random.default_rng(0).permutation(len(fit))
        n_val = max(EMBED_OOD_VAL_MIN, len(fit) // 4) if len(fit) >= 2 * EMBED_OOD_VAL_MIN else 0
        ref_idx, val_idx = np.sort(perm[n_val:][:EMBED_OOD_REFERENCE_MAX]), np.sort(perm[:n_val])
        inp.sets["train"] = take(fit, ref_idx)
        if n_val:
            inp.sets["ood_val"] = take(fit, val_idx)
        inp.ood_fit_how = (
            f"kNN reference: {len(ref_idx)} fit items; threshold fitted on {n_val} other fit items"
            if n_val
            else f"kNN reference: {len(ref_idx)} fit items; too few fit items to also fit a threshold on"
        )
    n_rob, why = robust_sample_size(policy, dataset.n_test)
    inp.robust_idx = np.arange(n_rob) if n_rob >= dataset.n_test else _stratified(dataset, n_rob)
    inp.sample_sizes["robustness"] = {"n": int(n_rob), "why": why}
    x_rob = take(dataset.x_test, inp.robust_idx)

    # Out-of-distribution sets: the user's, else the built-in one for the demo data.
    with _timed(inp.seconds, "ood.inputs"):
        sets = ood_data if ood_data is not None else builtin_ood(dataset.name)
        inp.ood_source = ood_source or ("built-in" if sets else None)
        for name, x in (sets or {}).items():
            inp.sets[f"ood:{name}"] = x
            inp.ood_names.append(name)
        if not sets:
            inp.unknown["ood"] = (
                "no out-of-distribution set: give one with --ood-data (same input shape as the model)"
            )

    say("building perturbed inputs", 0.0)
    with _timed(inp.seconds, "robustness.inputs"):
        if dataset.modality == "image" and isinstance(x_rob, np.ndarray):
            fit_x = np.asarray(dataset.fit_inputs())
            lo, hi = baseline.spec.value_range or (float(np.min(fit_x)), float(np.max(fit_x)))
            table = C.image_corruptions(x_rob, value_range=(lo, hi), seed=0)
            for cname, by_sev in table.items():
                inp.corruption_keys[cname] = {}
                for sev, xs in by_sev.items():
                    key = f"corrupt:{cname}:{sev}"
                    inp.sets[key] = xs
                    inp.corruption_keys[cname][sev] = key
                # severity 1 of each corruption is the label-preserving perturbation for consistency
                inp.perturbation_keys[cname] = inp.corruption_keys[cname][min(by_sev)]
        elif dataset.modality == "text":
            for pname, texts in C.text_perturbations(list(x_rob), seed=0).items():
                inp.sets[f"perturb:{pname}"] = texts
                inp.perturbation_keys[pname] = f"perturb:{pname}"
        elif isinstance(x_rob, np.ndarray):
            ref = np.asarray(dataset.fit_inputs())
            for pname, xs in C.tabular_noise(x_rob, reference=ref, seed=0).items():
                inp.sets[f"perturb:{pname}"] = xs
                inp.perturbation_keys[pname] = f"perturb:{pname}"

    if task == "classification" and dataset.y_test is not None:
        say("crafting adversarial inputs on the baseline", 0.0)
        with _timed(inp.seconds, "robustness.adversarial_crafting"):
            _craft_adversarials(baseline, dataset, policy, x_rob, take(dataset.y_test, inp.robust_idx), inp)
    return inp


def _stratified(dataset: Dataset, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dataset.y_test is None:
        return np.sort(rng.choice(dataset.n_test, size=n, replace=False))
    from sklearn.model_selection import train_test_split

    idx = np.arange(dataset.n_test)
    try:
        keep, _ = train_test_split(idx, train_size=n, random_state=0, stratify=dataset.y_test)
    except ValueError:
        keep = rng.choice(dataset.n_test, size=n, replace=False)
    return np.sort(keep)


def _craft_adversarials(
    baseline: Candidate, dataset: Dataset, policy: Policy, x: Any, y: np.ndarray, inp: SuiteInputs
) -> None:
    from modelyard.evaluate import attacks as A

    if dataset.modality == "text" or not isinstance(x, np.ndarray):
        return  # discrete inputs: no gradient attack; text robustness is the perturbation check
    try:
        module = baseline.torch_module()
    except ModelyardError as exc:
        inp.unknown["adversarial"] = (
            f"the baseline is not differentiable here ({exc}); adversarials are crafted on a PyTorch "
            "baseline: give one, or waive 'adversarial_drop'"
        )
        return
    r = policy.robustness
    ref = np.asarray(dataset.fit_inputs())  # attack ranges and budget come from fit items, never test items
    if baseline.spec.value_range is not None:
        value_range: Any = baseline.spec.value_range
    else:
        value_range = (ref.min(axis=0), ref.max(axis=0))
    if r.epsilon is not None:
        eps: Any = float(r.epsilon)
        text = f"{r.epsilon:g} (input units, from the policy)"
    else:
        eps, text = A.default_epsilon(dataset.modality, baseline.spec.value_range, reference=ref)
    steps = int(r.pgd_steps)
    inp.sets["adv:fgsm"] = A.fgsm(module, x, y, epsilon=eps, value_range=value_range)
    inp.sets["adv:pgd"] = A.pgd(module, x, y, epsilon=eps, value_range=value_range, steps=steps, seed=0)
    inp.epsilon = eps
    inp.adversarial = {
        "epsilon": float(np.mean(eps)),
        "epsilon_text": text,
        "steps": steps,
        "alpha_text": "2.5 * epsilon / steps",
    }


class Predictions:
    """One candidate's outputs on every input set, computed once."""

    def __init__(self, candidate: Candidate, *, threads: int | None = None) -> None:
        self.candidate = candidate
        self._runner = candidate.load(threads=threads)
        self._pre = candidate.preprocessor()
        self._cache: dict[str, np.ndarray] = {}

    def get(self, key: str, x: Any) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = predict(self._runner, self._pre, x, batch_size=64)
        return self._cache[key]

    def all(self, inputs: SuiteInputs, dataset: Dataset) -> dict[str, np.ndarray]:
        self.get("test", dataset.x_test)
        for key, x in inputs.sets.items():
            self.get(key, x)
        return self._cache


def _unknown(name: str, reason: str) -> Measurement:
    return measure(name, None, reason=reason)


def _all_unknown(names: tuple[str, ...], reason: str) -> dict[str, Measurement]:
    return {n: _unknown(n, reason) for n in names}


OOD_CHECKS = tuple(s.name for s in ood_checks.CHECKS)


def classification_checks(
    y: np.ndarray,
    base: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    inputs: SuiteInputs,
    *,
    num_classes: int,
    labels: list[str] | None,
    policy: Policy,
    slices: dict[str, np.ndarray],
    clean_idx: list[int] | None,
    n_resamples: int,
    seconds: dict[str, float],
) -> tuple[dict[str, Measurement], dict[str, Any]]:
    """Every classifier check beyond quality.py's, from cached predictions. Returns the measurements and the
    serving rule (temperature, OOD score and threshold)."""
    from modelyard.evaluate import calibration, compare, ood, robustness
    from modelyard.evaluate import slices as S

    out: dict[str, Measurement] = {}
    serving: dict[str, Any] = {"temperature": None, "ood": None}
    zb, zc = base["test"], cand["test"]
    with _timed(seconds, "compare"):
        out.update(compare.paired_comparison(y, zb, zc, num_classes=num_classes, n_resamples=n_resamples))
    with _timed(seconds, "calibration"):
        if "cal" in cand and inputs.cal_labels is not None:
            cal = calibration.calibration_evidence(cand["cal"], inputs.cal_labels, zc, y)
            for m in cal.values():
                m.details.setdefault("calibration_split", inputs.cal_how)
        else:
            cal = calibration.calibration_evidence(None, None, zc, y)
        out.update(cal)
        t = cal["calibration.temperature"].value
        serving["temperature"] = t
    with _timed(seconds, "slices"):
        out.update(
            S.slice_evidence(
                y, zb, zc, num_classes=num_classes, labels=labels, n_resamples=min(n_resamples, 1000)
            )
        )
        if slices:
            out.update(S.user_slice_evidence(y, zb, zc, slices))
    if clean_idx is not None:
        from modelyard.evaluate.quality import clean_accuracy

        out["quality.accuracy_clean"] = clean_accuracy(y, zb, zc, clean_idx)
    with _timed(seconds, "robustness"):
        out.update(_robustness(y, base, cand, inputs, robustness, transfer=base is not cand))
    with _timed(seconds, "ood"):
        if inputs.ood_names:
            ood_b = {n: base[f"ood:{n}"] for n in inputs.ood_names}
            ood_c = {n: cand[f"ood:{n}"] for n in inputs.ood_names}
            ms, rule = ood.ood_evidence(
                zb, ood_b, zc, ood_c, score=policy.robustness.ood_score, logits_val_cand=cand.get("cal")
            )
            out.update(ms)
            out["ood.auroc"].details["ood_source"] = inputs.ood_source
            serving["ood"] = rule
        else:
            reason = inputs.unknown.get("ood", "no out-of-distribution set")
            out.update(_all_unknown(OOD_CHECKS, reason))
    return out, serving


def _robustness(
    y: np.ndarray,
    base: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    inputs: SuiteInputs,
    R: Any,
    *,
    transfer: bool,
) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    idx = inputs.robust_idx if inputs.robust_idx is not None else np.arange(len(y))
    y_rob = y[idx]
    zb, zc = base["test"][idx], cand["test"][idx]
    if inputs.corruption_keys:
        cb = {c: {s: base[k] for s, k in sev.items()} for c, sev in inputs.corruption_keys.items()}
        cc = {c: {s: cand[k] for s, k in sev.items()} for c, sev in inputs.corruption_keys.items()}
        out.update(R.corruption_evidence(y_rob, zb, zc, cb, cc))
    if inputs.perturbation_keys:
        pb = {p: base[k].argmax(1) for p, k in inputs.perturbation_keys.items()}
        pc = {p: cand[k].argmax(1) for p, k in inputs.perturbation_keys.items()}
        out.update(R.consistency_evidence(zb.argmax(1), pb, zc.argmax(1), pc))
    else:
        out.update(
            _all_unknown(
                ("robustness.consistency", "robustness.consistency_drop"),
                "no label-preserving perturbation exists for this input type",
            )
        )
    if "adv:pgd" in inputs.sets:
        adv_b = {a: base[f"adv:{a}"] for a in ("fgsm", "pgd")}
        adv_c = {a: cand[f"adv:{a}"] for a in ("fgsm", "pgd")}
        out.update(
            R.adversarial_evidence(
                y_rob,
                zb,
                adv_b,
                zc,
                adv_c,
                epsilon=inputs.epsilon,
                epsilon_text=inputs.adversarial["epsilon_text"],
                steps=inputs.adversarial["steps"],
                transfer=transfer,
            )
        )
    elif "adversarial" in inputs.unknown:
        adversarial = (
            "robustness.adversarial_accuracy",
            "robustness.attack_success_rate",
            "robustness.adversarial_accuracy_drop",
        )
        out.update(_all_unknown(adversarial, inputs.unknown["adversarial"]))
    return out


def embedding_checks(
    base: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    inputs: SuiteInputs,
    *,
    seconds: dict[str, float],
) -> dict[str, Measurement]:
    """Embedder checks beyond quality.py's: perturbation cosine and kNN-based OOD separation."""
    from modelyard.evaluate import ood
    from modelyard.evaluate import robustness as R

    out: dict[str, Measurement] = {}
    idx = inputs.robust_idx if inputs.robust_idx is not None else np.arange(len(cand["test"]))
    with _timed(seconds, "robustness"):
        if inputs.perturbation_keys:
            pert = {p: cand[k] for p, k in inputs.perturbation_keys.items()}
            out.update(R.embedding_consistency_evidence(cand["test"][idx], pert))
    with _timed(seconds, "ood"):
        if inputs.ood_names:
            ood_b = np.concatenate([base[f"ood:{n}"] for n in inputs.ood_names])
            ood_c = np.concatenate([cand[f"ood:{n}"] for n in inputs.ood_names])
            ms, _ = ood.embedding_ood_evidence(
                base["test"],
                ood_b,
                cand["test"],
                ood_c,
                reference_base=base["train"],
                reference_cand=cand["train"],
                emb_val_cand=cand.get("ood_val"),
            )
            for m in ms.values():
                m.details["fitted_on"] = inputs.ood_fit_how
            out.update(ms)
        else:
            reason = inputs.unknown.get("ood", "no out-of-distribution set")
            out.update(_all_unknown(OOD_CHECKS, reason))
    return out


def unmet_needs(
    dataset: Dataset, inputs: SuiteInputs, *, audited: bool, backdoor_scanned: bool
) -> dict[str, str]:
    """Need (``checkspec.NEEDS``) -> why this run does not have it, for every need it lacks."""
    x = dataset.x_test
    out: dict[str, str] = {}
    if dataset.y_test is None:
        out["labels"] = "the test split has no labels"
    if inputs.cal_labels is None:
        out["calibration"] = "no calibration split: declare one, or give train items to hold one out of"
    if not inputs.ood_names:
        out["ood"] = inputs.unknown.get("ood", "no out-of-distribution set")
    if "adversarial" in inputs.unknown:
        out["gradients"] = inputs.unknown["adversarial"]
    if dataset.modality == "text" or not isinstance(x, np.ndarray):
        out["tensor_inputs"] = "text inputs: no gradient attack; text robustness is the perturbation check"
    if not inputs.perturbation_keys:
        out["perturbations"] = "no label-preserving perturbation exists for this input type"
    if not inputs.corruption_keys:
        out["images"] = "corruptions are defined for images"
    if not dataset.slices:
        out["slices"] = "no slice columns declared"
    if not dataset.pairs:
        out["pairs"] = "no paraphrase pairs"
    if not audited:
        out["audit"] = "no data audit"
    if not backdoor_scanned:
        out["backdoor"] = "no backdoor scan"
    return out


# the checks that classification_checks / embedding_checks compute (quality.py's run before them; the Holm
# p-value is set across candidates afterwards)
_SUITE_CHECKS = (
    *compare_checks.CHECKS,
    *calibration_checks.CHECKS,
    *slice_checks.CHECKS,
    *robustness_checks.CHECKS,
    *ood_checks.CHECKS,
)


def check_failed(task: str, unmet: dict[str, str], exc: BaseException) -> dict[str, Measurement]:
    """The suite's checks after a crash: each one that applies is UNKNOWN with the reason, never a crashed
    run."""
    from modelyard.evaluate.checks import missing_needs

    reason = f"the check failed: {type(exc).__name__}: {first_line(exc)}"
    names = [
        s.name
        for s in _SUITE_CHECKS
        if task in s.tasks and s.name != "compare.mcnemar_p_holm" and missing_needs(s, unmet)[0]
    ]
    return _all_unknown(tuple(names), reason)


def validate_ood_data(ood: dict[str, Any], dataset: Dataset) -> None:
    """One-line error when a user's OOD set does not match the model's inputs."""
    from modelyard.evaluate.ood import check_ood_inputs

    if not ood:
        raise DataError("the OOD set is empty; give at least 10 out-of-distribution inputs")
    for x in ood.values():
        check_ood_inputs(x, dataset.x_test[:1])
