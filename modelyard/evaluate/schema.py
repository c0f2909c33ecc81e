"""The Evidence schema: typed, frozen, versioned models of ``evidence.json``.

``RunEvidence`` is one run's evidence (schema ``modelyard.evidence/2``); its JSON Schema is shipped beside
this module as ``evidence.schema.json`` (rewrite it with ``python -m modelyard.evaluate.schema`` after
changing a model; a test fails when the two differ).

Strict where the shape is ours: every model forbids unknown keys, and numbers, strings and booleans are
not coerced (``"0.5"`` is not a number, ``1`` is not ``true``, NaN and infinities are not numbers). Free-form where another module owns the
shape: a measurement's ``details``, a candidate's ``meta``, a pass's ``config``, the serving rule's ``ood``
and ``input_contract``, and the run's ``policy``, ``audit`` and ``suite`` are JSON objects of any keys.
Optional fields added within version 2 (a candidate's ``runtime``) may be absent: files written before
them still load. Beyond the JSON Schema, the models check cross-references: candidate names are unique, every parent,
the champion and the Pareto names are candidates, each measurement is filed under its own name, and a
measurement's value is null exactly when its status is ``"unknown"``.

``load_evidence`` reads the current version and the previous one (``modelyard.evidence/1``, through
``migrate_v1``); ``validate_evidence`` checks a dict of the current version, as the writer of
``evidence.json`` does before writing. Both raise ``DataError`` naming the first invalid field.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from modelyard.data.dataset import Modality
from modelyard.errors import DataError
from modelyard.evaluate.evidence import Status
from modelyard.runtime.base import Task

SCHEMA_VERSION = "modelyard.evidence/2"
V1 = "modelyard.evidence/1"
SUPPORTED_VERSIONS = (V1, SCHEMA_VERSION)
SCHEMA_FILE = Path(__file__).with_name("evidence.schema.json")

NOT_RECORDED_V1 = f"not recorded ({V1})"

# Scalars are strict: JSON types are not converted into one another (an int is still accepted as a float).
Str = Annotated[str, Strict()]
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
JsonObject = dict[str, Any]

Target = Literal["cpu", "gpu"]  # the choices of the policy's [hardware] target


class _Model(BaseModel):
    """A part of the evidence whose shape is ours: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Measurement(_Model):
    """One check's result, as ``modelyard.evaluate.evidence.Measurement.to_dict`` writes it."""

    name: Str = Field(
        pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$",
        description="stable dotted name, e.g. quality.accuracy (see modelyard.evaluate.checks)",
    )
    value: Float | None = Field(description="the measured value in `unit`; null when status is unknown")
    unit: Str = Field(description="unit of value and interval, e.g. fraction, points, ms, bytes, USD")
    interval: tuple[Float | None, Float | None] | None = Field(
        description="95% interval [low, high] in `unit` (an end is null when not finite); null when none"
    )
    status: Status = Field(description='"ok", or "unknown" when the check could not produce a value')
    details: JsonObject = Field(description="free-form: how it was measured, samples, tables for plots")

    @model_validator(mode="after")
    def _value_matches_status(self) -> Measurement:
        if (self.value is None) != (self.status == "unknown"):
            raise ValueError(
                f"status is {self.status!r} but value is {self.value!r}; a value is null exactly when the "
                "status is 'unknown'"
            )
        return self


class GateResult(_Model):
    """One gate of a verdict, as ``modelyard.gate.verdict`` writes it (value and threshold in the gate's
    scale, e.g. MB for a size budget)."""

    gate: Str
    check: Str = Field(description="the measurement the gate reads")
    passed: Bool | None = Field(description="null: the gate could not be decided")
    value: Float | None = Field(description="the measurement in the gate's scale; null when unknown")
    threshold: Float
    reason: Str


class Verdict(_Model):
    """The policy applied to one candidate: passed when every gate passed."""

    passed: Bool
    gates: list[GateResult]


class PassStep(_Model):
    """One pass of a candidate's lineage and the configuration it ran with."""

    pass_: Str = Field(alias="pass")
    config: JsonObject


class Serving(_Model):
    """The rules a candidate is served with, fitted on the fit part (never on test items)."""

    temperature: Float | None = Field(description="fitted softmax temperature; null when not fitted")
    ood: JsonObject | None = Field(description="free-form OOD rule (score, threshold, ...); null when none")
    input_contract: JsonObject = Field(description="free-form: the inputs the server accepts")


class RuntimeInfo(_Model):
    """The runtime a candidate's checks ran on, as its Runner describes itself (``describe_runner``)."""

    name: Str = Field(min_length=1, description="e.g. onnxruntime, openvino, torch")
    version: Str = Field(description="the runtime package's version")
    settings: JsonObject = Field(
        description="free-form: the settings read back from the runtime (execution providers, threads, "
        "graph optimization level; precision and performance hints, streams; dtype, device)"
    )


