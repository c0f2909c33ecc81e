"""Report and model card sections for evidence beyond accuracy: calibration after temperature, per-class,
robustness, out-of-distribution, audits, security, governance; built from synthetic evidence."""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import pytest
from huggingface_hub import ModelCard

from modelyard.errors import DataError
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.schema import load_evidence
from modelyard.report import plots, render_model_card, render_report
from modelyard.report.card import md_table, risks
from modelyard.report.governance import governance_rows
from tests.helpers.evidence import (
    PNG_MAGIC,
    classifier_evidence,
    embedder_evidence,
    front_matter,
    risks_section,
)
from tests.helpers.full_evidence import CLASSES, EVIL, LEAK_CAVEAT, LIMITS, full_evidence


@pytest.fixture(scope="module")
def full_html() -> str:
    """The report of the full evidence, rendered once (with its plots) for the tests that only read it."""
    return render_report(full_evidence())


@pytest.fixture
def fast_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stub the PNG drawing where a test is about the page's text, not its plots (matplotlib is slow)."""
    for name in dir(plots):
        if name.endswith(("_png", "_svg")):
            monkeypatch.setattr(plots, name, lambda *a, **k: PNG_MAGIC)


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _images(html: str) -> list[str]:
    """The PNG plots (the Pareto plot is the one SVG)."""
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"', html)


# -------------------------------------------------------------------------------------------- report


def test_report_has_the_new_sections_and_plots(full_html: str) -> None:
    html = full_html
    for heading in (
        "<h2>Calibration</h2>",
        "<h2>Per-class</h2>",
        "<h2>Robustness</h2>",
        "<h2>Out-of-distribution</h2>",
        "<h2>Audit</h2>",
        "<h2>How this was measured</h2>",
    ):
        assert heading in html
    images = _images(html)
    titles = [t for _, t in images]
    for title in (
        "Reliability after temperature scaling",
        "Per-class recall",
        "Accuracy under corruption",
        "OOD score: in-distribution against OOD",
    ):
        assert title in titles
    assert len(images) == 7  # the 3 PNG plots of before plus the 4 new ones (the Pareto plot is SVG)
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img, _ in images)
    assert "<script" not in html.lower() and "<link" not in html.lower()


def test_report_candidates_table_new_columns_and_caveats(full_html: str) -> None:
    html = full_html
    table = _section(html, "<h2>Candidates</h2>", "<h2>Gates not passed</h2>")
    for h in (
        "NFR (fraction)",
        "KL to baseline (nats)",
        "Worst-class drop (points)",
        "Adversarial accuracy (fraction) ‡",
        "OOD AUROC (fraction)",
        "Accuracy (fraction) ‡",
    ):
        assert f"<th>{h}</th>" in table
    assert ">0.0080<" in table  # NFR of int8-dynamic, value only
    assert 'title="95% interval 0.0000 – 0.0200"' in table  # its interval as a tooltip
    assert ">30.0000<" in table  # worst-class drop of int8-dynamic
    # the baseline's paired comparison is not measured, not invented
    baseline_row = table.split("<td>baseline †</td>", 1)[1].split("</tr>", 1)[0]
    assert "not measured" in baseline_row
    # caveats sit right under the table with the accuracy figures
    assert "‡ Caveats on every accuracy figure in this report:" in table
    assert LEAK_CAVEAT in table and "3 test items flagged" in table


