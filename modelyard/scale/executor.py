"""The executor interface ``run_pipeline`` uses to build candidates and run their deterministic checks.

Without one (``executor=None``) the pipeline does both here, one after another;
``modelyard.scale.ray_runner.RayExecutor`` does them as Ray tasks. Timing checks (efficiency, memory) always
run in the driver process, on the machine that serves the candidate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from modelyard.candidate import Candidate
    from modelyard.config import Policy
    from modelyard.data.dataset import Dataset
    from modelyard.evaluate.run import MapChecks
    from modelyard.evaluate.suite import Progress


class Executor(Protocol):
    def build_candidates(
        self,
        baseline: Candidate,
        dataset: Dataset,
        recipes: list[str],
        workdir: Path,
        *,
        policy: Policy,
        threads: int | None,
        progress: Progress,
    ) -> tuple[list[Candidate], list[dict[str, str]]]:
        """Apply every recipe (as ``modelyard.pipeline.build_candidates``, same order, same results)."""
        ...

    @property
    def map_checks(self) -> MapChecks | None:
        """How ``evaluate_candidates`` runs ``check_candidate`` over the candidates (None: here)."""
        ...

    def describe(self) -> dict[str, Any] | None:
        """What the evidence's ``suite.executor`` records (None: nothing, a local run)."""
        ...
