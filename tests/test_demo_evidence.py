"""Every demo's evidence.json validates against the JSON Schema shipped in the package (the digits demo is
checked in test_e2e, which runs it whole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.cli import main
from tests.helpers.json_schema import assert_valid_against_shipped_schema


@pytest.mark.slow
@pytest.mark.parametrize("demo", ["minilm", "tabular"])
def test_demo_evidence_validates_against_the_shipped_json_schema(
    demo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", demo, "--quick", "--home", str(tmp_path), "-r", "onnx"])
    out = capsys.readouterr()
    assert code in (0, 1), out.err  # 1: no candidate passed, still a complete run with its evidence
    (evidence,) = (tmp_path / "runs").glob("*/evidence.json")
    assert_valid_against_shipped_schema(evidence)


def test_the_shipped_schema_catches_what_it_should(tmp_path: Path) -> None:
    import json

    from tests.helpers.evidence import classifier_evidence

    good = tmp_path / "good.json"
    good.write_text(json.dumps(classifier_evidence()))
    assert_valid_against_shipped_schema(good)
    bad = classifier_evidence()
    bad["candidates"][0]["measurements"]["quality.accuracy"]["value"] = "0.9"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(AssertionError, match=r"quality\.accuracy"):
        assert_valid_against_shipped_schema(path)