def test_report_section_values(full_html: str) -> None:
    html = full_html
    calib = _section(html, "<h2>Calibration</h2>", "<h2>Per-class</h2>")
    assert "<td>int8-dynamic</td>" in calib and ">1.700<" in calib  # T of candidate 2
    assert "0.0130 [0.0050 – 0.0300]" in calib and ">0.3100<" in calib and ">180<" in calib

    per_class = _section(html, "<h2>Per-class</h2>", "<h2>Robustness</h2>")
    assert "Per class: int8-dynamic" in per_class  # the champion
    assert "0.6400 [0.5400 – 0.6900]" in per_class  # recall of class 3 with its Wilson interval
    assert "30.0000 [25.0000 – 35.0000]" in per_class  # worst-class drop with its interval
    assert "writer = left-handed" in per_class and "unknown: n &lt; min_support" in per_class

    rob = _section(html, "<h2>Robustness</h2>", "<h2>Out-of-distribution</h2>")
    assert "ε = 0.1 of the input range (1.6/16 grey levels), 10 PGD steps" in rob
    assert "crafted once on the baseline" in rob
    assert "0.3320 [0.2600 – 0.3600]" in rob  # PGD accuracy of int8-dynamic
    assert "<th>FGSM accuracy (fraction)</th>" in rob and ">0.4700<" in rob
    assert "<th>Relative mCE (ratio)</th>" in rob and ">1.100<" in rob
    assert "<td>gaussian_noise</td>" in rob and ">0.6600<" in rob  # mean over severities of int8-dynamic
    assert "Consistency per perturbation" in rob

    ood = _section(html, "<h2>Out-of-distribution</h2>", "<h2>Audit</h2>")
    assert "Score: energy" in ood and "AUROC with OOD as the positive class; FPR95 with ID positive" in ood
    assert "360 ID and 200 OOD items" in ood and "OOD sets: built-in" in ood
    assert "energy: flag when score &gt; -4.25 (95% of ID kept, fitted on calibration split)" in ood
    assert "energy (chosen)" in ood and "<td>letters</td>" in ood and ">0.8123 / 0.5000<" in ood
    assert "<th>int8-dynamic: AUROC / FPR95</th>" in ood

    audit = _section(html, "<h2>Audit</h2>", "<h2>How this was measured</h2>")
    assert "0.0% exact, 4.2% exact or near of 360 test items have a twin in train" in audit
    assert "16 train and 3 test labels flagged; estimated error rate 1.1%" in audit
    assert "Flagged classes</th><td>0</td>" in audit and LIMITS in audit
    assert "Clean test items (neither leaked nor flagged)</th><td>340</td>" in audit
    assert "pixels" in audit and "[?, 1, 8, 8]" in audit and "0.0 to 1.0" in audit
    assert "list(range" not in audit and ", 339" not in audit  # the clean index list is counted, not listed

    suite = html.split("<h2>How this was measured</h2>", 1)[1].split("<h2>Lineage</h2>", 1)[0]
    assert "<td>robustness</td>" in suite and ">1.23<" in suite
    assert "385 items give a 5-point half-width" in suite
    assert "20% of train, stratified" in suite


def test_report_escapes_strings_from_audit_examples(fast_plots: None) -> None:
    ev = full_evidence()
    ev["caveats"].append(EVIL)
    ev["audit"]["model"]["scan"]["findings"] = [EVIL]
    html = render_report(ev)
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # two examples, a caveat, a finding


# ---------------------------------------------------------------------------------------------- card


