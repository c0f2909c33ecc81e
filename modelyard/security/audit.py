"""The model audit: a file scan with hashes as JSON, and the security measurements of a candidate
(metrics.md 5.7). Nothing here loads a model; every verdict comes from :func:`scan_file`.

Verdicts are ``PASS``, ``FAIL`` or ``UNKNOWN``; UNKNOWN (could not read or verify) fails closed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, ModelyardError
from modelyard.evaluate.checkspec import CLASSIFIERS, CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.security.formats import FAIL, ONNX, OPENVINO_IR, PASS, UNKNOWN, ScanResult
from modelyard.security.scan import scan_file

__all__ = ["audit_model", "backdoor_measurement", "candidate_scan_measurement"]

STATUS = {PASS: "PASS", FAIL: "FAIL", UNKNOWN: "UNKNOWN"}
MAX_LISTED = 50
MAX_HASHED_FILES = 10_000
_CHUNK = 1 << 20

CHECKS = declare(
    CheckSpec(
        "security.file_scan",
        "pass",
        "1 when the artifact's file scan passes, 0 when it fails",
        "higher",
        gate=GateSpec("file_scan", None, 1.0, ">=", "the artifact's file scan (1 = PASS)"),
    ),
    CheckSpec(
        "security.backdoor_flagged_classes",
        "classes",
        "classes whose training data the backdoor scans flag (activation clustering and spectral signatures)",
        "lower",
        CLASSIFIERS,
        ("backdoor",),
        gate=GateSpec(
            "backdoor_scan",
            None,
            0.0,
            "<=",
            "classes the backdoor scans flag in the training data",
            unit="classes",
        ),
    ),
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk(folder: Path) -> Iterator[Path]:
    """Regular files under a folder in a stable order; directory symlinks are not followed."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            if file.is_file():
                yield file


def _hashes(path: Path) -> tuple[str, int, list[dict[str, Any]], bool]:
    """(sha256, total bytes, per-file entries, complete). A file's sha256 is the plain digest of its
    bytes; a folder's digests every file's path relative to the folder, a NUL byte and its bytes, in
    path order (the scheme of ``Candidate.artifact_sha256``)."""
    if not path.is_dir():
        digest = _sha256(path)
        size = path.stat().st_size
        return digest, size, [{"path": path.name, "size_bytes": size, "sha256": digest}], True
    total = hashlib.sha256()
    entries: list[dict[str, Any]] = []
    size = 0
    complete = True
    for i, file in enumerate(_walk(path)):
        if i >= MAX_HASHED_FILES:
            complete = False
            break
        rel = file.relative_to(path).as_posix()
        one = hashlib.sha256()
        total.update(rel.encode() + b"\0")
        n = 0
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                one.update(chunk)
                total.update(chunk)
                n += len(chunk)
        size += n
        entries.append({"path": rel, "size_bytes": n, "sha256": one.hexdigest()})
    return total.hexdigest(), size, entries, complete


def _picklescan(result: ScanResult) -> dict[str, Any]:
    available = importlib.util.find_spec("picklescan") is not None
    messages = [m for m in [*result.findings, *result.notes] if "picklescan" in m]
    return {"ran": bool(result.pickle_based and available), "available": available, "messages": messages}


def audit_model(path: Path) -> dict[str, Any]:
    """Scan a model file or folder without loading it; a JSON-serialisable report.

    Returns ``{"path", "status": "PASS"|"FAIL"|"UNKNOWN", "ok", "format", "pickle_based", "findings",
    "notes", "globals", "sha256", "size_bytes", "n_files", "files": [{"path", "size_bytes", "sha256"}]
    (the first 50), "picklescan": {"ran", "available", "messages"}}``. ``picklescan`` holds the
    second opinion :func:`scan_file` already ran on pickle-based files; it can only add failures.
    Raises :class:`~modelyard.errors.ArtifactError` when the path does not exist.
    """
    path = Path(path)
    result = scan_file(path)
    digest, size, files, complete = _hashes(path)
    report: dict[str, Any] = {
        "path": str(path),
        "status": STATUS[result.verdict],
        "ok": result.ok,
        "format": result.format,
        "pickle_based": result.pickle_based,
        "findings": list(result.findings),
        "notes": list(result.notes),
        "globals": list(result.globals[:MAX_LISTED]),
        "sha256": digest,
        "size_bytes": size,
        "n_files": len(files),
        "files": files[:MAX_LISTED],
        "picklescan": _picklescan(result),
    }
    if not complete:
        report["notes"].append(f"only the first {MAX_HASHED_FILES} files of the folder were hashed")
    return report


