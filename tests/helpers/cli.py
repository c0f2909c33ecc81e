"""Assertions on command-line output."""

from __future__ import annotations


def assert_one_line_error(code: int, out: str, match: str) -> None:
    """The command exited 2 with a one-line ``error:`` message containing ``match`` and no traceback."""
    assert code == 2, out
    assert "Traceback" not in out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), out
    joined = " ".join(ln.strip() for ln in lines)
    assert match in joined, joined
