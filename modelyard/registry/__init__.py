"""registry: numbered model versions, lineage and aliases in SQLite, files in a content-addressed store."""

from __future__ import annotations

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.entries import VersionEntry
from modelyard.registry.store import Registry

__all__ = ["ArtifactStore", "Registry", "VersionEntry"]