def _worst(verdicts: list[str]) -> str:
    if FAIL in verdicts:
        return FAIL
    if UNKNOWN in verdicts:
        return UNKNOWN
    return PASS


def candidate_scan_measurement(candidate: Any) -> Measurement:
    """``security.file_scan`` for a candidate: 1.0 PASS, 0.0 FAIL, None (UNKNOWN) with the reason.

    A folder artifact is scanned as a folder; a file artifact has its main file scanned and every
    other file of ``candidate.files()`` too, except an ONNX model's external-data file and an OpenVINO IR's
    .bin, which the ONNX and IR scans already check (their byte spans). Details: ``verdict``, ``format``,
    ``findings`` and ``notes`` (the first 50, prefixed with the file name), ``pickle_based`` and
    ``files`` with each file's sha256.
    """
    try:
        files = list(candidate.files())
        if candidate.path.is_dir():
            scanned = [(candidate.path, scan_file(candidate.path))]
        else:
            main = scan_file(candidate.path)
            scanned = [(candidate.path, main)]
            external = candidate.path.name + ".data"
            weights = candidate.path.with_suffix(".bin").name
            for f in files:
                if (
                    f == candidate.path
                    or (main.format == ONNX and f.name == external)
                    or (main.format == OPENVINO_IR and f.name == weights)
                ):
                    continue
                scanned.append((f, scan_file(f)))
        base = candidate.path if candidate.path.is_dir() else candidate.path.parent
        hashed = [
            {"path": f.relative_to(base).as_posix(), "size_bytes": f.stat().st_size, "sha256": _sha256(f)}
            for f in files[:MAX_LISTED]
        ]
    except (ModelyardError, OSError) as exc:
        return measure(
            "security.file_scan",
            None,
            reason=f"the artifact could not be scanned: {exc}",
            verdict=STATUS[UNKNOWN],
        )
    verdict = _worst([r.verdict for _, r in scanned])
    prefix = len(scanned) > 1
    findings = [f"{p.name}: {m}" if prefix else m for p, r in scanned for m in r.findings]
    notes = [f"{p.name}: {m}" if prefix else m for p, r in scanned for m in r.notes]
    details: dict[str, Any] = {
        "verdict": STATUS[verdict],
        "format": scanned[0][1].format,
        "findings": findings[:MAX_LISTED],
        "n_findings": len(findings),
        "notes": notes[:MAX_LISTED],
        "pickle_based": any(r.pickle_based for _, r in scanned),
        "n_files": len(files),
        "files": hashed,
    }
    if verdict == PASS:
        return measure("security.file_scan", 1.0, **details)
    if verdict == FAIL:
        return measure("security.file_scan", 0.0, **details)
    shown = "; ".join(findings[:3]) or "no details"
    return measure(
        "security.file_scan", None, reason=f"the scan could not verify the artifact: {shown}", **details
    )


def backdoor_measurement(scan: Mapping[str, Any] | None, reason: str | None = None) -> Measurement:
    """``security.backdoor_flagged_classes`` from a :func:`~modelyard.security.backdoor.backdoor_scan`
    result: the number of flagged classes, with ``flagged_classes``, ``n_suspicious``,
    ``suspicious_indices`` (the first 50), ``method`` and ``limits`` as details. None (UNKNOWN) with
    ``reason`` when the scan did not run, or when it could analyse no class.
    """
    name = "security.backdoor_flagged_classes"
    if scan is None:
        return measure(name, None, reason=reason or "the backdoor scan did not run")
    if not isinstance(scan, Mapping) or not isinstance(scan.get("flagged_classes"), list):
        raise ConfigError(
            f"scan must be the dict backdoor_scan() returns (with a flagged_classes list), got {type(scan).__name__}."
        )
    limits = str(scan.get("limits") or "")
    skipped = [str(c) for c in scan.get("skipped_classes") or []]
    if scan.get("analysed_classes") == 0:
        return measure(
            name,
            None,
            reason="the backdoor scan could analyse no class (too few training items per class)",
            skipped_classes=skipped[:MAX_LISTED],
            limits=limits,
        )
    flagged = [str(c) for c in scan["flagged_classes"]]
    return measure(
        name,
        float(len(flagged)),
        flagged_classes=flagged,
        n_suspicious=int(scan.get("n_suspicious") or 0),
        suspicious_indices=[int(i) for i in (scan.get("suspicious_indices") or [])[:MAX_LISTED]],
        skipped_classes=skipped[:MAX_LISTED],
        method=str(scan.get("method") or ""),
        limits=limits,
    )
