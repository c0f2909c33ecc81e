"""Trust records: a pickle-based or factory-built model keeps, with its registered version, who let it in, with
which flag, when and what the scan said; the server refuses such a version without one unless a serve flag
stands in for it (and still scans a pickle first). Also: a model whose forward fails with an empty message
gets a one-line error, not an IndexError."""

from __future__ import annotations

import getpass
import zipfile
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelyard.candidate import Candidate
from modelyard.cli import main
from modelyard.config import Policy, Settings
from modelyard.data.dataset import Dataset
from modelyard.errors import ArtifactError, ConfigError, DataError, RegistryError, UnsafeModelError
from modelyard.optimize.baseline import load_baseline
from modelyard.pipeline import EvalOptions, run_pipeline
from modelyard.registry import Registry, VersionEntry
from modelyard.runtime.preprocess import predict
from modelyard.security import scan_file
from modelyard.security.trust import (
    BUILTIN_BY,
    FACTORY,
    PICKLE,
    REBUILD_FACTORY,
    require_trust,
    trust_record,
    trust_status,
)
from modelyard.serve.model import ServedModel
from modelyard.serve.settings import ServeSettings
from tests.helpers.models import make_blobs

QUICK = EvalOptions(
    batch_sizes=(1, 8),
    latency_calls=10,
    min_time_s=0.05,
    measure_rss=False,
    n_resamples=200,
    backdoor_scan=False,
)
TINY_NET = f"{__name__}:tiny_net"


# ---------------------------------------------------------------------------------------------------
# factories imported by reference (as a user's --factory would be)


