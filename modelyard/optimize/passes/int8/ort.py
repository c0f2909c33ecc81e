"""ONNX Runtime's quantization tools behind small wrappers (``quantize_dynamic_file``,
``quantize_static_file``, ``preprocess_for_static``, ``FeedReader``, ``quiet_ort``), and the plumbing the
int8 passes share: loading and test-running models, calibration feeds, op-type and node listings.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, PassSkipped, first_line

BATCH = 32  # batch size for fidelity measurements


class FeedReader:
    """A CalibrationDataReader over a list of feed dicts (ORT accepts any object with ``get_next``)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._feeds)


class _DropOrtChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ONNX Runtime's quantization chatter (root-logger warnings such as 'Please consider to run
    pre-processing', and the calibrators' prints) for the duration of the block."""
    ort_logger = logging.getLogger("onnxruntime")
    old_level = ort_logger.level
    ort_logger.setLevel(logging.ERROR)
    root = logging.getLogger()
    flt = _DropOrtChatter()
    root.addFilter(flt)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(flt)
        ort_logger.setLevel(old_level)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def require_onnx(candidate: Candidate, pass_name: str) -> None:
    if candidate.format != "onnx":
        raise PassSkipped(
            f"{pass_name} works on ONNX models and this candidate is {candidate.format}; run 'onnx' first"
        )


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ArtifactError(f"cannot read ONNX model {path}: {exc}") from None


def check_runs(path: Path, feeds: dict[str, np.ndarray], pass_name: str, threads: int | None) -> None:
    """Load the produced model and run one batch; a refusal becomes PassSkipped with ORT's reason."""
    from modelyard.optimize.passes.export import run_onnx

    try:
        run_onnx(path, feeds, threads)
    except ArtifactError as exc:
        raise PassSkipped(f"{pass_name}: ONNX Runtime refuses the quantized model ({exc})") from None
    except Exception as exc:  # ORT's runtime errors have private types
        raise PassSkipped(f"{pass_name}: the quantized model fails to run: {first_line(exc)}") from None


def _batches(candidate: Candidate, x: Any, size: int) -> list[dict[str, np.ndarray]]:
    pre = candidate.preprocessor()
    return [pre(x[i : i + size]) for i in range(0, len(x), size)]


def _outputs(path: Path, batches: Sequence[dict[str, np.ndarray]], threads: int | None) -> np.ndarray:
    from modelyard.runtime.onnx import make_session

    sess = make_session(path, threads)
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate(
        [np.asarray(sess.run(None, {k: v for k, v in b.items() if k in names})[0]) for b in batches]
    )


def calibration_feeds(candidate: Candidate, x: Any, method: str) -> list[dict[str, np.ndarray]]:
    """One example per feed. Texts keep their natural length for min/max; the histogram calibrators need
    one shape for every tensor, so for them texts are padded to the longest in the sample."""
    if candidate.tokenizer_dir is not None:
        texts = [str(t) for t in x]
        pre = candidate.preprocessor()
        if method != "minmax":
            longest = int(next(iter(pre(texts).values())).shape[1])
            pre = candidate.preprocessor(pad_to=longest)
        return [pre([t]) for t in texts]
    pre = candidate.preprocessor()
    return [pre(x[i : i + 1]) for i in range(len(x))]


def _new_candidate(candidate: Candidate, path: Path, meta: dict[str, Any], notes: list[str]) -> Candidate:
    return Candidate(
        name=candidate.name,
        format="onnx",
        path=path,
        spec=candidate.spec,
        parent=None,
        passes=[],
        tokenizer_dir=candidate.tokenizer_dir,
        meta={**candidate.meta, **meta},
        notes=notes,
    )


def _count(ops: Sequence[str]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(Counter(ops).items()))


# ---------------------------------------------------------------------------------------------------
# dynamic int8


def dynamic_op_types(exclude: Sequence[str]) -> list[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [op for op in IntegerOpsRegistry if op not in set(exclude)]


def _gemm_names(model: Any) -> set[str]:
    return {n.name for n in model.graph.node if n.op_type == "Gemm" and n.name}


def _with_gemm_aliases(names: Sequence[str], gemms: set[str]) -> list[str]:
    # quantize_dynamic rewrites Gemm "X" into MatMul "X_MatMul" + Add before choosing nodes.
    out = list(names)
    out.extend(f"{n}_MatMul" for n in names if n in gemms)
    return out


def default_reduce_range() -> bool:
    """7-bit weights for dynamic int8 on x86 CPUs without VNNI: there ONNX Runtime's u8s8 kernels
    (VPMADDUBSW) add pairs of products into saturating 16-bit sums, which full-range int8 weights can
    overflow; VNNI, AMX and ARM kernels do not saturate, so full range is kept there."""
    from modelyard.runtime.device import cpu_info

    info = cpu_info()
    return info["machine"] in ("x86_64", "AMD64", "i686") and not (info["isa"]["vnni"] or info["isa"]["amx"])


def quantize_dynamic_file(
    src: Path,
    dst: Path,
    *,
    per_channel: bool,
    reduce_range: bool,
    weight_type: str,
    op_types: Sequence[str],
    gemms: set[str],
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with quiet_ort():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=_quant_type(weight_type),
            nodes_to_quantize=_with_gemm_aliases(nodes_to_quantize, gemms) if nodes_to_quantize else None,
            nodes_to_exclude=_with_gemm_aliases(nodes_to_exclude, gemms),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def dynamic_quantized_nodes(float_model: Any, q_model: Any, op_types: Sequence[str]) -> list[tuple[str, str]]:
    """(name, op_type) of the float model's nodes that quantize_dynamic replaced, in graph order."""
    q_nodes = {n.name: n for n in q_model.graph.node if n.name}
    wanted = set(op_types) | ({"Gemm"} if "MatMul" in op_types else set())
    out = []
    for node in float_model.graph.node:
        if not node.name or node.op_type not in wanted:
            continue
        if node.op_type == "Gemm":
            mm = q_nodes.get(f"{node.name}_MatMul")
            quantized = f"{node.name}_MatMul_quant" in q_nodes or (mm is None and node.name not in q_nodes)
        else:
            same = q_nodes.get(node.name)
            quantized = same is None or list(same.input) != list(node.input)
        if quantized:
            out.append((node.name, node.op_type))
    return out


# ---------------------------------------------------------------------------------------------------
# static int8


def preprocess_for_static(src: Path, dst: Path) -> tuple[Path, str | None]:
    """``quant_pre_process`` (shape inference + basic optimization) into ``dst``; on failure the original
    model is used and the reason returned."""
    from onnxruntime.quantization import quant_pre_process

    try:
        with quiet_ort():
            quant_pre_process(str(src), str(dst))
    except Exception as exc:
        return src, f"quant_pre_process failed ({first_line(exc)}); quantized the model as given"
    return dst, None


def quantize_static_file(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    calibration: str,
    per_channel: bool,
    activation_type: str,
    weight_type: str,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    with quiet_ort():
        quantize_static(
            str(src),
            str(dst),
            FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=_quant_type(activation_type),
            weight_type=_quant_type(weight_type),
            calibrate_method=_calibration_method(calibration),
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