def test_card_new_sections_and_values() -> None:
    text = render_model_card(full_evidence())
    for heading in (
        "## Calibration after temperature scaling",
        "## Per-class results",
        "## Robustness",
        "## Out-of-distribution detection",
        "## Data audit",
        "## Security",
        "## Governance mapping",
    ):
        assert heading in text
    assert "| int8-dynamic | 0.0400 \\[0.0100 – 0.0600\\] | 1.700 | 0.0130 \\[0.0050 – 0.0300\\] |" in text
    assert "| 3 | 36 | 0.9500 \\[0.8300 – 0.9900\\] | 0.6400 \\[0.5400 – 0.6900\\] |" in text
    assert "| 9 | 36 | undefined (never predicted) |" in text  # precision of a class never predicted
    assert "| gaussian\\_noise | 0.8600 | 0.7600 | 0.6600 | 0.5600 | 0.4600 | 0.7000 |" in text
    assert "**Accuracy on the clean test subset**" in text
    assert "0.9310 \\[0.9300 – 0.9700\\] on 340 items, 20 excluded (the baseline's: 0.9510)." in text
    assert "| Verdict | PASS |" in text and "| Flagged classes | 0 |" in text
    assert "| int8-dynamic | pixels | float32 | \\[?, 1, 8, 8\\] | 0.0 to 1.0 | required |" in text
    assert "| int8-dynamic | PASS | onnx | none |" in text
    assert ModelCard(text).data.model_name == "digits-cnn"  # front matter still valid for the hub
    assert front_matter(text)["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(0.94)


def test_card_caveats_next_to_accuracy() -> None:
    text = render_model_card(full_evidence())
    results = _section(text, "## Evaluation results", "### All candidates")
    head = results.split("| measurement |", 1)[0]  # before the first table
    assert "**Caveats on every accuracy figure in this card:**" in head
    assert f"- {LEAK_CAVEAT}" in head


def test_card_risks_from_audits() -> None:
    risk_text = risks_section(render_model_card(full_evidence()))
    assert "Train/test leakage: 0.0% exact, 4.2% exact or near" in risk_text
    assert "Label issues: 16 train and 3 test labels flagged" in risk_text
    assert "Label conflicts: 1 case(s) of identical inputs with different labels" in risk_text
    assert "The backdoor scans flag the training data of class(es) 0 (12 suspicious items)" in risk_text
    assert "The dataset's licence is not recorded" in risk_text
    ev = full_evidence()
    ev["audit"]["model"]["backdoor"]["flagged_classes"] = []
    ev["audit"]["model"]["scan"]["status"] = "FAIL"
    ev["audit"]["model"]["scan"]["findings"] = ["GLOBAL os.system"]
    found = risks(ev)
    assert any(r.startswith("The backdoor scans flagged no class; adaptive attacks can evade") for r in found)
    assert "The model file scan says FAIL: GLOBAL os.system." in found


def test_card_risks_group_unknown_checks_by_reason() -> None:
    ev = full_evidence()
    why = "no out-of-distribution set: give one with --ood-data"
    for name in ("ood.auroc", "ood.fpr95", "ood.auroc_drop"):
        ev["candidates"][2]["measurements"][name] = measure(name, None, reason=why).to_dict()
    ev["candidates"][2]["serving"]["ood"] = None
    found = risks(ev)
    assert (
        f"Unknown ({why}): ood.auroc, ood.auroc_drop, ood.fpr95; these checks fail closed in the gates."
        in found
    )
    text = render_model_card(ev)
    assert f"unknown ({why})" in _section(text, "## Out-of-distribution detection", "## Data audit")


# ---------------------------------------------------------------------------------------- governance


def test_governance_rows_follow_the_evidence() -> None:
    full = {r["evidence"] for r in governance_rows(load_evidence(full_evidence()))}
    assert len(full) == 13
    old = {r["evidence"] for r in governance_rows(load_evidence(classifier_evidence()))}
    assert not any(
        k.startswith(
            (
                "Corruption",
                "Adversarial",
                "Out-of-distribution",
                "Per-class",
                "Data audit",
                "Model file",
                "Input contract",
            )
        )
        for k in old
    )
    assert any(k.startswith("Efficiency") for k in old) and any(k.startswith("Data provenance") for k in old)
    ev = full_evidence()
    for c in ev["candidates"]:
        for name in [n for n in c["measurements"] if n.startswith("ood.")]:
            c["measurements"][name] = measure(name, None, reason="no OOD set").to_dict()
    assert not any(
        r["evidence"].startswith("Out-of-distribution") for r in governance_rows(load_evidence(ev))
    )  # unknown: no row


def test_card_governance_table_and_wording(full_html: str) -> None:
    text = render_model_card(full_evidence())
    gov = _section(text, "## Governance mapping", "## Limitations and risks")
    assert "it is not a conformity assessment" in gov
    assert (
        "| evidence in this run | supports NIST AI RMF 1.0 | supports ISO/IEC 42001:2023 Annex A (area) |"
        in gov
    )
    assert "| Out-of-distribution detection and the serving threshold | MEASURE 2.6:" in gov
    assert "MEASURE 2.11: fairness and bias" in gov and "MEASURE 2.12: environmental impact" in gov
    assert "A.7 (data for AI systems: data quality, provenance, preparation)" in gov
    assert "A.8 (information for interested parties)" in gov
    for body in (
        text.lower(),
        full_html.lower(),
        render_model_card(classifier_evidence()).lower(),
    ):
        assert "complies" not in body and "compliant" not in body


# --------------------------------------------------------------------------------- missing and unknown


AUDIT_ONLY = {"no-audit", "empty-audit", "skipped-audit", "odd-audit-parts", "odd-suite"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ev: ev.update(audit={}),
        lambda ev: ev.update(audit={"data": {}, "model": {}}),
        lambda ev: ev.update(
            audit={
                "data": {"status": "skipped", "reason": "the data audit was turned off"},
                "model": {"backdoor": {"status": "skipped", "reason": "needs labels"}},
            }
        ),
        lambda ev: ev["audit"]["data"].update(
            leakage=None,
            label_issues={"status": "skipped", "reason": "no labels"},
            balance="odd",
            outliers={"top": "x"},
        ),
        lambda ev: ev.update(suite={"seconds": {"x": "slow"}, "sample_sizes": {"y": 3}}),
        lambda ev: [c.update(serving=None) for c in ev["candidates"]],
        lambda ev: [
            c.update(
                serving={
                    "temperature": None,
                    "ood": {"threshold": None},
                    "input_contract": {"inputs": [None, {"shape": "?"}]},
                }
            )
            for c in ev["candidates"]
        ],
        lambda ev: [m.update(details={}) for c in ev["candidates"] for m in c["measurements"].values()],
        lambda ev: [
            m.update(
                details={
                    "table": {"x": "bad"},
                    "histogram": {"edges": [1], "id": "no"},
                    "per_class": [None, {"class": None}],
                    "attacks": [1],
                    "scores": {"msp": None},
                    "sets": {"a": 3},
                    "slices": "no",
                }
            )
            for c in ev["candidates"]
            for m in c["measurements"].values()
        ],
        lambda ev: [
            m.update(value=None, status="unknown", details={"reason": "too few samples"})
            for c in ev["candidates"]
            for m in c["measurements"].values()
        ],
    ],
    ids=[
        "no-audit",
        "empty-audit",
        "skipped-audit",
        "odd-audit-parts",
        "odd-suite",
        "no-serving",
        "odd-serving",
        "empty-details",
        "malformed-details",
        "all-unknown",
    ],
)
def test_missing_or_malformed_free_form_parts_render(mutate: Any, request: pytest.FixtureRequest) -> None:
    """Valid evidence whose free-form parts (audit, suite, serving rules, measurement details) are empty,
    odd or unknown still renders every section."""
    if request.node.callspec.id in AUDIT_ONLY:  # these change no plotted data: stub the plots
        request.getfixturevalue("fast_plots")
    ev = full_evidence()
    mutate(ev)
    html = render_report(ev)
    text = render_model_card(ev)
    assert "<h2>Robustness</h2>" in html and "## Robustness" in text
    ModelCard(text)