class CandidateEvidence(_Model):
    """One candidate: its lineage, artifact, runtime, serving rules, measurements and verdict."""

    name: Str = Field(min_length=1)
    parent: Str | None = Field(description="the candidate it was made from; null for the baseline")
    format: Str = Field(description="artifact format, e.g. torch, onnx, hf")
    runtime: RuntimeInfo | None = Field(
        default=None,
        description="the runtime, its version and settings the efficiency checks ran with; absent in "
        "evidence written before it was recorded",
    )
    passes: list[PassStep]
    artifact_sha256: Str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: Int = Field(ge=0)
    notes: list[Str]
    meta: JsonObject = Field(description="free-form: what the passes recorded (trust, timings, ...)")
    serving: Serving | None
    measurements: dict[str, Measurement] = Field(description="measurement name -> Measurement")
    verdict: Verdict

    @model_validator(mode="after")
    def _keys_are_names(self) -> CandidateEvidence:
        wrong = sorted(k for k, m in self.measurements.items() if k != m.name)
        if wrong:
            raise ValueError(f"measurements {wrong} are filed under a key that is not their name")
        return self


class VersionEvidence(_Model):
    """What the registry keeps of a candidate's evidence with its version: the run it came from, its
    measurements and its verdict (the whole run's evidence is the run's ``evidence.json``)."""

    run_id: Str
    measurements: dict[str, Measurement]
    verdict: Verdict

    @classmethod
    def of(cls, candidate: CandidateEvidence, run_id: str) -> VersionEvidence:
        return cls(run_id=run_id, measurements=candidate.measurements, verdict=candidate.verdict)


class ModelInfo(_Model):
    """The user's model."""

    name: Str
    task: Task
    source: Str
    spec: JsonObject | None = Field(
        description="free-form Runner spec (inputs, outputs, labels); null when not recorded"
    )
    license: Str | None = Field(default=None, description="declared licence, when the caller records one")


class DatasetInfo(_Model):
    """``Dataset.describe()``: what the candidates were measured on."""

    name: Str
    modality: Modality
    n_train: Int = Field(ge=0)
    n_test: Int = Field(ge=0)
    n_cal: Int | None = Field(ge=0, description="calibration items; null when not recorded")
    split: Str = Field(description="how the test items were held out from the fit part")
    slice_columns: list[Str]
    datasheet: JsonObject | None = Field(description="free-form: what the user declared about the data")
    num_classes: Int | None
    classes: list[Str] | None
    paraphrase_pairs: Int = Field(ge=0)
    fingerprint_sha256: Str
    source: Str | None
    license: Str | None


class Hardware(_Model):
    """Where the efficiency figures were taken and the price assumption behind every cost."""

    cpu: Str
    cores: Int
    machine: Str
    isa: dict[str, Bool] = Field(description="instruction-set flags (avx2, avx512, vnni, amx, ...)")
    int8_note: Str
    price_usd_per_hour: Float = Field(ge=0)
    price_source: Str
    target: Target = Field(description="the policy's [hardware] target")
    efficiency_device: Str = Field(
        description="where the efficiency.* figures were taken (the details of each name its device); "
        "'not recorded' when none says"
    )
    int8_measured: list[Str] | None = Field(
        default=None, description="whether int8 paid off, one sentence per int8 candidate; absent when none"
    )


class SkippedStep(_Model):
    """A recipe step that produced no candidate, and why."""

    recipe: Str
    pass_: Str = Field(alias="pass")
    reason: Str


class RunEvidence(_Model):
    """One run's evidence: every candidate's measurements on one dataset, the verdicts and the champion."""

    schema_version: Literal["modelyard.evidence/2"] = Field(alias="schema")
    run_id: Str
    created: Str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", description="ISO-8601 time, UTC")
    model: ModelInfo
    dataset: DatasetInfo
    hardware: Hardware
    policy: JsonObject = Field(description="free-form: Policy.to_dict()")
    candidates: list[CandidateEvidence]
    skipped: list[SkippedStep]
    champion: Str | None = Field(description="the chosen candidate; null when none passed every gate")
    champion_reason: Str
    pareto: list[Str] = Field(description="candidate names on the Pareto frontier")
    audit: JsonObject = Field(description="free-form: the data and model audits")
    caveats: list[Str] = Field(description="sentences that limit what the figures mean")
    suite: JsonObject = Field(description="free-form: how the checks ran (timings, sample sizes, ...)")

    @model_validator(mode="after")
    def _references(self) -> RunEvidence:
        names = [c.name for c in self.candidates]
        problems = sorted({f"candidate name {n!r} appears twice" for n in names if names.count(n) > 1})
        problems += [
            f"candidate {c.name!r} has parent {c.parent!r}, which is not a candidate"
            for c in self.candidates
            if c.parent is not None and c.parent not in names
        ]
        if self.champion is not None and self.champion not in names:
            problems.append(f"champion {self.champion!r} is not a candidate")
        problems += [f"pareto name {p!r} is not a candidate" for p in self.pareto if p not in names]
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ------------------------------------------------------------------------------------ validate + load


