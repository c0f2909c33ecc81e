"""Trust records: who let code-running model files in, with which flag, when, and what the scan said.

Two kinds of model run code when they load: pickle-based files (TorchScript, torch.export ``.pt2``), let in by
``--trust-pickle``, and safetensors state dicts rebuilt by a ``--factory package.module:function``, which
imports and calls that function. :func:`trust_record` writes the decision down as plain JSON; the baseline
keeps it in ``candidate.meta["trust"]`` and the registry stores it in the version's manifest.
:func:`trust_status` says what a candidate (or a registered manifest) needs and whether its record covers it,
and :func:`require_trust` is the gate the server calls before it loads anything.

A record::

    {"kind": "pickle" | "factory", "flag": "--trust-pickle" | "--factory" | ..., "by": OS user,
     "at": UTC ISO time, "scan": {"status", "format", "findings"}, "factory": "pkg.mod:fn" (factory only),
     "builtin": true (modelyard's own demo code), "inherited_from": "baseline" (a derived candidate)}
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelyard.errors import ArtifactError, RegistryError
from modelyard.security.formats import PASS, ScanResult

PICKLE = "pickle"
FACTORY = "factory"
TRUST_KINDS = (PICKLE, FACTORY)
#: The ``modelyard serve`` flag that serves a version of each kind without a record.
SERVE_FLAGS = {PICKLE: "--trust-pickle", FACTORY: "--trust-factory"}
#: Factories under this package are modelyard's own demo code: recorded as built-in, still a record.
BUILTIN_FACTORY_PREFIX = "modelyard.zoo."
BUILTIN_BY = "modelyard built-in demo"
#: The generic rebuild factory of pruned modules; it calls the factory named in its kwargs (the user's code).
REBUILD_FACTORY = "modelyard.optimize.passes.surgery:rebuild"

_PICKLE_KINDS = ("torchscript", "export")
_MAX_FINDINGS = 20


def current_user() -> str:
    """The OS user running modelyard ("unknown" when the system cannot say): who records and logs name."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError, ImportError):
        return "unknown"


def scan_summary(scan: ScanResult) -> dict[str, Any]:
    """What a record keeps of a scan: its status, the format it read and the first findings."""
    return {
        "status": scan.verdict,
        "format": scan.format,
        "findings": list(scan.findings[:_MAX_FINDINGS]),
    }


