"""Content-addressed artifact store: ``<home>/artifacts/sha256/<first 2 hex>/<full hex>``.

Files are stored once per content hash. A write goes to a temporary file in the destination folder,
is fsynced, renamed into place with ``os.replace`` and the folder is fsynced, so a crash leaves either
no file or the whole file under its final name (at worst a stray ``.tmp-*`` file, which nothing reads).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from modelyard.errors import RegistryError

_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of one file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_relpath(relpath: str) -> str:
    """Validate a path inside an artifact: relative, '/'-separated, no '..', no empty parts. Returns it."""
    p = PurePosixPath(relpath)
    if (
        not relpath
        or "\\" in relpath
        or p.is_absolute()
        or str(p) != relpath
        or any(part in ("", ".", "..") for part in p.parts)
    ):
        raise RegistryError(
            f"invalid artifact file path {relpath!r}; use a relative '/'-separated path without '..' "
            "(e.g. 'model.onnx' or 'tokenizer/vocab.txt')"
        )
    return relpath


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX only; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) and fsync each parent whose entries changed."""
    missing: list[Path] = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _copy_hashing(src: Path, dest_folder: Path, *, mode: int | None = None) -> tuple[Path, str, int]:
    """Copy ``src`` to a fresh temporary file in ``dest_folder``, fsynced. Returns (temp path, sha256, size)."""
    tmp = dest_folder / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    h = hashlib.sha256()
    size = 0
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            for chunk in iter(lambda: fin.read(_CHUNK), b""):
                h.update(chunk)
                size += len(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, h.hexdigest(), size


class ArtifactStore:
    """Content-addressed files under ``root`` (normally ``<home>/artifacts``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise RegistryError(f"invalid sha256 {sha256!r}; expected 64 lower-case hex digits")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str, size_bytes: int) -> bool:
        p = self.path_for(sha256)
        return p.is_file() and p.stat().st_size == size_bytes

    def put(self, src: Path, *, before_rename: Callable[[], None] | None = None) -> tuple[str, int]:
        """Store one file; returns (sha256, size in bytes). Skips the copy when the content is already stored.

        ``before_rename`` is called after the temporary file is written and fsynced, just before it is
        renamed into place (the crash-consistency tests kill the process there).
        """
        src = Path(src)
        if not src.is_file():
            raise RegistryError(
                f"artifact file {str(src)!r} does not exist or is not a file; check the candidate"
            )
        digest, size = sha256_file(src)
        if self.has(digest, size):
            return digest, size
        final = self.path_for(digest)
        _ensure_dir(final.parent)
        tmp, copied, copied_size = _copy_hashing(
            src, final.parent, mode=stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        )
        if copied != digest or copied_size != size:
            tmp.unlink(missing_ok=True)
            raise RegistryError(
                f"artifact file {str(src)!r} changed while it was being stored; register again"
            )
        if before_rename is not None:
            before_rename()
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return digest, size

    def copy_out(self, sha256: str, dest: Path, *, label: str) -> None:
        """Write the stored file ``sha256`` to ``dest`` atomically, verifying its hash on the way.

        ``label`` names the file in error messages (e.g. "digits-cnn:3 model.onnx").
        """
        src = self.path_for(sha256)
        if not src.is_file():
            raise RegistryError(
                f"artifact file {label} (sha256 {sha256}) is missing from {self.root}; the store is damaged, "
                "register the run again"
            )
        _ensure_dir(dest.parent)
        tmp, got, _ = _copy_hashing(src, dest.parent)
        if got != sha256:
            tmp.unlink(missing_ok=True)
            raise RegistryError(
                f"artifact file {label} is corrupt: sha256 {got}, expected {sha256}; the store is damaged, "
                "register the run again"
            )
        os.replace(tmp, dest)
