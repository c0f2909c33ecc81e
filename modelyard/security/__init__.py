"""Model-file security: format detection by magic bytes, an allowlist pickle scanner, the gate every loader
calls (:func:`require_safe`), and the trust record kept with a version that needed ``--trust-pickle`` or a
factory (:mod:`modelyard.security.trust`). Model files are data, not code."""

from __future__ import annotations

from modelyard.security.formats import PICKLE_BASED_FORMATS, ScanResult, detect_format
from modelyard.security.pickle_scan import ALLOWED_GLOBALS, scan_pickle_bytes
from modelyard.security.scan import require_safe, scan_file
from modelyard.security.trust import TrustStatus, require_trust, trust_record, trust_status

__all__ = [
    "ALLOWED_GLOBALS",
    "PICKLE_BASED_FORMATS",
    "ScanResult",
    "TrustStatus",
    "detect_format",
    "require_safe",
    "require_trust",
    "scan_file",
    "scan_pickle_bytes",
    "trust_record",
    "trust_status",
]