def test_skipped_audits_say_so(fast_plots: None) -> None:
    ev = full_evidence()
    ev["audit"] = {
        "data": {"status": "skipped", "reason": "the data audit was turned off"},
        "model": {"backdoor": {"status": "skipped", "reason": "needs labels"}},
    }
    html = render_report(ev)
    assert "The data audit was skipped: the data audit was turned off." in html
    assert (
        "skipped: needs labels" in html and "not measured (the evidence records no model file scan)" in html
    )
    assert (
        "the data audit did not run (the data audit was turned off): leakage and label errors were not checked"
        in html
    )
    text = render_model_card(ev)
    assert "The data audit did not run (the data audit was turned off): duplicates" in risks_section(text)


def test_evidence_without_new_sections_renders_not_measured() -> None:
    ev = classifier_evidence()
    html = render_report(ev)
    assert "No robustness check is in the evidence (not measured)." in html
    assert "No out-of-distribution check is in the evidence (not measured)." in html
    assert "The evidence records no data audit." in html
    # the only caveat: no data audit was recorded, so leakage and label errors were not checked
    assert "‡ Caveats on every accuracy figure" in html
    assert "the data audit did not run (not recorded in the evidence)" in html
    assert len(_images(html)) == 3
    text = render_model_card(ev)
    assert "Accuracy on the clean test subset: not measured." in text
    assert "No candidate has a fitted temperature in the evidence (not measured)." in text


def test_no_caveats_no_marker(fast_plots: None) -> None:
    ev = classifier_evidence()
    ev["audit"] = {"data": {"status": "ok"}, "model": {}}
    html = render_report(ev)
    assert "‡" not in html and "Caveats on every accuracy figure" not in html