def validate_evidence(data: Mapping[str, Any]) -> RunEvidence:
    """``data`` (JSON data, current version) as a RunEvidence; DataError names the first invalid field."""
    if not isinstance(data, Mapping):
        raise DataError(
            f"evidence must be a dict (JSON object), got {type(data).__name__}; "
            "pass the dict that modelyard.pipeline builds or json.load of evidence.json"
        )
    return _validate(data, str(data.get("schema")))


def _validate(data: Mapping[str, Any], version: str) -> RunEvidence:
    try:
        return RunEvidence.model_validate(data)
    except ValidationError as exc:
        raise DataError(_first_problem(exc, version)) from None


def load_evidence(source: str | Path | Mapping[str, Any]) -> RunEvidence:
    """Read evidence from a path to ``evidence.json`` or from its dict, in schema version 2 or 1.

    Version 1 goes through ``migrate_v1`` first. Raises DataError for a missing or unreadable file, an
    unknown schema version or an invalid field.
    """
    if isinstance(source, Mapping):
        data: Any = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"no evidence file at {path}; pass the evidence.json a run wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"cannot read evidence from {path}: {type(exc).__name__}: {exc}; pass a JSON file"
            ) from None
    if not isinstance(data, dict):
        raise DataError(f"evidence must be a JSON object, got {type(data).__name__}")
    version = data.get("schema")
    if version == V1:
        return _validate(migrate_v1(data), f"{V1}, migrated to {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        readable = " and ".join(map(repr, SUPPORTED_VERSIONS))
        raise DataError(f"evidence schema is {version!r}; this modelyard reads {readable}")
    return _validate(data, SCHEMA_VERSION)


def migrate_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``modelyard.evidence/1`` dict as ``modelyard.evidence/2``; ``data`` is not changed.

    Version 1 had no fixed shape: its writers added keys over time. What a v1 file lacks gets a stated
    default, never a measurement:

    - ``hardware.target``: the v1 file's own ``policy.hardware.target`` (what v2 records), else ``"cpu"``
      (the policy's default target);
    - ``hardware.efficiency_device``, ``hardware.machine``, ``dataset.split``: ``"not recorded
      (modelyard.evidence/1)"``;
    - ``dataset.n_cal``, ``model.spec``: null (not recorded);
    - ``dataset.slice_columns``: ``[]`` and ``dataset.datasheet``: null (v1 writers without these keys
      had no slices and no datasheets);
    - ``audit``: ``{"data": {}, "model": {}}`` (no audit recorded, as v2 writes when none ran),
      ``caveats``: ``[]``, ``suite``: ``{}``;
    - a candidate's ``meta``: ``{}`` and ``serving``: null (no serving rules recorded).

    Keys a v1 file has are kept as they are; the measurements are not touched.
    """
    if data.get("schema") != V1:
        raise DataError(f"migrate_v1 reads schema {V1!r}, got {data.get('schema')!r}")
    out = copy.deepcopy(dict(data))
    out["schema"] = SCHEMA_VERSION
    policy = out.get("policy")
    target = (policy.get("hardware") or {}).get("target") if isinstance(policy, dict) else None
    _defaults(
        out.get("hardware"),
        target=target if target in ("cpu", "gpu") else "cpu",
        efficiency_device=NOT_RECORDED_V1,
        machine=NOT_RECORDED_V1,
    )
    _defaults(
        out.get("dataset"),
        split=NOT_RECORDED_V1,
        n_cal=None,
        slice_columns=[],
        datasheet=None,
    )
    _defaults(out.get("model"), spec=None)
    _defaults(out, audit={"data": {}, "model": {}}, caveats=[], suite={})
    for cand in out.get("candidates") or []:
        _defaults(cand, meta={}, serving=None)
    return out


def _defaults(section: Any, /, **values: Any) -> None:
    if isinstance(section, dict):
        for key, value in values.items():
            section.setdefault(key, value)


def _first_problem(exc: ValidationError, version: str) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = _location(first["loc"])
    msg = " ".join(str(first["msg"]).split()).removeprefix("Value error, ")
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    shown = "" if first["type"] in ("missing", "value_error") else f", got {got}"
    more = f" ({len(errors) - 1} more problem(s) after it)" if len(errors) > 1 else ""
    return (
        f"invalid evidence (schema {version}): {where + ': ' if where else ''}{msg}{shown}{more}; "
        "fix that field or rebuild the evidence with modelyard.pipeline"
    )


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part:
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


# ------------------------------------------------------------------------------------------ JSON Schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``evidence.json``, exported from ``RunEvidence``."""
    return RunEvidence.model_json_schema()


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_schema(path: Path = SCHEMA_FILE) -> Path:
    """Rewrite the shipped ``evidence.schema.json`` from the models."""
    path.write_text(json_schema_text(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m modelyard.evaluate.schema [PATH]``: write the JSON Schema (default: the shipped file)."""
    args = sys.argv[1:] if argv is None else argv
    path = write_json_schema(Path(args[0]) if args else SCHEMA_FILE)
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
