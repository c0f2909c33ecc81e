"""Validate a file against the JSON Schema shipped in the package, with a validator that is not pydantic
(jsonschema-rs), so the schema file itself is what is checked."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs

from modelyard.evaluate.schema import SCHEMA_FILE


def assert_valid_against_shipped_schema(path: Path) -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in validator.iter_errors(json.loads(path.read_text()))
    ]
    assert not errors, errors[:5]
