"""Where the pipeline's work runs: here (the default) or on a Ray cluster (``modelyard optimize --ray``).

Nothing here imports Ray until a Ray executor is asked for."""

from modelyard.scale.executor import Executor

__all__ = ["Executor"]
