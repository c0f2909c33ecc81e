"""MLflow as the registry backend (``MODELYARD_REGISTRY=mlflow+<tracking uri>``, read by
:class:`modelyard.config.Settings`; :func:`open_registry` gives the registry the settings ask for).

:class:`MlflowRegistry` is the SQLite registry, which stays the record, mirrored to an MLflow tracking server:

- every registered candidate is logged as an MLflow run in the experiment ``modelyard-<model>``: params from
  its lineage (candidate, parent, format, passes and their configs, hashes, our run id), metrics from its
  Evidence (each measurement's value under its dotted name, and ``verdict.passed``), the version's files under
  ``model/`` and the run's report, model card and ``evidence.json`` as artifacts; then registered as a
  version of the MLflow registered model of the same name. The MLflow run id and version number go into our
  version's manifest (``meta["mlflow"]``) before our transaction commits;
- ``champion`` (any alias) is an MLflow alias: registering with a champion, :meth:`promote` and
  :meth:`rollback` move ours, then MLflow's. MLflow keeps no history of alias moves; our audit log does, and
  each move's reason ends with the MLflow version it points at (``[MLflow <model> v<N>]``);
- :meth:`sync_aliases` sets MLflow's aliases to ours (after a move made elsewhere, e.g. a rollout's, or when
  MLflow was unreachable during a move).

Nothing imports ``mlflow`` unless the environment asks for this backend. MLflow is the optional
``modelyard[mlflow]`` extra. Set ``MLFLOW_DISABLE_TELEMETRY=true`` to keep MLflow's client from reporting
usage.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError, RegistryError, first_line
from modelyard.registry.entries import VersionEntry, validate_entries
from modelyard.registry.store import Registry

if TYPE_CHECKING:
    from modelyard.config import Settings

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "modelyard-"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
RUN_OUTPUTS = ("report.html", "MODEL_CARD.md", "evidence.json")


def open_registry(settings: Settings) -> Registry:
    """The registry ``settings`` ask for: :class:`MlflowRegistry` with an MLflow tracking URI, else the plain one."""
    if settings.mlflow_tracking_uri:
        return MlflowRegistry(settings.home, settings.mlflow_tracking_uri)
    return Registry(settings.home)


def mlflow_note(model: str, version: int | str) -> str:
    """What an audit-log reason ends with when MLflow mirrors the move."""
    return f"[MLflow {model} v{version}]"


class MlflowRegistry(Registry):
    """The registry mirrored to MLflow at ``tracking_uri`` (see the module docstring)."""

    def __init__(self, home: Path, tracking_uri: str) -> None:
        super().__init__(home)
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def __repr__(self) -> str:
        return f"MlflowRegistry({str(self.home)!r}, {self.tracking_uri!r})"

    @property
    def client(self) -> Any:
        """MLflow's client for the tracking URI (mlflow is imported here, on first use)."""
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise ConfigError(
                    "MODELYARD_REGISTRY asks for MLflow but mlflow is not installed; pip install 'modelyard[mlflow]' "
                    "or unset MODELYARD_REGISTRY"
                ) from None
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise RegistryError(
                f"MLflow at {self.tracking_uri} failed to {what}: {first_line(exc)}"
            ) from None

    # ----------------------------------------------------------------------------------- writes

    def register_run(
        self,
        model: str,
        entries: list[VersionEntry],
        *,
        run_id: str,
        champion: str | None,
        reason: str,
        **kwargs: Any,
    ) -> dict[str, int]:
        """Log each entry as an MLflow run and model version, then register the run in our registry with the
        MLflow ids in each manifest; on a failure of ours the MLflow versions just made are deleted."""
        validate_entries(entries, champion)  # bad input is refused before MLflow sees anything
        self._check_new_run_id(run_id)
        created: dict[str, dict[str, Any]] = {}
        try:
            for entry in entries:
                created[entry.name] = self._log_entry(model, entry, run_id=run_id)
        except BaseException:
            self._discard(model, created)
            raise
        mirrored = [_with_mlflow(entry, created[entry.name]) for entry in entries]
        moves = champion is not None and kwargs.get("move_champion", True)
        if moves and champion in created:
            reason = f"{reason} {mlflow_note(model, created[champion]['model_version'])}"
        try:
            numbers = super().register_run(
                model, mirrored, run_id=run_id, champion=champion, reason=reason, **kwargs
            )
        except BaseException:
            self._discard(model, created)
            raise
        for name, ids in created.items():
            self._call(
                "tag a model version",
                self.client.set_model_version_tag,
                model,
                ids["model_version"],
                "modelyard.version",
                str(numbers[name]),
            )
        if moves and champion is not None:
            self._set_alias(model, "champion", created[champion]["model_version"])
        return numbers

    def promote(self, model: str, version: int, *, alias: str = "champion", reason: str) -> None:
        """Point ``alias`` at ``version`` in our registry (the audit log names the MLflow version), then in MLflow."""
        mv = self.mlflow_version(model, version)
        super().promote(model, version, alias=alias, reason=f"{reason} {mlflow_note(model, mv)}")
        self._set_alias(model, alias, mv)

    def rollback(self, model: str, *, alias: str = "champion", reason: str) -> int:
        """Roll ``alias`` back in our registry (the audit log names the MLflow version), then in MLflow."""
        target = self.rollback_target(model, alias=alias)
        note = "" if target is None else f" {mlflow_note(model, self.mlflow_version(model, target))}"
        version = super().rollback(model, alias=alias, reason=f"{reason}{note}")
        if version != target:  # the alias moved in between; MLflow still follows our registry
            log.warning("%s@%s rolled back to v%s, not the v%s expected", model, alias, version, target)
        self._set_alias(model, alias, self.mlflow_version(model, version))
        return version

    def aliases_moved(self, model: str) -> None:
        """A rollout moved an alias in our registry: MLflow's follow (a failure is logged; our registry and its
        audit log stay the record, and ``sync_aliases`` can re-align later)."""
        try:
            self.sync_aliases(model)
        except Exception as exc:  # the mirror never fails the move that already happened
            log.warning("could not mirror %s's aliases to MLflow at %s: %s", model, self.tracking_uri, exc)

    def sync_aliases(self, model: str) -> dict[str, str]:
        """Set every alias of ``model`` in MLflow to the version it has in our registry; returns {alias: MLflow
        version}."""
        aliases = next((m["aliases"] for m in self.list_models() if m["name"] == model), None)
        if aliases is None:
            raise RegistryError(f"unknown model {model!r}; nothing to sync")
        out = {}
        for alias, version in sorted(aliases.items()):
            out[alias] = self.mlflow_version(model, int(version))
            self._set_alias(model, alias, out[alias])
        return out

    # ----------------------------------------------------------------------------------- reads

    def mlflow_version(self, model: str, version: int) -> str:
        """The MLflow model version registered with our ``version`` (RegistryError when it has none)."""
        meta = self.get_version(model, version)["manifest"].get("meta") or {}
        mv = (meta.get("mlflow") or {}).get("model_version")
        if mv is None:
            raise RegistryError(
                f"{model}:{version} has no MLflow model version (registered without MODELYARD_REGISTRY=mlflow+...); "
                "register it again under MLflow, or unset MODELYARD_REGISTRY to move the alias in our registry only"
            )
        return str(mv)

    # ----------------------------------------------------------------------------------- plumbing

    def _check_new_run_id(self, run_id: str) -> None:
        with self._connect(write=False) as conn:
            self._check_new_run(conn, run_id)

    def _experiment_id(self, model: str) -> str:
        name = EXPERIMENT_PREFIX + model
        exp = self._call("read an experiment", self.client.get_experiment_by_name, name)
        if exp is not None:
            return str(exp.experiment_id)
        return str(self._call("create an experiment", self.client.create_experiment, name))

    def _log_entry(self, model: str, entry: VersionEntry, *, run_id: str) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        run = self._call(
            "create a run",
            client.create_run,
            self._experiment_id(model),
            run_name=f"{run_id}/{entry.name}",
            tags={"modelyard.run_id": run_id, "modelyard.candidate": entry.name},
        )
        mlflow_run = run.info.run_id
        ids: dict[str, Any] = {"run_id": mlflow_run}
        try:
            now_ms = int(time.time() * 1000)
            params = [Param(k, v) for k, v in _params(entry, run_id).items()]
            metrics = [Metric(k, v, now_ms, 0) for k, v in _metrics(entry).items()]
            for chunk in _chunks(params, 100):
                self._call("log params", client.log_batch, mlflow_run, params=chunk)
            for chunk in _chunks(metrics, 1000):
                self._call("log metrics", client.log_batch, mlflow_run, metrics=chunk)
            if entry.evidence is not None:
                passed = "true" if entry.evidence.verdict.passed else "false"
                self._call(
                    "tag a run", client.log_batch, mlflow_run, tags=[RunTag("modelyard.passed", passed)]
                )
            with tempfile.TemporaryDirectory(prefix="modelyard-mlflow-") as tmp:
                for rel, path in entry.files.items():  # laid out under the names the registry keeps
                    (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, Path(tmp) / rel)
                self._call("log the model files", client.log_artifacts, mlflow_run, tmp, "model")
            for path in self._run_outputs(run_id):
                self._call("log an artifact", client.log_artifact, mlflow_run, str(path), "run")
            self._call("end a run", client.set_terminated, mlflow_run, "FINISHED")
            self._ensure_registered_model(model)
            mv = self._call(
                "create a model version",
                client.create_model_version,
                model,
                f"{run.info.artifact_uri}/model",
                run_id=mlflow_run,
                tags={"modelyard.run_id": run_id, "modelyard.candidate": entry.name},
            )
        except BaseException:
            self._fail_run(mlflow_run)
            raise
        ids["model_version"] = str(mv.version)
        ids["tracking_uri"] = self.tracking_uri
        return ids

    def _run_outputs(self, run_id: str) -> list[Path]:
        """The run's report, card and evidence: written by the pipeline before it registers, in its staging
        folder (``runs/.<id>.partial``), or already in ``runs/<id>``."""
        for folder in (self.home / "runs" / f".{run_id}.partial", self.home / "runs" / run_id):
            found = [folder / name for name in RUN_OUTPUTS if (folder / name).is_file()]
            if found:
                return found
        return []

    def _ensure_registered_model(self, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(model)
        except MlflowException:
            self._call("create a registered model", self.client.create_registered_model, model)

    def _set_alias(self, model: str, alias: str, mlflow_version: str) -> None:
        try:
            self.client.set_registered_model_alias(model, alias, mlflow_version)
        except Exception as exc:
            raise RegistryError(
                f"{model}@{alias} moved in our registry (the audit log has it) but MLflow at {self.tracking_uri} "
                f"did not follow: {first_line(exc)}; run sync_aliases({model!r}) once MLflow answers"
            ) from None

    def _fail_run(self, mlflow_run: str) -> None:
        try:
            self.client.set_terminated(mlflow_run, "FAILED")
        except Exception as exc:  # the failure being handled matters more
            log.warning("could not mark MLflow run %s failed: %s", mlflow_run, first_line(exc))

    def _discard(self, model: str, created: Mapping[str, Mapping[str, Any]]) -> None:
        """Undo the MLflow side of a registration that did not happen in our registry."""
        for ids in created.values():
            try:
                self.client.delete_model_version(model, ids["model_version"])
                self.client.set_terminated(ids["run_id"], "FAILED")
            except Exception as exc:
                log.warning(
                    "could not remove MLflow %s v%s after a failed registration: %s",
                    model,
                    ids["model_version"],
                    first_line(exc),
                )


def _with_mlflow(entry: VersionEntry, ids: Mapping[str, Any]) -> VersionEntry:
    manifest = json.loads(json.dumps(entry.manifest))
    manifest.setdefault("meta", {})["mlflow"] = dict(ids)
    return VersionEntry(
        name=entry.name,
        files=entry.files,
        manifest=manifest,
        evidence=entry.evidence,
        parent=entry.parent,
        passes=entry.passes,
        data_sha256=entry.data_sha256,
        artifact_sha256=entry.artifact_sha256,
    )


def _params(entry: VersionEntry, run_id: str) -> dict[str, str]:
    """MLflow params from an entry's lineage."""
    out = {
        "modelyard.run_id": run_id,
        "candidate": entry.name,
        "parent": entry.parent or "",
        "format": str(entry.manifest.get("format", "")),
        "passes": " > ".join(str(p.get("pass")) for p in entry.passes) or "(baseline)",
        "artifact_sha256": entry.artifact_sha256,
        "data_sha256": entry.data_sha256,
    }
    for i, step in enumerate(entry.passes):
        config = json.dumps(step.get("config", {}), sort_keys=True, default=str)
        out[f"pass.{i}.{step.get('pass')}"] = config[:MAX_PARAM_CHARS]
    return out


def _metrics(entry: VersionEntry) -> dict[str, float]:
    """MLflow metrics from an entry's Evidence: each measured value, and the verdict as 1 or 0."""
    if entry.evidence is None:
        return {}
    out = {name: float(m.value) for name, m in entry.evidence.measurements.items() if m.value is not None}
    out["verdict.passed"] = 1.0 if entry.evidence.verdict.passed else 0.0
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
