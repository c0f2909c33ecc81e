"""One registry version, loaded for serving: its Runner, its input contract and its serving rules.

:meth:`ServedModel.load` resolves a reference, checks the version's trust record (a pickle-based or
factory-built version needs one, or ``--trust-pickle`` / ``--trust-factory``; see
:mod:`modelyard.security.trust`), materializes the version's files, rebuilds the Candidate from its manifest,
scans a pickle-based file, loads the Runner once and reads the serving rules the pipeline stored with it
(``manifest["meta"]["serving"]``: the calibration temperature, the OOD rule and the input contract; a version
registered before these existed is served with T = 1, no OOD outputs and a contract derived from its spec),
and the projections of its monitor reference (``monitor_reference.json``: the principal components the
prediction log's input or embedding features are computed on; none for a version registered without one).

Open Inference Protocol view of the model:

- array models take their Runner's inputs (names, datatypes from the spec, ``-1`` for dynamic axes);
  text models (a candidate with a tokenizer) take one input ``text`` of datatype BYTES, shape ``[-1]``;
- classifiers give ``logits`` (the Runner's raw output, exactly what ``predict`` gives offline),
  ``probabilities`` (``softmax(logits / T)``) and, with a usable OOD rule, ``ood_score`` and ``ood_flag``
  (``score > threshold``); embedders give ``embedding``.

:meth:`ServedModel.run_batch` is what the batcher calls on its worker thread: one Runner call for several
requests (feeds concatenated along axis 0, or texts tokenized together), split back per request. With one
request per call the outputs are byte-identical to offline ``predict``; when requests share a call, ONNX
Runtime may differ in the last bits (a kernel's float results can depend on the batch size).

Request inputs are checked by :mod:`modelyard.serve.inputs`, classifier outputs computed by
:mod:`modelyard.serve.outputs`, and the manifest re-pointed at the materialized files by
:mod:`modelyard.serve.manifest`.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, UnsafeModelError, first_line
from modelyard.evaluate.schema import Measurement as SchemaMeasurement
from modelyard.evaluate.schema import VersionEvidence
from modelyard.monitor.reference_load import served_projections
from modelyard.monitor.summary import Projection
from modelyard.registry import Registry
from modelyard.runtime.base import Runner
from modelyard.security import require_safe
from modelyard.security.contract import check_inputs, input_contract
from modelyard.security.trust import PICKLE, require_trust
from modelyard.serve.inputs import (
    TEXT_INPUT,
    PreparedInput,
    bad_request,
    json_array,
    json_columns,
    match_inputs,
    owned,
    texts_of,
)
from modelyard.serve.manifest import platform_of, relocate
from modelyard.serve.outputs import OOD_SCORES, classifier_outputs
from modelyard.serve.protocol import InferInput, tensor_metadata

log = logging.getLogger(__name__)


def _dims(shape: Sequence[int | None]) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def latency_budget_ms(evidence: VersionEvidence | None) -> float | None:
    """The policy's p99 latency budget recorded with a version (its ``latency_p99`` gate), if any."""
    for g in [] if evidence is None else evidence.verdict.gates:
        if g.gate == "latency_p99" and math.isfinite(g.threshold) and g.threshold > 0:
            return float(g.threshold)
    return None


SPIN_MIN_LATENCY_MS = 1.0


def ort_spinning(evidence: VersionEvidence | None) -> tuple[bool, str]:
    """Whether a served ONNX Runtime session lets its idle threads spin, and why.

    A model whose batch-1 inference (the version's measured ``efficiency.latency_p50_ms``) takes at least
    1 ms runs many parallel operators per call; threads that sleep between them are woken once per operator,
    which costs more than spinning (MiniLM here, one request at a time: 170 req/s spinning, 122 not). A
    model faster than that spends most of a request in the HTTP side, and threads spinning after each call
    would take the cores it needs."""
    m = None if evidence is None else evidence.measurements.get("efficiency.latency_p50_ms")
    ms = None if m is None else m.value
    if ms is None or not math.isfinite(ms) or ms <= 0:
        return (
            False,
            "ONNX Runtime threads sleep between calls: no measured batch-1 latency to judge spinning",
        )
    if ms >= SPIN_MIN_LATENCY_MS:
        return True, (
            f"ONNX Runtime threads spin between operators: batch-1 inference measured {ms:.2f} ms "
            f"(>= {SPIN_MIN_LATENCY_MS:g} ms), where waking sleeping threads costs more than spinning"
        )
    return False, (
        f"ONNX Runtime threads sleep between calls: batch-1 inference measured {ms:.2f} ms "
        f"(< {SPIN_MIN_LATENCY_MS:g} ms), so the HTTP side needs the cores more than the runtime"
    )


