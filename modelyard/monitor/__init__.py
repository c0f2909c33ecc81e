"""Monitoring served traffic: drift of inputs, embeddings and outputs, and accuracy estimated before labels.

The engine is :func:`watch` (one window of the prediction log against a version's monitor reference) and
:func:`history` (consecutive windows); :func:`monitor_status` watches every served version of a home folder.
"""

from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import MonitorReference, write_reference
from modelyard.monitor.reference_build import build_reference
from modelyard.monitor.reference_load import load_reference
from modelyard.monitor.signals import Signal
from modelyard.monitor.status import monitor_status, reference_for
from modelyard.monitor.watch import Alarm, MonitorStatus, history, watch

__all__ = [
    "Alarm",
    "MonitorReference",
    "MonitorStatus",
    "PredictionLog",
    "Signal",
    "build_reference",
    "history",
    "load_reference",
    "monitor_status",
    "reference_for",
    "watch",
    "write_reference",
]
