"""Rollouts: a challenger beside the champion, compared on live traffic with decisions valid at every look."""

from __future__ import annotations

from modelyard.rollout.control import RolloutView, rollout_status, start_rollout, stop_rollout

__all__ = ["RolloutView", "rollout_status", "start_rollout", "stop_rollout"]