def trust_record(kind: str, *, flag: str, scan: ScanResult, factory: str | None = None) -> dict[str, Any]:
    """The record of one trust decision. ``flag`` is what let it in (``--trust-pickle``, ``--factory``, ...);
    ``factory`` (kind "factory") is the reference imported and called. A factory under ``modelyard.zoo.`` is
    recorded as built-in, by "modelyard built-in demo"; anything else by the OS user."""
    if kind not in TRUST_KINDS:
        raise ArtifactError(f"unknown trust kind {kind!r}; use one of {', '.join(TRUST_KINDS)}")
    if kind == FACTORY and not factory:
        raise ArtifactError("a factory trust record needs the factory reference 'package.module:function'")
    builtin = kind == FACTORY and str(factory).startswith(BUILTIN_FACTORY_PREFIX)
    record: dict[str, Any] = {
        "kind": kind,
        "flag": flag,
        "by": BUILTIN_BY if builtin else current_user(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scan": scan_summary(scan),
    }
    if kind == FACTORY:
        record["factory"] = str(factory)
        record["builtin"] = builtin
    return record


def base_factory(meta: Mapping[str, Any]) -> str:
    """The factory whose code a torch manifest runs: its own, or the one the generic rebuild wraps."""
    factory = str(meta.get("factory") or "")
    kwargs = meta.get("factory_kwargs")
    if factory == REBUILD_FACTORY and isinstance(kwargs, Mapping) and isinstance(kwargs.get("factory"), str):
        return str(kwargs["factory"])
    return factory


def needed_trust(fmt: object, meta: Mapping[str, Any] | None) -> str | None:
    """What loading a model runs besides weights: ``"pickle"`` for TorchScript / torch.export, ``"factory"``
    for a safetensors state dict rebuilt by a factory, None for everything else (ONNX, Hugging Face folders)."""
    if fmt != "torch" or not isinstance(meta, Mapping):
        return None
    kind = meta.get("torch_kind", "safetensors")
    if kind in _PICKLE_KINDS:
        return PICKLE
    if kind == "safetensors" and meta.get("factory"):
        return FACTORY
    return None


def record_problems(record: object) -> list[str]:
    """What is wrong with a stored record's shape (empty when it is well formed and its scan passed)."""
    if not isinstance(record, Mapping):
        return [f"is {type(record).__name__}, not an object"]
    out = []
    if record.get("kind") not in TRUST_KINDS:
        out.append(f"has kind {record.get('kind')!r}, not one of {', '.join(TRUST_KINDS)}")
    for key in ("flag", "by", "at"):
        if not isinstance(record.get(key), str) or not str(record.get(key)).strip():
            out.append(f"has no {key!r}")
    at = record.get("at")
    if isinstance(at, str) and at.strip():
        try:
            datetime.fromisoformat(at)
        except ValueError:
            out.append(f"has 'at' {at!r}, not an ISO time")
    scan = record.get("scan")
    if not isinstance(scan, Mapping) or not isinstance(scan.get("findings"), list):
        out.append("has no 'scan' with a status and findings")
    elif scan.get("status") != PASS:
        out.append(f"records a scan with status {scan.get('status')!r}, not {PASS!r}")
    if record.get("kind") == FACTORY and not isinstance(record.get("factory"), str):
        out.append("has no 'factory'")
    return out


def check_record(record: object, *, label: str) -> None:
    """Raise RegistryError when a record about to be stored is malformed."""
    problems = record_problems(record)
    if problems:
        raise RegistryError(
            f"the trust record of {label} " + "; ".join(problems) + "; build it with modelyard.security.trust"
        )


@dataclass(frozen=True)
class TrustStatus:
    """What a model needs (``needed``: "pickle", "factory" or None), its record, and why the record does not
    cover the need (``problem``, None when it does or when nothing is needed)."""

    needed: str | None
    record: Mapping[str, Any] | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.needed is None or self.problem is None

    @property
    def serve_flag(self) -> str | None:
        return SERVE_FLAGS.get(self.needed or "")


def trust_status(fmt: object, meta: Mapping[str, Any] | None) -> TrustStatus:
    """Whether a candidate or manifest (its ``format`` and ``meta``) needs trust and its record covers it."""
    needed = needed_trust(fmt, meta)
    record = (meta or {}).get("trust") if isinstance(meta, Mapping) else None
    if needed is None:
        return TrustStatus(None, record if isinstance(record, Mapping) else None, None)
    if record is None:
        return TrustStatus(needed, None, "no trust record")
    problems = record_problems(record)
    if problems or not isinstance(record, Mapping) or meta is None:
        return TrustStatus(needed, None, "its trust record " + "; ".join(problems))
    if record["kind"] != needed:
        return TrustStatus(needed, None, f"its trust record is for a {record['kind']}, not a {needed}")
    if needed == FACTORY and record["factory"] != base_factory(meta):
        return TrustStatus(
            needed, None, f"its trust record is for factory {record['factory']!r}, not {base_factory(meta)!r}"
        )
    return TrustStatus(needed, record, None)


def version_trust(
    fmt: object, meta: Mapping[str, Any], *, baseline_name: str, baseline_meta: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The record to register with a candidate: None when it needs none (ONNX, Hugging Face); its own record
    for the baseline; for a derived candidate that still needs the factory or the pickle, the baseline's record
    marked ``inherited_from``."""
    if needed_trust(fmt, meta) is None:
        return None
    own = meta.get("trust")
    base = baseline_meta.get("trust")
    if isinstance(own, Mapping) and own != base:
        return dict(own)
    if not isinstance(base, Mapping):
        return None
    if meta is baseline_meta:
        return dict(base)
    return {**base, "inherited_from": baseline_name}


def require_trust(
    manifest: Mapping[str, Any], *, label: str, trust_pickle: bool = False, trust_factory: bool = False
) -> TrustStatus:
    """The gate before a registered version loads: returns its status, or raises ArtifactError naming the
    ``modelyard serve`` flag that allows it. A flag stands in for a missing or unusable record; the caller still
    scans a pickle-based file before loading it."""
    meta = manifest.get("meta") if isinstance(manifest, Mapping) else None
    status = trust_status(manifest.get("format"), meta if isinstance(meta, Mapping) else None)
    if (
        status.ok
        or (status.needed == PICKLE and trust_pickle)
        or (status.needed == FACTORY and trust_factory)
    ):
        return status
    if status.needed == PICKLE:
        kind = (meta or {}).get("torch_kind")
        raise ArtifactError(
            f"{label} is a pickle-based {kind} model (it can run code when loaded): {status.problem}; "
            "serve it with --trust-pickle if you trust the file (it is still scanned first), "
            "or register it again with modelyard optimize --trust-pickle"
        )
    raise ArtifactError(
        f"{label} is rebuilt by factory {base_factory(meta or {})!r} (code that is imported and run): "
        f"{status.problem}; serve it with --trust-factory if you trust that code, "
        "or register it again with modelyard optimize --factory"
    )


def describe_trust(fmt: object, meta: Mapping[str, Any] | None) -> str:
    """One line for ``modelyard models show``."""
    status = trust_status(fmt, meta)
    if status.needed is None:
        return "not needed (no pickle, no factory code)"
    if status.record is None:
        return f"MISSING ({status.problem}): modelyard serve needs {status.serve_flag}"
    r = status.record
    what = f"factory {r['factory']}" if r["kind"] == FACTORY else "pickle-based file"
    who = f"built-in ({r['by']})" if r.get("builtin") else f"by {r['by']} with {r['flag']}"
    inherited = f", inherited from {r['inherited_from']}" if r.get("inherited_from") else ""
    return f"{what}: {who} at {r['at']}, scan {r['scan']['status']}{inherited}"
