"""Model-file security: format detection by magic bytes, an allowlist pickle scanner, and the
gate every loader calls (:func:`require_safe`). Model files are data, not code."""

from __future__ import annotations

from modelyard.security.formats import PICKLE_BASED_FORMATS, ScanResult, detect_format
from modelyard.security.pickle_scan import ALLOWED_GLOBALS, scan_pickle_bytes
from modelyard.security.scan import require_safe, scan_file

__all__ = [
    "ALLOWED_GLOBALS",
    "PICKLE_BASED_FORMATS",
    "ScanResult",
    "detect_format",
    "require_safe",
    "scan_file",
    "scan_pickle_bytes",
]
