"""One exception tree. Every message says what was wrong, what was received and how to fix it."""

from __future__ import annotations


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose. The CLI prints it in one line and exits 2."""


class ConfigError(ModelyardError):
    """A policy, recipe, setting or command-line option is invalid."""


class DataError(ModelyardError):
    """A dataset is missing, unreadable, empty, or does not fit the model."""


class ArtifactError(ModelyardError):
    """A model file is missing, of an unknown format, corrupt, or not allowed to load."""


class UnsafeModelError(ArtifactError):
    """A model file was refused by the security scan."""


class PassSkipped(ModelyardError):
    """An optimization pass cannot apply to this candidate; the message is the reason shown."""


class RegistryError(ModelyardError):
    """A registry lookup or alias move is invalid (unknown model, version or alias)."""


class GateFailed(ModelyardError):
    """No candidate passed the policy's gates."""


def first_line(exc: BaseException, *, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when the message is empty), at most ``limit``
    characters: how an error from another library is quoted inside one of ours."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