def test_embedder_evidence_has_no_classifier_sections() -> None:
    ev = embedder_evidence()
    for i, c in enumerate(ev["candidates"]):
        c["measurements"]["robustness.perturbation_cosine"] = measure(
            "robustness.perturbation_cosine", 0.99 - 0.01 * i
        ).to_dict()
    html = render_report(ev)
    assert "<h2>Per-class</h2>" not in html and "<h2>Calibration</h2>" not in html
    assert "<th>Perturbation cosine (cosine)</th>" in html and ">0.9800<" in html
    assert "## Per-class results" not in render_model_card(ev)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda ev: ev.update(audit=["not", "a", "dict"]), r"audit: Input should be a valid dictionary"),
        (lambda ev: ev.update(caveats="one string"), r"caveats: Input should be a valid list"),
        (lambda ev: ev.pop("audit"), r"audit: Field required"),
        (lambda ev: ev["candidates"][1].pop("serving"), r"candidates\[1\]\.serving: Field required"),
        (
            lambda ev: ev["candidates"][1]["serving"].pop("temperature"),
            r"candidates\[1\]\.serving\.temperature: Field required",
        ),
        (
            lambda ev: ev["candidates"][1]["measurements"]["ood.auroc"].update(details=None),
            r"\['ood\.auroc'\]\.details: Input should be a valid dictionary",
        ),
    ],
    ids=["audit-list", "caveats-str", "no-audit", "no-serving", "serving-no-temperature", "null-details"],
)
def test_wrong_or_missing_sections_are_refused_in_one_line(mutate: Any, match: str) -> None:
    ev = full_evidence()
    mutate(ev)
    for render in (render_report, render_model_card):
        with pytest.raises(DataError, match=match) as info:
            render(ev)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ helpers


def test_md_table_escapes_cells() -> None:
    out = md_table({"header": ["a|b", "c"], "rows": [[EVIL, ""]]})
    assert out == "| a\\|b | c |\n| --- | --- |\n| &lt;script&gt;alert(1)&lt;/script&gt; | — |"
    assert md_table({"header": ["a"], "rows": []}, "nothing *here*") == "nothing \\*here\\*"


def test_new_plots_return_png_and_refuse_empty_data() -> None:
    assert plots.corruption_curves_png({"a": [(0, 0.9), (1, 0.8), (5, 0.3)]}).startswith(PNG_MAGIC)
    panel = {"edges": [0.0, 1.0, 2.0], "id": [3, 1], "ood": [0, 4], "threshold": 1.5, "score": "energy"}
    assert plots.ood_histograms_png({"a": panel, "b": panel}).startswith(PNG_MAGIC)
    assert plots.per_class_png(["0", "1"], {"base": [0.9, None], "cand": [0.8, 0.7]}).startswith(PNG_MAGIC)
    with pytest.raises(DataError, match="corruption_curves_png needs at least one"):
        plots.corruption_curves_png({"a": [(None, 0.5)]})
    with pytest.raises(DataError, match="ood_histograms_png needs at least one"):
        plots.ood_histograms_png({"a": {"edges": [0.0, 1.0], "id": [0], "ood": [0]}})
    with pytest.raises(DataError, match="per_class_png needs classes"):
        plots.per_class_png([], {"a": [0.5]})


def test_full_evidence_is_not_mutated_by_rendering() -> None:
    ev = full_evidence()
    before = copy.deepcopy(ev)
    render_report(ev)
    render_model_card(ev)
    assert ev == before


# ------------------------------------------------------------------ evidence from the evaluation itself


