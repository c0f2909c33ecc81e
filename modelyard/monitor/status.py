"""The status of every served version in a home folder: the prediction log's versions, each watched against
the monitor reference it was registered with (what ``modelyard monitor status`` shows)."""

from __future__ import annotations

from pathlib import Path

from modelyard.errors import DataError, ModelyardError, first_line
from modelyard.monitor.log import PredictionLog, default_path
from modelyard.monitor.reference import FILE_NAME, MonitorReference
from modelyard.monitor.reference_load import load_reference
from modelyard.monitor.watch import DEFAULT_WINDOW, MonitorStatus, watch
from modelyard.registry import Registry

__all__ = ["monitor_status", "reference_for"]


def reference_for(registry: Registry, model: str, version: int) -> MonitorReference:
    """The monitor reference stored with ``model:version``; DataError when it has none (registered before
    references existed) or the stored file does not load."""
    info = registry.get_version(model, version)
    stored = next((f for f in info["files"] if f["path"] == FILE_NAME), None)
    if stored is None:
        raise DataError(
            f"{model}:{version} has no monitor reference (registered by an older release); re-register the "
            "model to watch it"
        )
    return load_reference(registry.artifacts.path_for(stored["sha256"]))


def monitor_status(
    home: Path | str,
    name: str | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
    db: Path | str | None = None,
) -> list[MonitorStatus]:
    """One status per served version of ``name`` (every model when None) in the prediction log of ``home``
    (or ``db``): its last ``window`` requests against its reference at false-alarm rate ``alpha``. A version
    without a usable reference gets a status without checks, saying why. DataError when there is no log, or
    ``name`` has no logged version."""
    home = Path(home)
    log = PredictionLog(db if db is not None else default_path(home))
    if not log.path.exists():
        raise DataError(
            f"no prediction log at {log.path}: serve a model with monitoring on (the default) and send it "
            "requests first"
        )
    served = log.versions()
    if name is not None:
        known = sorted({v.model for v in served})
        served = [v for v in served if v.model == name]
        if not served:
            raise DataError(
                f"model {name!r} has no logged requests in {log.path}; logged models: "
                f"{', '.join(known) if known else 'none yet'}"
            )
    registry = Registry(home)
    out = []
    for v in served:
        try:
            reference = reference_for(registry, v.model, int(v.version))
        except (ModelyardError, ValueError) as exc:
            preds = log.window(v.model, version=v.version, last_n=window)
            out.append(
                MonitorStatus(
                    model=v.model,
                    version=v.version,
                    window=window,
                    requests=len(preds),
                    rows=sum(p.rows for p in preds),
                    first_unix_s=preds[0].at_unix_s if preds else None,
                    last_unix_s=preds[-1].at_unix_s if preds else None,
                    alpha=alpha,
                    signals=(),
                    alarms=(),
                    notes=(f"not watched: {first_line(exc)}",),
                )
            )
            continue
        out.append(watch(log, reference, model=v.model, version=v.version, window=window, alpha=alpha))
    return out
