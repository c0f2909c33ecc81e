"""What every export starts from: a registry version loaded the way the server loads it (its Runner, input
contract, serving rules and typed evidence), refused early when it is not an ONNX artifact, and a staging
folder renamed into place at the end, so an export is written whole or not at all and never over
something that is already there."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.serve.model import ServedModel


def load_onnx_version(registry: Registry, ref: str, *, workdir: Path, what: str) -> ServedModel:
    """The version ``ref`` names, loaded for serving; ConfigError when its artifact is not ONNX (before any
    file is copied)."""
    name, version = registry.resolve(ref)
    fmt = registry.get_version(name, version)["manifest"].get("format")
    if fmt != "onnx":
        raise ConfigError(
            f"{name}:{version} is a {fmt} model and the {what} export needs an ONNX artifact; export it to "
            f"ONNX first (e.g. 'modelyard optimize ... --recipe onnx') and export that version"
        )
    return ServedModel.load(registry, f"{name}:{version}", threads=1, workdir=workdir)


def model_files(model: ServedModel) -> list[Path]:
    """The materialized model file and its external-data file, if any."""
    return model.candidate.files()


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A new folder beside ``target`` that becomes ``target`` when the block ends without an error;
    ConfigError when ``target`` already exists (nothing is written then)."""
    target = Path(target)
    _refuse_existing(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {str(target.parent)!r}: {exc.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        _refuse_existing(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_existing(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise ConfigError(
            f"{str(target)!r} already exists; export into another --out folder or move it away first "
            "(nothing was written)"
        )
