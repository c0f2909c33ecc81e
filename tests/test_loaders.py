import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.data.loaders import load_dataset
from modelyard.errors import DataError


def test_npz_split_is_stratified_and_fixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 5)).astype(np.float32), np.repeat([0, 1], 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a, b = load_dataset(tmp_path / "d.npz"), load_dataset(tmp_path / "d.npz")
    assert a.n_test == 20 and a.n_train == 80 and a.modality == "tabular"
    assert np.bincount(a.y_test).tolist() == [10, 10]
    assert a.fingerprint() == b.fingerprint()


def test_npz_with_explicit_test_split(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz",
        x=np.zeros((8, 1, 4, 4)),
        y=np.arange(8) % 2,
        x_test=np.ones((3, 1, 4, 4)),
        y_test=[0, 1, 0],
    )
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.n_test == 3 and ds.modality == "image"


def test_csv_with_string_labels(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    ds = load_dataset(tmp_path / "d.csv")
    assert ds.classes == ["cat", "dog"] and ds.x_train.shape[1] == 2


def test_jsonl(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    ds = load_dataset(tmp_path / "d.jsonl")
    assert ds.modality == "text" and ds.n_test == 2 and isinstance(ds.x_test, list)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("d.parquet", b"PAR1", r"unknown data format '.parquet'"),
        ("d.npz", None, r"must hold arrays 'x' and 'y'"),
        ("d.csv", b"a,b,label\n", r"is empty"),
        ("d.csv", b"a,b,target\n1,2,0\n", r"no label column 'label'"),
        ("d.jsonl", b"", r"is empty"),
        ("d.jsonl", b"{not json}\n", r"line 1 is not valid JSON"),
    ],
)
def test_bad_data(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    p = tmp_path / name
    if content is None:
        np.savez(p, features=np.zeros((3, 2)))
    else:
        p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_dataset(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz")


def test_npz_empty_and_nan(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3)), y=np.zeros(0, dtype=int))
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "e.npz")
    x = np.zeros((10, 2))
    x[3, 1] = np.nan
    np.savez(tmp_path / "n.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(DataError, match="NaN or infinity"):
        load_dataset(tmp_path / "n.npz")


def test_npz_calibration_split_is_used_and_never_the_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.normal(size=(40, 3)),
        y=np.arange(40) % 2,
        x_cal=rng.normal(size=(10, 3)),
        y_cal=np.arange(10) % 2,
    )
    ds = load_dataset(tmp_path / "d.npz")
    cal = ds.calibration_split()
    assert cal is not None
    x, _y, how = cal
    assert len(x) == 10 and "declared" in how
    assert ds.describe()["n_cal"] == 10


def test_calibration_split_falls_back_to_a_stratified_part_of_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(100, 3)), y=np.arange(100) % 2)
    ds = load_dataset(tmp_path / "d.npz")
    cal = ds.calibration_split()
    assert cal is not None
    x, y, how = cal
    assert len(x) == 16 and np.bincount(y).tolist() == [8, 8] and "train split" in how
    # every calibration item is a training item, none is a test item
    train_rows = {r.tobytes() for r in ds.x_train}
    test_rows = {r.tobytes() for r in ds.x_test}
    assert all(r.tobytes() in train_rows and r.tobytes() not in test_rows for r in x)


def test_npz_half_a_calibration_split_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2)), y=np.arange(8) % 2, x_cal=np.zeros((2, 2)))
    with pytest.raises(DataError, match="needs both 'x_cal' and 'y_cal'"):
        load_dataset(tmp_path / "d.npz")


def test_csv_slice_columns_are_kept_out_of_the_features(tmp_path: Path) -> None:
    rows = ["a,b,region,label"] + [f"{i},{i * 2},{'north' if i % 3 else 'south'},{i % 2}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    ds = load_dataset(tmp_path / "d.csv", slice_columns=("region",))
    assert ds.x_train.shape[1] == 2
    assert set(ds.slices) == {"region"} and len(ds.slices["region"]) == ds.n_test
    assert set(ds.slices["region"]) <= {"north", "south"}


def test_csv_unknown_slice_column_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n3,0\n4,1\n")
    with pytest.raises(DataError, match="no slice column\\(s\\) 'nope'; columns: a, label"):
        load_dataset(tmp_path / "d.csv", slice_columns=("nope",))


def test_ood_sets_load_from_npz_jsonl_and_txt(tmp_path: Path) -> None:
    from modelyard.data.loaders import load_ood_set

    np.savez(tmp_path / "noise.npz", x=np.zeros((12, 1, 8, 8)))
    assert load_ood_set(tmp_path / "noise.npz")["noise"].shape == (12, 1, 8, 8)
    (tmp_path / "o.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_ood_set(tmp_path / "o.jsonl") == {"o": ["a", "b"]}
    (tmp_path / "o.txt").write_text("one\n\ntwo\n")
    assert load_ood_set(tmp_path / "o.txt") == {"o": ["one", "two"]}
    with pytest.raises(DataError, match="unknown OOD data format"):
        (tmp_path / "o.bin").write_bytes(b"x")
        load_ood_set(tmp_path / "o.bin")
