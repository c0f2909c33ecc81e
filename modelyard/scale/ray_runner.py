"""Build candidates and run their deterministic checks as Ray tasks (``modelyard optimize --ray``).

``auto`` starts a Ray instance on this machine for the run (bound to 127.0.0.1, no dashboard, stopped at the
end); any other value is the address of a running cluster (``ray://...`` or ``HOST:PORT``), which must see
the run's home folder at the same path (candidate files are written there). Recipes sharing a first step are
built in one task (a shared prefix is built once, as locally); each candidate's checks are one task. Every
task declares its CPUs (``num_cpus``) and sets ONNX Runtime's and torch's threads to them (Ray workers get
``OMP_NUM_THREADS=1``). The dataset goes into the object store once. Timing checks (efficiency, memory) run
in the driver after the tasks, on the machine that serves the candidate; the evidence says so in
``suite.executor``."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import ConfigError, ModelyardError, first_line

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.config import Policy
    from modelyard.data.dataset import Dataset
    from modelyard.evaluate.run import CheckInputs, CheckResult, MapChecks
    from modelyard.evaluate.suite import Progress

TIMING_WHERE = "the driver (the machine that serves the candidate), after the Ray tasks"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'modelyard[ray]'") from None
    return ray


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def _as_strided(arr: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(arr, shape=arr.shape, strides=strides)


def _dumps(value: Any) -> bytes:
    """``value`` pickled for the object store with every array's exact layout. Pickle drops the strides of
    an array's length-1 axes, and torch picks its convolution's memory format (so its rounding) from them:
    a contiguous array with other strides is sent with its own."""
    from ray import cloudpickle

    class KeepStrides(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            if (
                isinstance(obj, np.ndarray)
                and obj.dtype != object
                and obj.flags.c_contiguous
                and obj.strides != _c_strides(obj.shape, obj.itemsize)
            ):
                return _as_strided, (np.ascontiguousarray(obj).copy(), obj.strides)
            return super().reducer_override(obj)  # type: ignore[no-untyped-call]

    buf = io.BytesIO()
    pickler: Any = KeepStrides  # cloudpickle is untyped
    pickler(buf, protocol=5).dump(value)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    """A private copy of what ``_dumps`` sent (writable arrays laid out as in the driver)."""
    return pickle.loads(data)


def _set_threads(cpus: int) -> None:
    """A Ray worker runs with OMP_NUM_THREADS=1: use the CPUs the task declared."""
    import torch

    torch.set_num_threads(cpus)


def _build_group(
    baseline: Candidate,
    dataset: bytes,
    recipes: list[str],
    workdir: str,
    policy: Policy,
    cpus: int,
    threads: int | None,
) -> tuple[list[Candidate], list[dict[str, str]]]:
    from modelyard.pipeline import build_candidates

    _set_threads(cpus)
    data: Dataset = _loads(dataset)
    return build_candidates(baseline, data, recipes, Path(workdir), policy=policy, threads=threads or cpus)


def _check_one(shared: bytes, dataset: bytes, cand: Candidate, cpus: int) -> CheckResult:
    from dataclasses import replace

    from modelyard.evaluate.run import check_candidate

    _set_threads(cpus)
    inputs: CheckInputs = _loads(shared)
    own = replace(inputs, dataset=_loads(dataset), threads=inputs.threads or cpus)
    return check_candidate(own, cand)


class RayExecutor:
    """Run the pipeline's builds and deterministic checks as Ray tasks of ``cpus_per_task`` CPUs each."""

    def __init__(self, ray: Any, *, address: str, cpus_per_task: int = 1, threads: int | None = None) -> None:
        self.ray = ray
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.threads = threads  # MODELYARD_THREADS, when set, wins over the task's CPUs
        self._dataset: tuple[int, Any] | None = None
        self.startup_s = 0.0  # how long ray.init took
        self._build = ray.remote(_build_group)
        self._check = ray.remote(_check_one)

    def _dataset_ref(self, dataset: Dataset) -> Any:
        """The dataset in the object store, put once per run."""
        if self._dataset is None or self._dataset[0] != id(dataset):
            self._dataset = (id(dataset), self.ray.put(_dumps(dataset)))
        return self._dataset[1]

    def _gather(self, refs: list[Any], labels: list[str], progress: Progress, what: str) -> list[Any]:
        """Every task's result in the order of ``refs``; progress reported as each finishes."""
        pending = {ref: label for ref, label in zip(refs, labels, strict=True)}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                progress(f"{pending.pop(done[0])}: {what} on Ray", 1.0)
            return list(self.ray.get(refs))
        except self.ray.exceptions.RayError as exc:
            raise ModelyardError(f"a Ray task failed: {first_line(exc, limit=300)}") from None

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
        from modelyard.optimize.recipes import parse_recipe
        from modelyard.pipeline import _step_label

        order: dict[str, tuple[int, int]] = {}  # prefix -> where a local run first builds it
        groups: dict[str, list[str]] = {}
        for i, recipe in enumerate(recipes):
            parse_recipe(recipe)  # every recipe is checked before any task starts
            labels = [_step_label(s) for s in recipe.split(">")]
            for j in range(len(labels)):
                order.setdefault(">".join(labels[: j + 1]), (i, j))
            groups.setdefault(labels[0], []).append(recipe)
        data = self._dataset_ref(dataset)
        cpus = self.cpus_per_task
        refs = [
            self._build.options(num_cpus=cpus).remote(
                baseline, data, group, str(workdir), policy, cpus, threads or self.threads
            )
            for group in groups.values()
        ]
        for first in groups:
            progress(f"{first}: building on Ray", 0.0)
        results = self._gather(refs, list(groups), progress, "built")
        cands = [c for made, _ in results for c in made]
        skipped = [s for _, skips in results for s in skips]
        cands.sort(key=lambda c: order[c.name])
        skipped.sort(key=lambda s: recipes.index(s["recipe"]))
        return cands, skipped

    def _map(self, shared: CheckInputs, cands: list[Candidate], progress: Progress) -> list[CheckResult]:
        from dataclasses import replace

        data = self._dataset_ref(shared.dataset)
        # the dataset travels once (its own object); the rest of what the checks share is put once here
        rest = self.ray.put(_dumps(replace(shared, dataset=None)))  # type: ignore[arg-type]
        cpus = self.cpus_per_task
        refs = [self._check.options(num_cpus=cpus).remote(rest, data, c, cpus) for c in cands]
        for c in cands:
            progress(f"{c.name}: checks on Ray", 0.0)
        return self._gather(refs, [c.name for c in cands], progress, "checked")

    @property
    def map_checks(self) -> MapChecks | None:
        return self._map

    def describe(self) -> dict[str, Any] | None:
        return {
            "kind": "ray",
            "address": self.address,
            "ray_version": str(self.ray.__version__),
            "cpus_per_task": self.cpus_per_task,
            "remote": "candidate builds and deterministic checks",
            "timing_checks_on": TIMING_WHERE,
        }


