"""OpenVINO IR files: recognising an IR ``.xml`` by its bytes, and scanning it without loading it.

An IR is an XML graph (``<net>`` of ``<layer>`` elements) plus a ``.bin`` of raw weights that ``Const``
layers point into by offset and size; neither holds code. The scan parses the XML with entity declarations
refused (an IR never has a DOCTYPE), checks every ``Const`` span lies inside the ``.bin`` beside it, and
notes operator sets other than OpenVINO's own ``opsetN`` (they need an extension to load).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from modelyard.security.formats import FindingsCollector

_MAX_XML_BYTES = 512 * 1024 * 1024
_OPSET = re.compile(r"^opset\d+$")


def _count(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def scan_openvino_ir(path: Path, c: FindingsCollector) -> None:
    """Scan the IR ``path`` (.xml) and the Const spans into its ``.bin``; findings go to ``c``."""
    size = path.stat().st_size
    if size > _MAX_XML_BYTES:
        c.cannot_tell(f"OpenVINO IR XML is {size} bytes, over the {_MAX_XML_BYTES} scanned")
        return
    raw = path.read_bytes()
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        c.fail(
            "OpenVINO IR XML declares a DOCTYPE or entities; a real IR has none (entity expansion attack?)"
        )
        return
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        c.cannot_tell(f"OpenVINO IR XML could not be parsed: {exc}")
        return
    if root.tag != "net":
        c.cannot_tell(f"OpenVINO IR XML has root <{root.tag}>, expected <net>")
        return
    weights = path.with_suffix(".bin")
    bin_size = weights.stat().st_size if weights.is_file() else None
    layers = root.findall("./layers/layer")
    opsets: set[str] = set()
    custom: set[str] = set()
    spans = 0
    for layer in layers:
        opset = layer.get("version", "")
        (opsets if _OPSET.match(opset) else custom).add(opset or "(none)")
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        offset = _count(None if data is None else data.get("offset"))
        length = _count(None if data is None else data.get("size"))
        if offset is None or length is None:
            c.cannot_tell(f"Const layer {layer.get('name')!r} has no valid offset/size")
            continue
        spans += 1
        if bin_size is None:
            c.cannot_tell(f"Const layer {layer.get('name')!r} points into {weights.name}, which is missing")
        elif offset + length > bin_size:
            c.fail(
                f"Const layer {layer.get('name')!r} spans bytes {offset}-{offset + length} of {weights.name}, "
                f"which has {bin_size}"
            )
    c.note(
        f"OpenVINO IR v{root.get('version', '?')}: {len(layers)} layers, {spans} weight spans checked "
        f"against {weights.name}; operator sets {', '.join(sorted(opsets)) or 'none'}"
    )
    if custom:
        c.note(
            f"operator sets other than OpenVINO's: {', '.join(sorted(custom))} (need an extension to load)"
        )
