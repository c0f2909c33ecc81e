"""Evidence of one run reduced to what must not change when the code is refactored (same seed, same data):
every measurement's value, interval, unit and status, every gate's outcome, and which candidates pass;
timings (``efficiency.*``, seconds) and what depends on them (the champion, chosen by cost) excepted."""

from __future__ import annotations

import math
from typing import Any

TIMED = ("efficiency.",)


def summarize(evidence: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"isa": evidence["hardware"]["isa"], "policy": evidence["policy"], "candidates": {}}
    for c in evidence["candidates"]:
        out["candidates"][c["name"]] = {
            "measurements": {
                name: [m["value"], m["interval"], m["unit"], m["status"]]
                for name, m in sorted(c["measurements"].items())
                if not name.startswith(TIMED)
            },
            "gates": {
                g["gate"]: [g["passed"], g["value"], g["threshold"]]
                for g in c["verdict"]["gates"]
                if not g["check"].startswith(TIMED)
            },
            "passed": c["verdict"]["passed"],
        }
    return out


def _close(a: Any, b: Any, *, rel: float, abs_: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel=rel, abs_=abs_) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return bool(a == b)


def assert_same_evidence(
    old: dict[str, Any], new: dict[str, Any], *, rel: float = 1e-6, abs_: float = 1e-9
) -> None:
    """Every measurement and gate of ``old`` (a ``summarize`` result) is in ``new`` with the same value (within
    ``rel``/``abs_``, for summation-order noise), and nothing was added or lost."""
    # the policy records every section it had then the same way (a section added since is not compared)
    assert {k: new["policy"].get(k) for k in old["policy"]} == old["policy"]
    assert set(new["candidates"]) == set(old["candidates"])
    for name, o in old["candidates"].items():
        n = new["candidates"][name]
        assert set(n["measurements"]) == set(o["measurements"]), (
            name,
            set(n["measurements"]) ^ set(o["measurements"]),
        )
        changed = {
            k: (v, n["measurements"][k])
            for k, v in o["measurements"].items()
            if not _close(v, n["measurements"][k], rel=rel, abs_=abs_)
        }
        assert not changed, (name, changed)
        assert set(n["gates"]) == set(o["gates"]), (name, set(n["gates"]) ^ set(o["gates"]))
        gates = {
            k: (v, n["gates"][k])
            for k, v in o["gates"].items()
            if not _close(v, n["gates"][k], rel=rel, abs_=abs_)
        }
        assert not gates, (name, gates)
        assert n["passed"] == o["passed"], name


__all__ = ["assert_same_evidence", "summarize"]
