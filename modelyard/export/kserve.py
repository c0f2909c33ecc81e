"""The KServe export: an ``InferenceService`` manifest (``serving.kserve.io/v1beta1``) and the Triton model
repository it serves, to be uploaded to the storage URI the user gives.

``spec.predictor.model`` takes the ONNX model format (KServe picks its ONNX runtime, Triton by default, which
needs ``protocolVersion: v2``) or, with ``runtime="triton"``, the ``triton`` format on the
``kserve-tritonserver`` runtime, which reads the ``config.pbtxt`` as written. Either way the storage holds a
Triton repository (``<name>/config.pbtxt``, ``<name>/<version>/model.onnx``).

Resources come from the evidence: the memory request is the measured peak resident memory of a fresh process
running the model (``efficiency.peak_rss_bytes``) with 50 % headroom, the limit twice the request; CPU requests
and limits are the threads the throughput was measured with. Without a measured peak the export is refused
unless ``memory`` is given. The ``modelyard.io/*`` annotations say where every value came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from modelyard.errors import ConfigError
from modelyard.export.triton import measured_on
from modelyard.serve.model import ServedModel

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
RUNTIMES = ("onnx", "triton")
TRITON_RUNTIME = "kserve-tritonserver"
REPOSITORY_DIR = "model-repository"
MANIFEST_FILE = "inferenceservice.yaml"
MEMORY_HEADROOM = 1.5
MIB = 2**20

# The schemes KServe's storage initializer downloads from (Azure Blob and Files are https:// URLs).
STORAGE_SCHEMES = ("s3", "gs", "pvc", "hdfs", "webhdfs", "https", "http", "oci", "hf")
_URI_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>\S+)")
# An InferenceService name becomes Service and Deployment names: a DNS-1035 label.
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# A Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity).
QUANTITY_RE = re.compile(
    r"[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)


def check_storage_uri(uri: str | None) -> str:
    """``uri`` when KServe can download from it; ConfigError naming the accepted schemes otherwise."""
    schemes = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
    if not uri:
        raise ConfigError(
            f"the kserve export needs --storage-uri, where you will upload the model repository ({schemes})"
        )
    m = _URI_RE.fullmatch(uri)
    if m is None or m["scheme"] not in STORAGE_SCHEMES:
        raise ConfigError(f"storage URI {uri!r} is not one KServe downloads from; use one of {schemes}")
    rest = m["rest"]
    if m["scheme"] == "pvc" and "/" not in rest.strip("/"):
        raise ConfigError(f"storage URI {uri!r} names no folder in the claim; use pvc://<claim>/<folder>")
    if not rest.strip("/"):
        raise ConfigError(f"storage URI {uri!r} names no bucket or path")
    return uri


def service_name(model_name: str, given: str | None) -> str:
    """The InferenceService name: ``given`` when valid, else one derived from the model name."""
    if given is not None:
        if not _NAME_RE.fullmatch(given):
            raise ConfigError(
                f"service name {given!r} is not a DNS-1035 label; use up to 63 lowercase letters, digits "
                "and '-', starting with a letter and ending with a letter or digit"
            )
        return given
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower())
    name = re.sub(r"-{2,}", "-", name).lstrip("-0123456789")[:63].rstrip("-")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"cannot derive a service name from model name {model_name!r}; pass --service-name")
    return name


def resources(model: ServedModel, *, memory: str | None) -> tuple[dict[str, Any], str]:
    """``resources`` (requests and limits) for the predictor, and where each value came from."""
    _, threads = measured_on(model)
    cpu = str(threads or 1)
    cpu_why = (
        f"cpu: the {threads} threads the throughput was measured with"
        if threads
        else "cpu: 1 (the evidence records no thread count)"
    )
    if memory is not None:
        if not QUANTITY_RE.fullmatch(memory):
            raise ConfigError(f"memory {memory!r} is not a Kubernetes quantity; use e.g. 512Mi or 2Gi")
        return (
            {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
            f"memory: {memory} as given; {cpu_why}",
        )
    m = model.measurements.get("efficiency.peak_rss_bytes")
    if m is None or m.value is None:
        why = "not measured" if m is None else str(m.details.get("reason") or "unknown")
        raise ConfigError(
            f"{model.name}:{model.version} has no measured peak memory ({why}); pass --memory (e.g. 1Gi), or "
            "run optimize with memory measurement on"
        )
    request_mib = math.ceil(m.value * MEMORY_HEADROOM / MIB)
    return (
        {
            "requests": {"cpu": cpu, "memory": f"{request_mib}Mi"},
            "limits": {"cpu": cpu, "memory": f"{2 * request_mib}Mi"},
        },
        f"memory: measured peak RSS {m.value / MIB:.1f} MiB (efficiency.peak_rss_bytes) x {MEMORY_HEADROOM:g}, "
        f"limit twice the request; {cpu_why}",
    )


def manifest(
    model: ServedModel,
    *,
    storage_uri: str,
    runtime: str = "onnx",
    name: str | None = None,
    memory: str | None = None,
    artifact_sha256: str = "",
) -> dict[str, Any]:
    """The InferenceService manifest for ``model`` served from ``storage_uri``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown KServe runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    uri = check_storage_uri(storage_uri)
    res, why = resources(model, memory=memory)
    spec: dict[str, Any] = {"modelFormat": {"name": "onnx" if runtime == "onnx" else "triton"}}
    if runtime == "triton":
        spec["runtime"] = TRITON_RUNTIME
    spec.update({"protocolVersion": "v2", "storageUri": uri, "resources": res})
    annotations: Mapping[str, str] = {
        "modelyard.io/model": model.name,
        "modelyard.io/version": str(model.version),
        "modelyard.io/artifact-sha256": artifact_sha256,
        "modelyard.io/resources": why,
        "modelyard.io/storage": f"upload {REPOSITORY_DIR}/ (a Triton model repository) to {uri}",
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": service_name(model.name, name), "annotations": dict(annotations)},
        "spec": {"predictor": {"model": spec}},
    }
