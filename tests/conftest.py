"""Shared fixtures: tiny models and datasets built in code, and an isolated home folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(h))
    return h


def make_blobs(
    n: int = 240, features: int = 6, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, features))
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(size=(n, features))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def onnx_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own small MLP classifier, trained and exported to ONNX here, with its .npz dataset."""
    import torch

    from modelyard.zoo.train import train_classifier

    d = tmp_path_factory.mktemp("user")
    x, y = make_blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    train_classifier(model, x, y, epochs=20, lr=1e-2, seed=0)
    path = d / "classifier.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 6),),
        str(path),
        dynamo=False,
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
    )
    data = d / "data.npz"
    np.savez(data, x=x, y=y)
    return path, data


WORDS = [
    "good",
    "great",
    "fine",
    "nice",
    "happy",
    "bad",
    "awful",
    "poor",
    "sad",
    "terrible",
    "the",
    "a",
    "movie",
    "film",
    "was",
    "is",
    "very",
    "not",
]


def build_tiny_bert(
    folder: Path,
    *,
    classification: bool,
    seed: int = 0,
    words: list[str] | None = None,
    layers: int = 2,
    num_labels: int = 2,
    labels: tuple[str, ...] | None = ("negative", "positive"),
    vocab_size: int | None = None,
    initializer_range: float = 0.02,
    split_on_punctuation: bool = True,
    normalize: bool = False,
) -> Path:
    """A tiny BERT (hidden 32, 2 heads) with a word-level fast tokenizer, saved as a Hugging Face folder.

    ``normalize`` adds a sentence-transformers ``modules.json`` so embeddings are L2-normalised."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    words = WORDS if words is None else words
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = (
        pre_tokenizers.Whitespace() if split_on_punctuation else pre_tokenizers.WhitespaceSplit()
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    label_maps = (
        {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        if labels
        else {}
    )
    cfg = BertConfig(
        vocab_size=vocab_size or len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        initializer_range=initializer_range,
        **label_maps,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg) if classification else BertModel(cfg)
    model.save_pretrained(str(folder))
    if normalize:
        (folder / "modules.json").write_text(
            '[{"idx": 0, "path": "", "type": "sentence_transformers.models.Normalize"}]'
        )
    return folder


def tiny_bert_candidate(folder: Path, task: str, **options: Any) -> Any:
    """``build_tiny_bert`` wrapped as the baseline Candidate of an hf model."""
    from modelyard.optimize.candidate import Candidate
    from modelyard.runtime.hf import hf_spec

    build_tiny_bert(folder, classification=task == "classification", **options)
    return Candidate(
        "baseline", "hf", folder, hf_spec(folder, task), tokenizer_dir=folder, meta={"max_length": 32}
    )


def sentiment_texts(n: int = 80, seed: int = 0) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    pos, neg = WORDS[:5], WORDS[5:10]
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(pos if label else neg, size=3)) + list(rng.choice(WORDS[10:], size=2))
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="session")
def zoo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per test session where the demos train once and are cached."""
    return tmp_path_factory.getbasetemp() / "modelyard-pass-zoo"


@pytest.fixture(scope="session")
def digits(zoo_home: Path):  # type: ignore[no-untyped-def]
    import torch

    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    return load_demo("digits", zoo_home)


@pytest.fixture(scope="session")
def tabular(zoo_home: Path):  # type: ignore[no-untyped-def]
    import torch

    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    return load_demo("tabular", zoo_home)


def pass_context(tmp_path: Path, dataset, name: str = "step"):  # type: ignore[no-untyped-def]
    from modelyard.optimize.registry import PassContext

    workdir = tmp_path / name
    workdir.mkdir()
    return PassContext(workdir=workdir, dataset=dataset, seed=0)


def accuracy_of(cand, ds) -> float:  # type: ignore[no-untyped-def]
    from modelyard.runtime.preprocess import predict

    logits = predict(cand.load(), cand.preprocessor(), ds.x_test)
    return float((logits.argmax(1) == ds.y_test).mean())