@dataclass
class ServedModel:
    """A loaded, warmed-up model version, ready for :meth:`run_batch` (see the module docstring)."""

    name: str
    version: int
    ref: str
    candidate: Candidate
    runner: Runner
    evidence: VersionEvidence | None = None
    folder: Path | None = None
    temperature: float = 1.0
    ood_rule: dict[str, Any] | None = None
    contract: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    trust: dict[str, Any] | None = None
    input_projection: Projection | None = None  # from the version's monitor reference: the log's features
    output_projection: Projection | None = None
    _preprocessor: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        registry: Registry,
        ref: str,
        *,
        threads: int | None = None,
        workdir: Path | str,
        trust_pickle: bool = False,
        trust_factory: bool = False,
    ) -> ServedModel:
        """Resolve ``ref``, copy the version's files under ``workdir`` and load its Runner once.

        A pickle-based or factory-built version loads only with its trust record, or with ``trust_pickle`` /
        ``trust_factory`` standing in for a missing one (ArtifactError otherwise, before any file is copied);
        a pickle-based file is scanned before it is unpickled, record or not."""
        name, version = registry.resolve(ref)
        info = registry.get_version(name, version)
        label = f"{name}:{version}"
        status = require_trust(
            info["manifest"], label=label, trust_pickle=trust_pickle, trust_factory=trust_factory
        )
        Path(workdir).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=workdir))
        try:
            registry.materialize(name, version, folder)
            cand = relocate(info["manifest"], folder)
            if status.needed == PICKLE:
                try:
                    require_safe(cand.path, trust_pickle=True)
                except UnsafeModelError as exc:
                    raise UnsafeModelError(f"{label}: {exc}") from None
            spin, spin_why = ort_spinning(info.get("evidence"))
            runner = cand.load(threads=threads, spin=spin)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        model = cls(
            name=name,
            version=version,
            ref=ref,
            candidate=cand,
            runner=runner,
            evidence=info.get("evidence"),
            folder=folder,
            trust=dict(status.record) if status.record is not None else None,
        )
        if status.needed is not None and status.record is None:
            note = f"served on {status.serve_flag} without a trust record ({status.problem})"
            model.notes.append(note)
            log.warning("%s: %s", label, note)
        if cand.format == "onnx":
            model.notes.append(spin_why)
        model._read_serving_rules()
        model.input_projection, model.output_projection, why = served_projections(folder)
        if why:
            model.notes.append(why)
        return model

    def _read_serving_rules(self) -> None:
        serving = self.candidate.meta.get("serving") or {}
        t = serving.get("temperature")
        if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0:
            self.temperature = float(t)
        else:
            self.notes.append("no fitted temperature: probabilities use T = 1")
        rule = serving.get("ood")
        if (
            self.task == "classification"
            and isinstance(rule, Mapping)
            and rule.get("score") in OOD_SCORES
            and isinstance(rule.get("threshold"), int | float)
            and math.isfinite(float(rule["threshold"]))
        ):
            self.ood_rule = dict(rule)
        elif rule:
            self.notes.append(
                f"OOD rule {rule.get('score')!r} is not applied by the server (no usable threshold or score)"
            )
        contract = serving.get("input_contract")
        names = [t.name for t in self.runner.spec.inputs]
        if (
            not isinstance(contract, Mapping)
            or [e.get("name") for e in contract.get("inputs") or []] != names
        ):
            if contract:
                log.warning(
                    "%s:%s: the stored input contract does not name the Runner's inputs; using the spec's",
                    self.name,
                    self.version,
                )
            contract = input_contract(self.runner.spec)
        self.contract = dict(contract)

    def close(self) -> None:
        """Remove the materialized files (the Runner keeps what it loaded)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ facts

    @property
    def task(self) -> str:
        return str(self.runner.spec.task)

    @property
    def is_text(self) -> bool:
        return self.candidate.tokenizer_dir is not None

    @property
    def batchable(self) -> bool:
        """Whether several requests can share one call (every input has a dynamic first axis)."""
        return self.is_text or all(t.shape and t.shape[0] is None for t in self.runner.spec.inputs)

    @property
    def platform(self) -> str:
        return platform_of(self.candidate)

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.runner.spec.labels or self.candidate.spec.labels

    @property
    def classes(self) -> tuple[str, ...] | None:
        """A classifier's class names in index order (the indices as strings when it has no labels); None for an
        embedder or when the number of classes is unknown."""
        if self.task != "classification":
            return None
        k = self.runner.spec.num_classes
        if k is None:
            shape = self.runner.spec.outputs[0].shape
            k = shape[-1] if shape else None
        labels = self.labels
        if labels and (k is None or len(labels) == k):
            return tuple(labels)
        return None if k is None else tuple(str(i) for i in range(int(k)))

    @property
    def measurements(self) -> dict[str, SchemaMeasurement]:
        return {} if self.evidence is None else dict(self.evidence.measurements)

    def inputs_metadata(self) -> list[dict[str, Any]]:
        if self.is_text:
            return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
        return [tensor_metadata(t.name, t.dtype, _dims(t.shape)) for t in self.runner.spec.inputs]

    def outputs_metadata(self) -> list[dict[str, Any]]:
        main = self.runner.spec.outputs[0]
        width = main.shape[-1] if main.shape else None
        if self.task != "classification":
            return [tensor_metadata("embedding", main.dtype, [-1, -1 if width is None else int(width)])]
        k = self.runner.spec.num_classes or width
        shape = [-1, -1 if k is None else int(k)]
        out = [
            tensor_metadata("logits", main.dtype, shape),
            tensor_metadata("probabilities", "float32", shape),
        ]
        if self.ood_rule is not None:
            out += [tensor_metadata("ood_score", "float64", [-1]), tensor_metadata("ood_flag", "bool", [-1])]
        return out

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs_metadata()]

    def metadata(self) -> dict[str, Any]:
        """The OIP model metadata response."""
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": self.platform,
            "inputs": self.inputs_metadata(),
            "outputs": self.outputs_metadata(),
        }

    # ------------------------------------------------------------------------------------------ inputs

    def prepare(self, inputs: Sequence[InferInput]) -> PreparedInput:
        """Check OIP request inputs against the metadata and the input contract; ProtocolError(400) lists
        every problem."""
        expected = {m["name"]: m for m in self.inputs_metadata()}
        by_name = match_inputs(self.name, inputs, expected)
        if self.is_text:
            return self.prepare_texts(texts_of(by_name[TEXT_INPUT]))
        return self.prepare_feeds({n: by_name[n].data for n in expected})

    def prepare_texts(self, texts: Sequence[Any]) -> PreparedInput:
        if not texts:
            raise bad_request(f"input {TEXT_INPUT!r} holds no texts; send at least one")
        if not all(isinstance(t, str) for t in texts):
            raise bad_request(f"input {TEXT_INPUT!r} must hold texts (strings)")
        return PreparedInput(rows=len(texts), texts=list(texts))

    def prepare_feeds(self, feeds: Mapping[str, np.ndarray]) -> PreparedInput:
        arrays = {k: owned(v) for k, v in feeds.items()}
        problems = check_inputs(self.contract, arrays)
        if problems:
            raise bad_request("; ".join(problems))
        first = arrays[self.runner.spec.inputs[0].name]
        rows = int(first.shape[0]) if self.batchable and first.ndim else 1
        return PreparedInput(rows=max(rows, 1), feeds=arrays)

    def prepare_json(self, items: Sequence[Any]) -> PreparedInput:
        """Inputs of the simple JSON ``/predict``: texts, rows of an array model's single input, or records
        ``{input name: row}``."""
        if not isinstance(items, Sequence) or isinstance(items, str | bytes) or not items:
            raise bad_request("'inputs' must be a non-empty list of items")
        if self.is_text:
            if not all(isinstance(t, str) for t in items):
                raise bad_request(f"model {self.name!r} takes texts: 'inputs' must be a list of strings")
            return self.prepare_texts(items)
        specs = self.runner.spec.inputs
        columns = json_columns(self.name, specs, items)
        feeds = {t.name: json_array(t, columns[t.name]) for t in specs}
        return self.prepare_feeds(feeds)

    # ------------------------------------------------------------------------------------------ running

    def run_batch(self, items: Sequence[PreparedInput]) -> list[dict[str, np.ndarray]]:
        """One Runner call for ``items`` (one request each); returns every output, split per request."""
        if not items:
            return []
        if self.is_text:
            texts = [t for it in items for t in (it.texts or [])]
            feeds = self.candidate_preprocessor(texts)
        elif len(items) == 1:
            feeds = dict(items[0].feeds or {})
        else:
            feeds = {
                t.name: np.concatenate([(it.feeds or {})[t.name] for it in items], axis=0)
                for t in self.runner.spec.inputs
            }
        raw = np.asarray(self.runner.run(feeds)[self.runner.spec.output_name])
        sizes = [len(it.texts or []) if self.is_text else _rows(it, self) for it in items]
        if raw.ndim == 0 or raw.shape[0] != sum(sizes):
            raise ArtifactError(
                f"{self.name}:{self.version} returned {raw.shape[0] if raw.ndim else 'a scalar'} rows for "
                f"{sum(sizes)} inputs; the model must give one output row per input row"
            )
        outputs = self.outputs_from(raw)
        results = []
        start = 0
        for n in sizes:
            results.append({k: v[start : start + n] for k, v in outputs.items()})
            start += n
        return results

    def candidate_preprocessor(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The candidate's own tokenizer (built once), as offline ``predict`` uses it."""
        if self._preprocessor is None:
            self._preprocessor = self.candidate.preprocessor()
        return dict(self._preprocessor(texts))

    def outputs_from(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Every OIP output from the Runner's main output."""
        if self.task != "classification":
            return {"embedding": raw}
        return classifier_outputs(raw, temperature=self.temperature, ood_rule=self.ood_rule)

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """The simple JSON predictions: label, calibrated probabilities and OOD flag per row, or the embedding."""
        if self.task != "classification":
            return [{"embedding": [float(v) for v in row]} for row in np.asarray(outputs["embedding"])]
        labels = self.labels
        probs = np.asarray(outputs["probabilities"])
        flags = outputs.get("ood_flag")
        scores = outputs.get("ood_score")
        out = []
        for i, row in enumerate(probs):
            idx = int(np.argmax(np.asarray(outputs["logits"])[i]))
            item: dict[str, Any] = {
                "label": labels[idx] if labels and idx < len(labels) else str(idx),
                "class_index": idx,
                "probabilities": [float(p) for p in row],
                "ood": None if flags is None else bool(flags[i]),
            }
            if scores is not None:
                item["ood_score"] = float(scores[i])
            out.append(item)
        return out

    def warm_up(self, calls: int, *, batch_rows: int = 1) -> None:
        """Run a typical input ``calls`` times at one row, then once at ``batch_rows`` rows when larger."""
        items = [self.typical_input()] * calls
        if calls and batch_rows > 1 and self.batchable:
            items.append(self.typical_input(batch_rows))
        for item in items:
            try:
                self.run_batch([item])
            except Exception as exc:
                raise ArtifactError(
                    f"{self.name}:{self.version} failed on a warm-up input: {first_line(exc)}; check the model runs offline"
                ) from None

    def typical_input(self, rows: int = 1) -> PreparedInput:
        if self.is_text:
            return PreparedInput(rows=rows, texts=["warm up"] * rows)
        feeds = {}
        ranges = {e["name"]: e.get("value_range") for e in self.contract.get("inputs", [])}
        for t in self.runner.spec.inputs:
            shape = [
                rows if i == 0 and d is None else (1 if d is None else int(d)) for i, d in enumerate(t.shape)
            ]
            arr = np.zeros(shape, dtype=t.dtype)
            rng = ranges.get(t.name)
            if rng is not None and not (rng[0] <= 0 <= rng[1]):
                arr[...] = rng[0]
            feeds[t.name] = arr
        return PreparedInput(rows=rows if self.batchable else 1, feeds=feeds)


def _rows(item: PreparedInput, model: ServedModel) -> int:
    first = (item.feeds or {})[model.runner.spec.inputs[0].name]
    return int(first.shape[0]) if first.ndim else 1
