"""Property-based API tests: schemathesis generates requests (valid and invalid) for every operation in the
app's own /openapi.json and checks that none gets a 5xx answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from modelyard.registry import Registry
from modelyard.serve.app import create_app
from tests.helpers.serving import DEADLINE_S, build_blobs_registry, settings_for

EXAMPLES_PER_MODE = 100


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path]) -> Registry:
    return build_blobs_registry(tmp_path_factory.mktemp("schema-home"), onnx_classifier)


@pytest.fixture
def api_schema(registry: Registry) -> Any:
    """The in-process app's schema; schemathesis runs the app's lifespan, and the test waits for the models."""
    app = create_app(settings_for(registry, cache_items=16), registry=registry)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert app.state.serve.loaded.wait(DEADLINE_S) and app.state.serve.ready, app.state.serve.load_error
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors(api_schema: Any, mode: GenerationMode) -> None:
    operations = {op.ok().label for op in api_schema.get_all_operations()}
    assert "POST /v2/models/{name}/infer" in operations and "POST /predict" in operations

    @given(case=api_schema.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def no_5xx(case: Any) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    no_5xx()
