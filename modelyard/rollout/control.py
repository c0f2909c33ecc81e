"""Start, watch and stop rollouts: the library calls behind ``modelyard rollout`` and the server's rollout routes.

A rollout is a row of the registry's ``rollouts`` table (:mod:`modelyard.registry.rollouts`); a running server
that serves the model's champion picks it up by polling, loads the challenger beside the champion and decides
(:mod:`modelyard.serve.rollouts`). Every error here is a one-line :class:`RolloutError` (a ConfigError) raised
before anything is written: :class:`RolloutNotFound` (unknown model, version or rollout; HTTP 404),
:class:`RolloutConflict` (the version is the champion, there is no champion, a rollout already runs; 409), and
plain :class:`RolloutError` for a bad value (400).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from modelyard.config import RolloutPolicy
from modelyard.errors import ConfigError, RegistryError
from modelyard.registry import Registry
from modelyard.registry import rollouts as table
from modelyard.rollout.decide import Controller, Decision
from modelyard.rollout.sequential import Comparison, OneLook, RateTest

MODES = ("shadow", "canary")
STATES = ("running", "promoted", "rolled_back", "inconclusive", "stopped")
DEFAULT_CANARY_PERCENT = 10.0
_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


class RolloutError(ConfigError):
    """A rollout request that cannot be done as given (HTTP 400)."""

    status = 400


class RolloutNotFound(RolloutError):
    """An unknown model or version, or no rollout where one was named (HTTP 404)."""

    status = 404


class RolloutConflict(RolloutError):
    """The registry's state forbids it: no champion, the version is the champion, a rollout runs (HTTP 409)."""

    status = 409


@dataclass(frozen=True)
class RolloutView:
    """One rollout as the CLI, the server and the dashboard show it; ``to_dict`` is its JSON."""

    model: str
    champion: int
    challenger: int
    mode: str
    percent: float | None
    state: str
    started_at: str
    ended_at: str | None
    requests: int
    reason: str
    statistics: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["statistics"] = [dict(s) for s in self.statistics]
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RolloutView:
        return cls(
            model=str(row["model"]),
            champion=int(row["champion"]),
            challenger=int(row["challenger"]),
            mode=str(row["mode"]),
            percent=None if row["percent"] is None else float(row["percent"]),
            state=str(row["state"]),
            started_at=str(row["started_at"]),
            ended_at=row["ended_at"],
            requests=int(row["requests"]),
            reason=str(row["reason"]),
            statistics=list(row["statistics"]),
        )


# ---------------------------------------------------------------------------------------------------
# the calls


def _model_versions(registry: Registry, model: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(model, str) or not model:
        raise RolloutError(f"a rollout needs a model name, got {model!r}")
    models = {m["name"]: m for m in registry.list_models()}
    if model not in models:
        known = ", ".join(sorted(models)) or "none yet"
        raise RolloutNotFound(f"unknown model {model!r}; registered models: {known}")
    return model, models[model]


def _check_percent(mode: str, percent: object) -> float | None:
    if mode == "shadow":
        if percent is not None:
            raise RolloutError(
                "--percent applies to canary rollouts only (a shadow rollout copies every request)"
            )
        return None
    if percent is None:
        return DEFAULT_CANARY_PERCENT
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not math.isfinite(percent)
        or not 1 <= percent <= 99
    ):
        raise RolloutError(
            f"a canary's percent must be a number from 1 to 99 (share of requests the challenger answers), "
            f"got {percent!r}"
        )
    return float(percent)


def _check_header(mode: str, header: object) -> str | None:
    if header is None:
        return None
    if mode != "canary":
        raise RolloutError("--sticky-header applies to canary rollouts only")
    if not isinstance(header, str) or not _HEADER.fullmatch(header):
        raise RolloutError(
            f"the sticky header must be a header name (letters, digits and '-', up to 64), got {header!r}"
        )
    return header.lower()


def start_rollout(
    registry: Registry,
    model: str,
    version: int,
    *,
    mode: str,
    percent: float | None = None,
    sticky_header: str | None = None,
    policy: RolloutPolicy | None = None,
) -> RolloutView:
    """Start a shadow or canary rollout of ``model`` ``version`` against its champion (see the module
    docstring for the errors; nothing is written on error). ``policy`` defaults to ``RolloutPolicy()``; a
    canary answers ``percent`` (default 10) of the requests."""
    name, info = _model_versions(registry, model)
    if mode not in MODES:
        raise RolloutError(f"the rollout mode must be shadow or canary, got {mode!r}")
    n = int(info["versions"])
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= n:
        have = "none" if n == 0 else ("1" if n == 1 else f"1..{n}")
        raise RolloutNotFound(f"model {name!r} has no version {version!r}; versions: {have}")
    pct = _check_percent(mode, percent)
    header = _check_header(mode, sticky_header)
    rollout_policy = RolloutPolicy() if policy is None else policy
    if not isinstance(rollout_policy, RolloutPolicy):
        raise RolloutError(f"policy must be a RolloutPolicy, got {type(policy).__name__}")
    champion = info["aliases"].get("champion")
    if champion is None:
        raise RolloutConflict(f"model {name!r} has no champion to compare with; promote a version first")
    if champion == version:
        raise RolloutConflict(f"version {version} is already the champion of {name!r}; nothing to roll out")
    running = [v for v in rollout_status(registry, name) if v.state == "running"]
    if running:
        raise RolloutConflict(
            f"a rollout of {name!r} is already running (version {running[0].challenger}, {running[0].mode}); "
            f"stop it first (modelyard rollout stop {name})"
        )
    share = "every request copied" if pct is None else f"{pct:g}% of requests"
    try:
        rollout_id = table.insert_rollout(
            registry,
            name,
            challenger=version,
            mode=mode,
            percent=pct,
            sticky_header=header,
            policy=asdict(rollout_policy),
            reason=f"rollout started: {mode} of version {version} against version {champion} ({share})",
        )
    except RegistryError as exc:  # lost a race with another start or a promotion
        raise RolloutConflict(str(exc)) from None
    row = table.get_rollout(registry, rollout_id)
    assert row is not None  # just committed
    return RolloutView.from_row(row)