def test_sections_render_what_the_evaluation_functions_write() -> None:
    """The shapes the evaluation's own check functions write, on synthetic logits, fill every new section."""
    import numpy as np

    from modelyard.evaluate import calibration, compare, ood, robustness, slices

    rng = np.random.default_rng(0)
    n, k = 200, 4
    y = np.arange(n) % k
    base = rng.normal(size=(n, k)) + 4.0 * np.eye(k)[y]
    cand = base + rng.normal(scale=0.8, size=(n, k))
    corrupt = {
        c: {s: base + rng.normal(scale=s, size=(n, k)) for s in range(1, 6)} for c in ("noise", "blur")
    }
    corrupt_c = {
        c: {s: z + rng.normal(scale=0.5, size=(n, k)) for s, z in sev.items()} for c, sev in corrupt.items()
    }
    adv = {"fgsm": base - 3.0 * np.eye(k)[y], "pgd": base - 4.0 * np.eye(k)[y]}
    ood_sets = {
        "noise": rng.normal(size=(60, k)),
        "flat": np.zeros((60, k)) + rng.normal(scale=0.1, size=(60, k)),
    }
    ev = classifier_evidence()
    cands = [ev["candidates"][0], ev["candidates"][2]]
    cands[1]["parent"] = "baseline"  # its parent (onnx) is left out
    ev["candidates"], ev["pareto"] = cands, []
    for c, z, zc, advz in ((cands[0], base, corrupt, adv), (cands[1], cand, corrupt_c, adv)):
        ms: dict[str, Any] = {}
        ms.update(compare.paired_comparison(y, base, z, num_classes=k, n_resamples=200))
        ms.update(calibration.calibration_evidence(z[:100], y[:100], z, y))
        ms.update(slices.slice_evidence(y, base, z, num_classes=k, n_resamples=200))
        ms.update(slices.user_slice_evidence(y, base, z, {"half": np.where(np.arange(n) < 100, "a", "b")}))
        ms.update(robustness.corruption_evidence(y, base, z, corrupt, zc, n_resamples=200))
        preds = {p: sev[1].argmax(1) for p, sev in zc.items()}
        ms.update(robustness.consistency_evidence(base.argmax(1), preds, z.argmax(1), preds, n_resamples=200))
        ms.update(
            robustness.adversarial_evidence(
                y,
                base,
                adv,
                z,
                advz,
                epsilon=0.1,
                epsilon_text="0.1 (input units)",
                steps=10,
                n_resamples=200,
            )
        )
        oms, rule = ood.ood_evidence(base, ood_sets, z, ood_sets, logits_val_cand=z[:100], n_resamples=200)
        ms.update(oms)
        c["measurements"].update({name: m.to_dict() for name, m in ms.items()})
        c["serving"] = {
            "temperature": ms["calibration.temperature"].value,
            "ood": rule,
            "input_contract": {},
        }
    html = render_report(ev)
    text = render_model_card(ev)
    for part in (
        _section(html, "<h2>Calibration</h2>", "<h2>Audit</h2>"),
        _section(text, "## Calibration after temperature scaling", "## Data audit"),
    ):
        assert "unknown" not in part and "not recorded" not in part
    assert len(_images(html)) == 7
    assert "(chosen)" in html and "<td>flat</td>" in html and "fitted on calibration split" in html
    assert "Consistency per perturbation" in html and "ε = 0.1 (input units), 10 PGD steps" in html
    assert "<td>half</td>" in html and "Per class: int8-dynamic" in html


def test_per_class_bars_compare_the_baseline_with_the_champion_when_many() -> None:
    from modelyard.report.sections import per_class_series

    ev = full_evidence()
    classes, series, note = per_class_series(load_evidence(ev))
    assert classes == CLASSES and list(series) == ["baseline", "onnx", "int8-dynamic", "int8-static"]
    assert series["int8-dynamic"][3] == pytest.approx(0.64) and note == ""
    extra = copy.deepcopy(ev["candidates"][1])
    extra["name"] = "fp16"
    ev["candidates"].append(extra)
    classes, series, _ = per_class_series(load_evidence(ev))
    assert list(series) == ["baseline", "int8-dynamic"]  # four candidates: the champion only


def test_worst_table_has_slice_columns_only_when_slices_were_declared() -> None:
    from modelyard.report.sections import worst_table

    ev = full_evidence()
    t = worst_table(load_evidence(ev))
    assert t["header"][-2:] == ["worst-slice drop (points)", "slice"]
    assert t["rows"][2][-1] == "writer = left-handed"
    for c in ev["candidates"]:
        c["measurements"].pop("slices.worst_slice_drop")
    t = worst_table(load_evidence(ev))
    assert t["header"][-1] == "class" and all(len(r) == 5 for r in t["rows"])


def test_a_check_unknown_for_every_candidate_is_one_sentence(fast_plots: None) -> None:
    ev = full_evidence()
    why = "no out-of-distribution set: give one with --ood-data"
    for c in ev["candidates"]:
        for name in ("ood.auroc", "ood.fpr95", "ood.auroc_drop"):
            if name in c["measurements"]:
                c["measurements"][name] = measure(name, None, reason=why, n_id=360).to_dict()
    html = _section(render_report(ev), "<h2>Out-of-distribution</h2>", "<h2>Audit</h2>")
    assert f'<p class="unknown">Unknown for every candidate: {why}.</p>' in html
    assert "<table>" not in html and "Score:" not in html
    text = _section(render_model_card(ev), "## Out-of-distribution detection", "## Data audit")
    assert text.strip() == f"Unknown for every candidate: {why}."
