"""modelyard: ship a trained model cheaply and safely.

The public surface is re-exported here; everything else is internal and may change.
"""

from modelyard._version import __version__
from modelyard.candidate import Candidate
from modelyard.config import Policy, Settings, load_policy
from modelyard.data.dataset import Dataset
from modelyard.data.loaders import load_dataset
from modelyard.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    GateFailed,
    ModelyardError,
    PassSkipped,
    RegistryError,
    UnsafeModelError,
)
from modelyard.evaluate.evidence import Measurement
from modelyard.evaluate.run import EvalOptions
from modelyard.optimize.baseline import load_baseline
from modelyard.optimize.recipes import available_passes, parse_recipe
from modelyard.pipeline import RunResult, run_pipeline
from modelyard.registry import Registry
from modelyard.runtime.base import Runner, RunnerSpec, TensorSpec
from modelyard.security import scan_file
from modelyard.zoo.demos import load_demo

__all__ = [
    "ArtifactError",
    "Candidate",
    "ConfigError",
    "DataError",
    "Dataset",
    "EvalOptions",
    "GateFailed",
    "Measurement",
    "ModelyardError",
    "PassSkipped",
    "Policy",
    "Registry",
    "RegistryError",
    "RunResult",
    "Runner",
    "RunnerSpec",
    "Settings",
    "TensorSpec",
    "UnsafeModelError",
    "__version__",
    "available_passes",
    "load_baseline",
    "load_dataset",
    "load_demo",
    "load_policy",
    "parse_recipe",
    "run_pipeline",
    "scan_file",
]
