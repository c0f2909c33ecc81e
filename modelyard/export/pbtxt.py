"""Protocol-buffer text format (what Triton's ``config.pbtxt`` is) written from plain dicts, without the
``.proto`` at hand: a dict is a message, a list a repeated field, a ``str`` a quoted string unless its field
is an enum, ``bool``/``int``/``float`` scalars. Map fields (``parameters`` in Triton's ModelConfig) are
written as the repeated ``{key, value}`` entries text format uses for maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.errors import ConfigError

# Triton ModelConfig fields whose values are enum names (written bare) and fields that are maps.
ENUM_FIELDS = frozenset({"data_type", "kind", "format", "timeout_action", "priority"})
MAP_FIELDS = frozenset({"parameters", "cc_model_filenames", "metric_tags", "model_operations"})

_INDENT = "  "


def to_pbtxt(message: Mapping[str, Any]) -> str:
    """``message`` in protobuf text format, one field per line, ending with a newline."""
    lines: list[str] = []
    _message(message, 0, lines)
    return "\n".join(lines) + "\n"


def _message(message: Mapping[str, Any], depth: int, lines: list[str]) -> None:
    for key, value in message.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"protobuf field names are identifiers; got {key!r}")
        if key in MAP_FIELDS and isinstance(value, Mapping):
            value = [{"key": k, "value": v} for k, v in value.items()]
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if all(isinstance(v, Mapping) for v in value):
                for item in value:
                    _block(key, item, depth, lines)
            else:
                items = ", ".join(_scalar(key, v) for v in value)
                lines.append(f"{_INDENT * depth}{key}: [ {items} ]")
        elif isinstance(value, Mapping):
            _block(key, value, depth, lines)
        else:
            lines.append(f"{_INDENT * depth}{key}: {_scalar(key, value)}")


def _block(key: str, value: Mapping[str, Any], depth: int, lines: list[str]) -> None:
    lines.append(f"{_INDENT * depth}{key} {{")
    _message(value, depth + 1, lines)
    lines.append(f"{_INDENT * depth}}}")


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"field {key!r} must be a finite number, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        if key in ENUM_FIELDS:
            if not value.isidentifier():
                raise ConfigError(f"enum field {key!r} needs an enum name, got {value!r}")
            return value
        return _quote(value)
    raise ConfigError(f"field {key!r} has a value text format cannot hold: {value!r}")


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