def tiny_net(hidden: int = 16) -> nn.Module:
    """A user's own classifier: 6 features -> 3 classes."""
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def asserting_net() -> nn.Module:
    """A user's model whose forward checks its input with a bare ``assert`` (an exception with no message)."""

    class Asserting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != 7:
                # what a bare ``assert x.shape[1] == 7`` raises outside pytest, which rewrites the asserts of
                # test modules and would give this one a message
                raise AssertionError
            return self.linear(x)

    return Asserting()


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    x, y = make_blobs(n=240)
    return Dataset("blobs", "tabular", x[:180], y[:180], x[180:], y[180:], classes=["a", "b", "c"])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, blobs: Dataset) -> dict[str, Path]:
    """The same tiny trained-ish net as safetensors (for --factory), TorchScript, and the data as .npz."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("trust-files")
    torch.manual_seed(0)
    net = tiny_net().eval()
    save_file(net.state_dict(), str(d / "net.safetensors"))
    torch.jit.trace(net, torch.from_numpy(blobs.x_test[:2])).save(str(d / "net.pt"))
    save_file(asserting_net().state_dict(), str(d / "asserting.safetensors"))
    np.savez(d / "data.npz", x=blobs.x_train, y=blobs.y_train, x_test=blobs.x_test, y_test=blobs.y_test)
    return {
        "safetensors": d / "net.safetensors",
        "torchscript": d / "net.pt",
        "asserting": d / "asserting.safetensors",
        "data": d / "data.npz",
    }


def _register(
    home: Path, name: str, cand: Candidate, *, drop_trust: bool = False, trust: Any = None
) -> Registry:
    """Register one candidate by hand; ``drop_trust`` stores it as an older modelyard did (no record)."""
    manifest = cand.to_dict()
    meta = {k: v for k, v in manifest["meta"].items() if not (drop_trust and k == "trust")}
    if trust is not None:
        meta["trust"] = trust
    manifest["meta"] = meta
    reg = Registry(home)
    reg.register_run(
        name,
        [VersionEntry(name="baseline", files={cand.path.name: cand.path}, manifest=manifest)],
        run_id=f"{name}-run",
        champion="baseline",
        reason="test",
    )
    return reg


def _check_who_when(record: dict[str, Any], *, by: str) -> None:
    assert record["by"] == by
    at = datetime.fromisoformat(record["at"])
    assert at.utcoffset() == timedelta(0)
    assert abs((datetime.now(at.tzinfo) - at).total_seconds()) < 600


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------
# records made when a model is let in


def test_torchscript_baseline_records_pickle_trust_and_registers_it(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path
) -> None:
    cand = load_baseline(files["torchscript"], blobs, trust_pickle=True)
    record = cand.meta["trust"]
    assert record["kind"] == PICKLE and record["flag"] == "--trust-pickle"
    assert record["scan"] == {"status": "pass", "format": "torchscript", "findings": []}
    _check_who_when(record, by=_user())

    reg = _register(tmp_path / "home", "scripted", cand)
    stored = reg.get_version("scripted", 1)
    assert stored["trust"] == record
    assert stored["manifest"]["meta"]["trust"] == record

    model = ServedModel.load(reg, "scripted:1", threads=1, workdir=tmp_path / "work")
    try:
        assert model.trust == record
        assert not any("trust" in n for n in model.notes)
        x = blobs.x_test[:4]
        np.testing.assert_array_equal(
            model.run_batch([model.prepare_feeds({"input": x})])[0]["logits"],
            predict(cand.load(), cand.preprocessor(), x),
        )
    finally:
        model.close()


def test_factory_baseline_records_the_factory(files: dict[str, Path], blobs: Dataset) -> None:
    cand = load_baseline(files["safetensors"], blobs, factory=TINY_NET)
    record = cand.meta["trust"]
    assert record["kind"] == FACTORY and record["flag"] == "--factory"
    assert record["factory"] == TINY_NET and record["builtin"] is False
    assert record["scan"]["status"] == "pass" and record["scan"]["format"] == "safetensors"
    _check_who_when(record, by=_user())


def test_builtin_demo_factory_is_recorded_as_builtin(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from modelyard.zoo.demos import _classifier
    from modelyard.zoo.nets import tabular_mlp

    path = tmp_path / "model.safetensors"
    save_file(tabular_mlp().state_dict(), str(path))
    x, y = make_blobs(n=20, features=30, classes=2)
    ds = Dataset("t", "tabular", x[:10], y[:10], x[10:], y[10:], classes=["no", "yes"])
    cand = _classifier(path, "modelyard.zoo.nets:tabular_mlp", "features", (30,), ds)
    record = cand.meta["trust"]
    assert record["kind"] == FACTORY and record["builtin"] is True
    assert record["factory"] == "modelyard.zoo.nets:tabular_mlp"
    assert record["scan"]["status"] == "pass"
    _check_who_when(record, by=BUILTIN_BY)
    assert trust_status(cand.format, cand.meta).ok


# ---------------------------------------------------------------------------------------------------
# the serving loader


def test_serving_refuses_a_pickle_version_without_a_record_unless_trusted(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path
) -> None:
    cand = load_baseline(files["torchscript"], blobs, trust_pickle=True)
    reg = _register(tmp_path / "home", "old-scripted", cand, drop_trust=True)
    assert reg.get_version("old-scripted", 1)["trust"] is None
    work = tmp_path / "work"
    with pytest.raises(ArtifactError, match=r"old-scripted:1 is a pickle-based torchscript .*--trust-pickle"):
        ServedModel.load(reg, "old-scripted:1", threads=1, workdir=work)
    assert not work.exists() or not any(work.iterdir())  # refused before any file was copied
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        ServedModel.load(reg, "old-scripted:1", threads=1, workdir=work, trust_factory=True)

    model = ServedModel.load(reg, "old-scripted:1", threads=1, workdir=work, trust_pickle=True)
    try:
        assert model.trust is None
        assert any("served on --trust-pickle without a trust record" in n for n in model.notes)
        assert model.run_batch([model.typical_input()])[0]["logits"].shape == (1, 3)
    finally:
        model.close()


def test_serving_refuses_a_factory_version_without_a_record_unless_trusted(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path
) -> None:
    cand = load_baseline(files["safetensors"], blobs, factory=TINY_NET)
    reg = _register(tmp_path / "home", "old-factory", cand, drop_trust=True)
    with pytest.raises(ArtifactError, match=rf"factory '{TINY_NET}' .*--trust-factory"):
        ServedModel.load(reg, "old-factory:1", threads=1, workdir=tmp_path / "work")
    model = ServedModel.load(reg, "old-factory:1", threads=1, workdir=tmp_path / "work", trust_factory=True)
    try:
        assert any("--trust-factory" in n for n in model.notes)
    finally:
        model.close()


def test_a_record_for_another_factory_does_not_cover_this_one(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path
) -> None:
    cand = load_baseline(files["safetensors"], blobs, factory=TINY_NET)
    other = {**cand.meta["trust"], "factory": "modelyard.zoo.nets:tabular_mlp"}
    reg = _register(tmp_path / "home", "swapped", cand, trust=other)
    with pytest.raises(ArtifactError, match=r"trust record is for factory 'modelyard.zoo.nets:tabular_mlp'"):
        ServedModel.load(reg, "swapped:1", threads=1, workdir=tmp_path / "work")


def _with_hostile_member(src: Path, dest: Path) -> Path:
    """The TorchScript archive plus a pickle member that would call os.system if anything unpickled it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/extra.pkl", b"cos\nsystem\n(S'echo never-run'\ntR.")
    return dest


def test_trust_pickle_still_scans_and_refuses_a_hostile_file(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path
) -> None:
    cand = load_baseline(files["torchscript"], blobs, trust_pickle=True)
    hostile = _with_hostile_member(files["torchscript"], tmp_path / "net.pt")
    assert not scan_file(hostile).ok
    reg = _register(tmp_path / "home", "hostile", replace(cand, path=hostile), drop_trust=True)
    with pytest.raises(
        UnsafeModelError, match=r"hostile:1: refused .*security scan verdict is fail.*os\.system"
    ):
        ServedModel.load(reg, "hostile:1", threads=1, workdir=tmp_path / "work", trust_pickle=True)
    # a record stored with the version does not skip the scan either
    reg2 = _register(tmp_path / "home2", "hostile", replace(cand, path=hostile))
    with pytest.raises(UnsafeModelError, match="security scan verdict is fail"):
        ServedModel.load(reg2, "hostile:1", threads=1, workdir=tmp_path / "work")


def test_serve_command_refuses_in_one_line_naming_the_flag(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = load_baseline(files["torchscript"], blobs, trust_pickle=True)
    home = tmp_path / "home"
    _register(home, "old-scripted", cand, drop_trust=True)
    code = main(["serve", "old-scripted:1", "--home", str(home), "--port", "1"])
    out = capsys.readouterr()
    text = (out.err + out.out).strip()
    assert code == 2, text
    assert "Traceback" not in text and text.startswith("error:")
    assert "--trust-pickle" in " ".join(text.split())


def test_serve_settings_take_the_trust_flags() -> None:
    s = ServeSettings.from_env({}, trust_pickle=True)
    assert s.trust_pickle and not s.trust_factory
    with pytest.raises(ConfigError, match="trust_factory must be true or false"):
        ServeSettings(trust_factory="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# the record itself


def test_registry_refuses_a_malformed_record(files: dict[str, Path], blobs: Dataset, tmp_path: Path) -> None:
    cand = load_baseline(files["torchscript"], blobs, trust_pickle=True)
    with pytest.raises(RegistryError, match=r"trust record of candidate 'baseline' .*no 'by'"):
        _register(tmp_path / "home", "bad", cand, trust={**cand.meta["trust"], "by": ""})
    failed_scan = {
        **cand.meta["trust"],
        "scan": {"status": "fail", "format": "torchscript", "findings": ["x"]},
    }
    with pytest.raises(RegistryError, match="status 'fail'"):
        _register(tmp_path / "home", "bad", cand, trust=failed_scan)
    assert Registry(tmp_path / "home").list_models() == []


def test_trust_status_of_each_kind_of_model(files: dict[str, Path]) -> None:
    scan = scan_file(files["safetensors"])
    record = trust_record(FACTORY, flag="--factory", scan=scan, factory=TINY_NET)
    factory_meta = {"torch_kind": "safetensors", "factory": TINY_NET, "factory_kwargs": {}}
    assert trust_status("onnx", {"trust": record}).needed is None
    assert trust_status("hf", {}).ok
    assert trust_status("torch", factory_meta).problem == "no trust record"
    assert trust_status("torch", {**factory_meta, "trust": record}).ok
    rebuilt = {
        "torch_kind": "safetensors",
        "factory": REBUILD_FACTORY,
        "factory_kwargs": {"factory": TINY_NET, "factory_kwargs": {}, "shapes": {}},
        "trust": record,
    }
    assert trust_status("torch", rebuilt).ok  # the rebuild of a pruned module runs the same factory
    assert trust_status("torch", {"torch_kind": "export", "trust": record}).problem == (
        "its trust record is for a factory, not a pickle"
    )
    with pytest.raises(ArtifactError, match="needs the factory reference"):
        trust_record(FACTORY, flag="--factory", scan=scan)
    with pytest.raises(ArtifactError, match=r"rebuilt by factory .*--trust-factory"):
        require_trust({"format": "torch", "meta": factory_meta}, label="m:1")
    assert (
        require_trust({"format": "torch", "meta": factory_meta}, label="m:1", trust_factory=True).record
        is None
    )


def test_rebuild_factory_name_matches_the_prune_pass() -> None:
    from modelyard.optimize.passes.surgery import REBUILD_REF

    assert REBUILD_FACTORY == REBUILD_REF


# ---------------------------------------------------------------------------------------------------
# the pipeline: derived versions carry the baseline's record, ONNX versions none; models show prints it


def test_pipeline_registers_the_record_with_every_version_that_needs_it(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    base = load_baseline(files["safetensors"], blobs, factory=TINY_NET)
    result = run_pipeline(
        base,
        blobs,
        model_name="tiny",
        model_source="test",
        recipes=["onnx", "prune(0.5)"],
        policy=Policy(),
        settings=Settings(home=home, threads=1),
        options=QUICK,
    )
    assert set(result.versions) == {"baseline", "onnx", "prune(0.5)"}, result.evidence["skipped"]
    reg = Registry(home)
    record = base.meta["trust"]
    by_candidate = {v["candidate"]: reg.get_version("tiny", v["version"]) for v in reg.list_versions("tiny")}
    assert by_candidate["baseline"]["trust"] == record
    assert by_candidate["prune(0.5)"]["trust"] == {**record, "inherited_from": "baseline"}
    assert by_candidate["onnx"]["trust"] is None
    assert "trust" not in by_candidate["onnx"]["manifest"]["meta"]

    pruned = result.versions["prune(0.5)"]
    model = ServedModel.load(reg, f"tiny:{pruned}", threads=1, workdir=tmp_path / "work")
    model.close()

    assert main(["models", "show", f"tiny:{result.versions['baseline']}", "--home", str(home)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"factory {TINY_NET}: by {_user()} with --factory at {record['at']}, scan pass" in shown
    assert main(["models", "show", f"tiny:{result.versions['onnx']}", "--home", str(home)]) == 0
    assert "not needed" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------------
# a model that fails with an empty message


def test_a_bare_assert_in_forward_is_a_one_line_error(
    files: dict[str, Path], blobs: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    factory = f"{__name__}:asserting_net"
    with pytest.raises(
        DataError, match=r"cannot run on the data: .* failed with AssertionError; check"
    ) as info:
        load_baseline(files["asserting"], blobs, factory=factory)
    assert "\n" not in str(info.value)

    home = tmp_path / "home"
    argv = ["optimize", "--model", str(files["asserting"]), "--data", str(files["data"])]
    code = main([*argv, "--factory", factory, "--home", str(home)])
    out = capsys.readouterr()
    text = (out.err + out.out).strip()
    assert code == 2, text
    assert "Traceback" not in text and "IndexError" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and "AssertionError" in " ".join(ln.strip() for ln in lines)
    assert not (home / "registry.db").exists()