def rollout_status(registry: Registry, model: str | None = None) -> list[RolloutView]:
    """Rollouts (of ``model`` when given): running first, then ended ones, newest first."""
    if model is not None:
        _model_versions(registry, model)
    rows = table.list_rollouts(registry, model)
    rows.sort(key=lambda r: (r["state"] != "running", -int(r["id"])))
    return [RolloutView.from_row(r) for r in rows]


def stop_rollout(registry: Registry, model: str, *, reason: str) -> RolloutView:
    """Stop the running rollout of ``model``; the champion is kept and the stop is in the audit log."""
    name, _ = _model_versions(registry, model)
    if not isinstance(reason, str) or not reason.strip():
        raise RolloutError(f"a reason is required for the audit log, got {reason!r}; say why in one line")
    running = [r for r in table.list_rollouts(registry, name) if r["state"] == "running"]
    if not running:
        raise RolloutNotFound(f"no rollout of {name!r} is running; see modelyard rollout status {name}")
    row = running[0]
    ended = table.end_rollout(
        registry, int(row["id"]), state="stopped", reason=f"rollout stopped: {reason.strip()}"
    )
    if ended is None:
        raise RolloutConflict(f"the rollout of {name!r} ended while it was being stopped; see its status")
    return RolloutView.from_row(ended)


# ---------------------------------------------------------------------------------------------------
# what the server uses


def policy_of(row: dict[str, Any]) -> RolloutPolicy:
    """The policy stored with a rollout (keys this release does not know are ignored)."""
    known = {f.name for f in fields(RolloutPolicy)}
    return RolloutPolicy(**{k: v for k, v in dict(row["policy"]).items() if k in known})


# what each paired signal's mean is, for the statistics' readers (the dashboard shows it beside the numbers)
_MEANS = {
    "accuracy": "champion correct minus challenger correct, labelled requests both answered",
    "kl": "KL(champion || challenger) of the calibrated class probabilities per request, nats, capped at 1 nat",
    "confidence": "champion minus challenger calibrated confidence on the same requests",
    "ood": "challenger minus champion OOD flag on the same requests (each version's own rule)",
}


def signal_statistics(controller: Controller) -> list[dict[str, Any]]:
    """Each signal's statistics in the contract's shape: name, n, decision (worse / non-inferior / open) and
    the test's numbers (a rate test: k, rate, limit; a confidence sequence: mean, lower, upper, margin and
    what the mean is; the one-look drift check: statistic, threshold, window size and features, once taken)."""
    out: list[dict[str, Any]] = []
    for name, sig in controller.signals.items():
        state = sig.decision(min_n=0)
        entry: dict[str, Any] = {
            "name": name,
            "n": sig.n,
            "decision": "open" if state == "continue" else state,
            "alpha": sig.alpha,
        }
        if isinstance(sig, RateTest):
            entry.update(k=sig.k, rate=sig.rate, limit=sig.limit, method="beta-binomial mixture SPRT")
        elif isinstance(sig, Comparison):
            lower, upper = sig.interval()
            entry.update(
                mean=sig.mean,
                lower=lower,
                upper=upper,
                margin=sig.margin,
                method="empirical-Bernstein confidence sequence",
            )
            if name in _MEANS:
                entry["of"] = _MEANS[name]
        elif isinstance(sig, OneLook):
            entry.update(sig.details)
            entry["method"] = (
                "calibrated max-effect input drift check against the challenger's reference, taken once"
                if sig.looked
                else "calibrated max-effect input drift check, taken once when min_requests requests have logged inputs"
            )
        out.append(entry)
    return out


_ENDS = {"promote": "promoted", "rollback": "rolled_back", "inconclusive": "inconclusive"}


def finish_rollout(
    registry: Registry, rollout_id: int, decision: Decision, statistics: list[dict[str, Any]]
) -> RolloutView | None:
    """End a running rollout on the controller's ``decision``: a promotion moves the champion alias, a rollback
    or an inconclusive end keeps it; the audit-log row's reason holds the decision's reason and the statistics
    (JSON). None when the rollout was no longer running."""
    import json

    state = _ENDS[decision.action]
    reason = (
        f"rollout {decision.action}: {decision.reason} (after {decision.requests} requests); "
        f"statistics: {json.dumps(statistics, allow_nan=False, default=str, sort_keys=True)}"
    )
    row = table.end_rollout(
        registry,
        rollout_id,
        state=state,
        reason=reason,
        requests=decision.requests,
        statistics=statistics,
    )
    return None if row is None else RolloutView.from_row(row)


def end_with_reason(registry: Registry, rollout_id: int, *, state: str, reason: str) -> RolloutView | None:
    """End a running rollout for a reason of the server's (the challenger failed to load, ...)."""
    row = table.end_rollout(registry, rollout_id, state=state, reason=reason)
    return None if row is None else RolloutView.from_row(row)
