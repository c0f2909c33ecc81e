"""Devices: every Runner says where it runs, the device choice is validated, a GPU runtime is probed with the
reason it is missing, and a GPU target without one is refused before any work (library and CLI)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.cli import main
from modelyard.config import Policy, Settings, load_policy
from modelyard.errors import ConfigError
from modelyard.runtime import device as D
from modelyard.runtime.base import Runner, RunnerSpec, TensorSpec
from modelyard.runtime.onnx import OrtRunner, session_device
from modelyard.runtime.torch import TorchRunner
from tests.helpers.cli import assert_one_line_error

GPU = D.gpu_runtime()
NO_GPU = D.GpuRuntime(
    torch_cuda=False,
    ort_cuda=False,
    torch_note="torch 0.0+cpu is a CPU-only build",
    ort_note="onnxruntime 0.0 has no CUDAExecutionProvider (it has CPUExecutionProvider)",
)
TORCH_ONLY = D.GpuRuntime(True, False, "torch sees 1 CUDA device(s)", NO_GPU.ort_note)

SPEC = RunnerSpec(
    inputs=(TensorSpec("x", "float32", (None, 3)),),
    outputs=(TensorSpec("logits", "float32", (None, 2)),),
    task="classification",
    num_classes=2,
)


def _linear() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).eval()


# ---------------------------------------------------------------------------------------------------
# runners report their device


def test_ort_runner_reports_the_cpu_and_its_providers(onnx_classifier: tuple[Path, Path]) -> None:
    runner = OrtRunner(onnx_classifier[0])
    assert runner.device == "cpu"
    assert runner.providers == ("CPUExecutionProvider",)
    assert isinstance(runner, Runner)
    out = runner.run({"features": np.zeros((2, 6), np.float32)})["logits"]
    assert out.shape == (2, 3)


def test_torch_runner_reports_the_cpu() -> None:
    runner = TorchRunner(_linear(), spec=SPEC)
    assert runner.device == "cpu"
    assert isinstance(runner, Runner)
    out = runner.run({"x": np.ones((4, 3), np.float32)})["logits"]
    assert out.shape == (4, 2) and out.dtype == np.float32


def test_candidate_load_passes_the_device_choice(onnx_classifier: tuple[Path, Path], tmp_path: Path) -> None:
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    model, data = onnx_classifier
    cand = load_baseline(model, load_dataset(data))
    assert cand.load(device="cpu").device == "cpu"
    assert cand.load(threads=1, spin=False).device == "cpu"  # the serving call keeps working
    with pytest.raises(ConfigError, match=r"device must be 'cpu', 'gpu' or 'cuda:N'.*got 'tpu'"):
        cand.load(device="tpu")
    torch_cand = Candidate("t", "torch", tmp_path / "missing.safetensors", SPEC)
    with pytest.raises(ConfigError, match="got 'metal'"):  # refused before the (missing) module is read
        torch_cand.load(device="metal")


@pytest.mark.parametrize(
    ("choice", "resolved"),
    [("cpu", "cpu"), ("CPU", "cpu"), ("gpu", "cuda:0"), ("cuda", "cuda:0"), ("cuda:3", "cuda:3")],
)
def test_resolve_device(choice: str, resolved: str) -> None:
    assert D.resolve_device(choice) == resolved


@pytest.mark.parametrize("choice", ["tpu", "cuda:", "cuda:x", "gpu:0", ""])
def test_resolve_device_refuses_unknown_choices(choice: str) -> None:
    with pytest.raises(ConfigError, match="device must be 'cpu', 'gpu' or 'cuda:N'"):
        D.resolve_device(choice)


def test_session_device_reads_the_providers_used() -> None:
    class Session:
        def __init__(self, used: list[str], options: dict[str, dict[str, str]]) -> None:
            self.used, self.options = used, options

        def get_providers(self) -> list[str]:
            return self.used

        def get_provider_options(self) -> dict[str, dict[str, str]]:
            return self.options

    cuda = Session(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], {"CUDAExecutionProvider": {"device_id": "1"}}
    )
    assert session_device(cuda) == "cuda:1"
    assert session_device(Session(["CPUExecutionProvider"], {"CPUExecutionProvider": {}})) == "cpu"


# ---------------------------------------------------------------------------------------------------
# the GPU runtime probe


def test_gpu_runtime_says_why_not_when_unusable() -> None:
    if GPU.usable:
        assert GPU.why_not == ""
        return
    assert "torch" in GPU.why_not and "onnxruntime" in GPU.why_not
    assert GPU.reaches("onnx") is GPU.ort_cuda and GPU.reaches("torch") is GPU.torch_cuda


def _fake_ort(available: list[str], used: list[str]) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")

    class Session:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def get_providers(self) -> list[str]:
            return used

    ort.__version__ = "9.9"  # type: ignore[attr-defined]
    ort.get_available_providers = lambda: available  # type: ignore[attr-defined]
    ort.SessionOptions = types.SimpleNamespace  # type: ignore[attr-defined]
    ort.InferenceSession = Session  # type: ignore[attr-defined]
    return ort


@pytest.mark.parametrize(
    ("available", "used", "ok", "note"),
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"], False, "has no CUDAExecutionProvider"),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CPUExecutionProvider"],
            False,
            "built in but sees no CUDA device",
        ),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            True,
            "runs sessions on CUDAExecutionProvider",
        ),
    ],
)
def test_ort_cuda_needs_the_provider_and_a_device(
    monkeypatch: pytest.MonkeyPatch, available: list[str], used: list[str], ok: bool, note: str
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(available, used))
    got, why = D._ort_cuda()
    assert got is ok
    assert note in why


def test_check_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "gpu_runtime", lambda: NO_GPU)
    D.check_target("cpu")  # never needs a GPU
    with pytest.raises(ConfigError) as info:
        D.check_target("gpu")
    message = str(info.value)
    assert "\n" not in message
    assert 'target = "gpu" but no GPU runtime is usable on this machine' in message
    assert NO_GPU.torch_note in message and NO_GPU.ort_note in message
    assert "a CUDA build of torch or onnxruntime" in message and 'set target = "cpu"' in message
    monkeypatch.setattr(D, "gpu_runtime", lambda: TORCH_ONLY)
    D.check_target("gpu")  # one usable runtime is enough to start


# ---------------------------------------------------------------------------------------------------
# asking for a GPU that is not there


@pytest.mark.skipif(GPU.ort_cuda, reason="ONNX Runtime can run on a GPU here")
def test_ort_runner_refuses_a_gpu_it_cannot_reach(onnx_classifier: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match=r"has no CUDAExecutionProvider .* cannot run on cuda:0"):
        OrtRunner(onnx_classifier[0], device="gpu")


@pytest.mark.skipif(GPU.torch_cuda, reason="torch can run on a GPU here")
def test_torch_runner_refuses_a_gpu_it_cannot_reach() -> None:
    with pytest.raises(ConfigError, match=r"torch cannot run on cuda:0 here \(torch .*\); run on a machine"):
        TorchRunner(_linear(), spec=SPEC, device="gpu")


@pytest.mark.skipif(not GPU.torch_cuda, reason="needs torch with a CUDA device")
def test_torch_runner_on_cuda() -> None:  # pragma: no cover - runs on GPU machines only
    runner = TorchRunner(_linear(), spec=SPEC, device="gpu")
    assert runner.device == "cuda:0"
    cpu = TorchRunner(_linear(), spec=SPEC)
    x = {"x": np.ones((4, 3), np.float32)}
    np.testing.assert_allclose(runner.run(x)["logits"], cpu.run(x)["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not GPU.ort_cuda, reason="needs onnxruntime-gpu with a CUDA device")
def test_ort_runner_on_cuda(onnx_classifier: tuple[Path, Path]) -> None:  # pragma: no cover - GPU only
    runner = OrtRunner(onnx_classifier[0], device="gpu")
    assert runner.device == "cuda:0" and runner.providers[0] == "CUDAExecutionProvider"


def test_a_candidate_whose_runtime_cannot_reach_the_gpu_gets_unknown_efficiency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modelyard.evaluate import run
    from modelyard.evaluate.checks import measurement_table

    monkeypatch.setattr(run, "gpu_runtime", lambda: TORCH_ONLY)
    onnx = Candidate("c", "onnx", tmp_path / "m.onnx", SPEC)
    torch_cand = Candidate("t", "torch", tmp_path / "m.safetensors", SPEC)
    assert run._unreachable(onnx, "cpu") is None
    assert run._unreachable(torch_cand, "gpu") is None
    reason = run._unreachable(onnx, "gpu")
    assert reason is not None and "ONNX Runtime cannot run there" in reason and TORCH_ONLY.ort_note in reason
    ms = run._unknown_efficiency(reason, "gpu")
    assert set(ms) == {n for n in measurement_table() if n.startswith("efficiency.")}
    for m in ms.values():
        assert m.status == "unknown" and m.details["reason"] == reason
        assert m.details["device"] == "not loaded (cuda:0 unreachable)"


# ---------------------------------------------------------------------------------------------------
# a GPU target without a GPU runtime: refused at the start of run_pipeline and by the CLI


def _gpu_policy(tmp_path: Path) -> Path:
    path = tmp_path / "gpu.toml"
    path.write_text('[hardware]\ntarget = "gpu"\n')
    return path


def _baseline(onnx_classifier: tuple[Path, Path]) -> tuple[Any, Any]:
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    model, data = onnx_classifier
    ds = load_dataset(data)
    return load_baseline(model, ds), ds


def _refused_before_any_work(tmp_path: Path, onnx_classifier: tuple[Path, Path]) -> None:
    from modelyard.pipeline import run_pipeline

    base, ds = _baseline(onnx_classifier)
    policy = load_policy(_gpu_policy(tmp_path))
    assert policy.hardware.target == "gpu"
    home = tmp_path / "home"
    with pytest.raises(ConfigError, match='target = "gpu" but no GPU runtime is usable') as info:
        run_pipeline(
            base,
            ds,
            model_name="clf",
            model_source="test",
            recipes=["onnx"],
            policy=policy,
            settings=Settings(home=home),
        )
    assert "\n" not in str(info.value)
    assert not home.exists()  # no run folder, no registry, no temporary work


@pytest.mark.skipif(GPU.usable, reason="a GPU runtime is usable on this machine")
def test_gpu_target_without_a_gpu_is_refused_before_any_work(
    tmp_path: Path, onnx_classifier: tuple[Path, Path]
) -> None:
    _refused_before_any_work(tmp_path, onnx_classifier)


def test_gpu_target_refusal_with_the_probe_faked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, onnx_classifier: tuple[Path, Path]
) -> None:
    """The same refusal on any machine: the probe says no GPU runtime."""
    monkeypatch.setattr(D, "gpu_runtime", lambda: NO_GPU)
    _refused_before_any_work(tmp_path, onnx_classifier)


@pytest.mark.skipif(GPU.usable, reason="a GPU runtime is usable on this machine")
def test_cli_gpu_target_without_a_gpu_exits_2_with_one_line(
    tmp_path: Path, home: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    argv = ["optimize", "--model", str(model), "--data", str(data), "--policy", str(_gpu_policy(tmp_path))]
    code = main(argv)
    captured = capsys.readouterr()
    out = captured.err + captured.out
    assert_one_line_error(code, out, 'target = "gpu" but no GPU runtime is usable on this machine')
    assert 'set target = "cpu"' in " ".join(out.split())
    assert len([ln for ln in out.strip().splitlines() if ln.strip()]) == 1
    assert not home.exists()  # nothing written


def test_default_policy_targets_the_cpu() -> None:
    assert Policy().hardware.target == "cpu"
    D.check_target(Policy().hardware.target)
