"""What a run hands to the registry (``VersionEntry``), its checks before anything is written, and the typed
evidence a version keeps (``modelyard.evaluate.schema.VersionEvidence``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import RegistryError
from modelyard.evaluate.schema import VersionEvidence
from modelyard.registry.artifacts import check_relpath
from modelyard.security.trust import check_record

log = logging.getLogger(__name__)


@dataclass
class VersionEntry:
    """One candidate of a run, as handed to :meth:`Registry.register_run`.

    ``files`` maps a relative '/'-separated path inside the artifact to the file on disk.
    ``parent`` is the name of another entry of the same run (None for the baseline).
    """

    name: str
    files: dict[str, Path]
    manifest: dict[str, Any]
    evidence: VersionEvidence | None = None  # None: registered without evidence (e.g. by hand)
    parent: str | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    data_sha256: str = ""
    artifact_sha256: str = ""


def evidence_of(model: str, version: int, raw: str) -> VersionEvidence | None:
    """The typed evidence stored with a version; None when it was registered without any. A stored row that
    does not validate (written by hand, or by a release with another shape) is reported and read as None."""
    data = json.loads(raw)
    if not data:
        return None
    try:
        return VersionEvidence.model_validate(data)
    except ValueError as exc:
        log.warning("%s v%s: its stored evidence does not validate, read as none: %s", model, version, exc)
        return None


def _to_json(what: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RegistryError(
            f"{what} is not plain JSON ({e}); convert it to dicts, lists, str and finite numbers"
        ) from e


def _check_trust(entry: VersionEntry) -> None:
    """A trust record in a manifest (``meta["trust"]``) must be well formed: it is what lets the server load a
    pickle-based or factory-built version (see :mod:`modelyard.security.trust`)."""
    meta = entry.manifest.get("meta") if isinstance(entry.manifest, dict) else None
    if isinstance(meta, dict) and "trust" in meta:
        check_record(meta["trust"], label=f"candidate {entry.name!r}")


def trust_of(manifest: Any) -> dict[str, Any] | None:
    meta = manifest.get("meta") if isinstance(manifest, dict) else None
    record = meta.get("trust") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def validate_entries(entries: list[VersionEntry], champion: str | None) -> list[tuple[str, str, str]]:
    """Check a run's entries before anything is written; returns their (manifest, evidence, passes) JSON."""
    if not entries:
        raise RegistryError("a run needs at least one candidate to register; got an empty list")
    names = [e.name for e in entries]
    if any(not isinstance(n, str) or not n for n in names):
        raise RegistryError(f"every candidate needs a non-empty name; got {names!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RegistryError(f"candidate names must be unique within a run; repeated: {', '.join(dupes)}")
    for e in entries:
        _check_trust(e)
        if e.evidence is not None and not isinstance(e.evidence, VersionEvidence):
            raise RegistryError(
                f"the evidence of candidate {e.name!r} must be a VersionEvidence "
                f"(modelyard.evaluate.schema) or None, got {type(e.evidence).__name__}"
            )
        if e.parent is not None and (e.parent not in names or e.parent == e.name):
            raise RegistryError(
                f"candidate {e.name!r} names parent {e.parent!r}, which is not another candidate of this run; "
                f"candidates: {', '.join(names)}"
            )
        if not e.files:
            raise RegistryError(f"candidate {e.name!r} has no files; an artifact needs at least one file")
        for rel in e.files:
            check_relpath(rel)
    if champion is not None and champion not in names:
        raise RegistryError(
            f"champion {champion!r} is not a candidate of this run; candidates: {', '.join(names)}"
        )
    return [
        (
            _to_json(f"manifest of candidate {e.name!r}", e.manifest),
            "{}" if e.evidence is None else e.evidence.model_dump_json(by_alias=True),
            _to_json(f"passes of candidate {e.name!r}", e.passes),
        )
        for e in entries
    ]