@contextlib.contextmanager
def ray_executor(
    address: str, *, num_cpus: int | None = None, cpus_per_task: int = 1, threads: int | None = None
) -> Iterator[RayExecutor]:
    """A RayExecutor on a local Ray started for the run (``auto``; ``num_cpus`` CPUs, default all) or on the
    cluster at ``address``; Ray is shut down (and a local instance's files removed) at the end."""
    address = address.strip()
    if not address:
        raise ConfigError("--ray needs 'auto' or a Ray cluster address (ray://HOST:PORT or HOST:PORT)")
    if cpus_per_task < 1:
        raise ConfigError(f"CPUs per Ray task must be at least 1, got {cpus_per_task}")
    ray = _import_ray()
    if ray.is_initialized():
        raise ConfigError("Ray is already initialized in this process")
    temp_dir = None
    t0 = time.perf_counter()
    try:
        if address == "auto":
            # a short private folder: Ray's socket paths must stay under the OS limit
            temp_dir = tempfile.mkdtemp(prefix="myray-", dir="/tmp")
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_cpus=num_cpus or os.cpu_count() or 1,
                _temp_dir=temp_dir,
                log_to_driver=False,
                logging_level="WARNING",
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except ModelyardError:
        raise
    except Exception as exc:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise ConfigError(f"cannot start or reach Ray at {address!r}: {first_line(exc, limit=300)}") from None
    executor = RayExecutor(ray, address=address, cpus_per_task=cpus_per_task, threads=threads)
    executor.startup_s = round(time.perf_counter() - t0, 3)
    try:
        yield executor
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
