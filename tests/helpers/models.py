"""Tiny models and datasets built in code: Gaussian blobs, tiny BERTs with word-level tokenizers and their
texts, and an ONNX MLP with one outlier input channel. Heavy libraries are imported inside the functions,
so importing this module (conftest.py does) stays cheap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.data.dataset import Dataset


def make_blobs(
    n: int = 240, features: int = 6, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, features))
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(size=(n, features))
    return x.astype(np.float32), y.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# tiny BERT classifiers and embedders, and sentiment texts in their vocabulary

SENTIMENT_WORDS = [
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

    words = SENTIMENT_WORDS if words is None else words
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
    from modelyard.candidate import Candidate
    from modelyard.runtime.hf import hf_spec

    build_tiny_bert(folder, classification=task == "classification", **options)
    return Candidate(
        "baseline", "hf", folder, hf_spec(folder, task), tokenizer_dir=folder, meta={"max_length": 32}
    )


def sentiment_texts(n: int = 80, seed: int = 0) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    pos, neg = SENTIMENT_WORDS[:5], SENTIMENT_WORDS[5:10]
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(pos if label else neg, size=3)) + list(
            rng.choice(SENTIMENT_WORDS[10:], size=2)
        )
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


# ---------------------------------------------------------------------------------------------------
# an unlabelled BERT (3 outputs, vocab 100) and random texts of 1-13 words, for the export and int8 passes

TEXT_WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "sleeps",
    "on",
    "mat",
    "big",
    "small",
    "red",
    "blue",
    "house",
    "car",
    "tree",
    "sun",
    "moon",
    "eats",
    "fish",
    "bird",
    "sings",
]


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(TEXT_WORDS, size=int(rng.integers(1, 14)))) for _ in range(n)]


def text_bert_candidate(folder: Path, task: str) -> Candidate:
    """A random 2-layer BERT (hidden 32, 2 heads, vocab 100) with a WordLevel tokenizer, saved as safetensors."""
    return tiny_bert_candidate(folder, task, words=TEXT_WORDS, num_labels=3, labels=None, vocab_size=100)


def text_dataset() -> Dataset:
    from modelyard.data.dataset import Dataset

    return Dataset(
        name="words", modality="text", x_train=texts(40, 1), y_train=None, x_test=texts(20, 2), y_test=None
    )


# ---------------------------------------------------------------------------------------------------
# an MLP with one planted outlier input channel


def outlier_mlp(folder: Path, outlier: float = 100.0) -> tuple[Candidate, Dataset]:
    """features [N, 8] feed two MatMuls (mmA, mmB: one shared smoothing Mul) and a ReduceMax side output
    (must keep reading the raw features); Add, Relu, MatMul (mm2) + Add -> logits [N, 3].
    Feature 0 spans +-``outlier`` and its weights are 1/``outlier`` as large, so it matters as much as
    the others, but one int8 scale for the whole input leaves features 1-7 a few levels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelyard.candidate import Candidate
    from modelyard.data.dataset import Dataset
    from modelyard.runtime.base import RunnerSpec, TensorSpec

    rng = np.random.default_rng(0)
    wa = rng.normal(size=(8, 16)).astype(np.float32)
    wb = rng.normal(size=(8, 16)).astype(np.float32)
    wa[0] /= outlier
    wb[0] /= outlier
    w2 = rng.normal(size=(16, 3)).astype(np.float32)
    b2 = rng.normal(scale=0.1, size=3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "WA"], ["ha"], name="mmA"),
        helper.make_node("MatMul", ["features", "WB"], ["hb"], name="mmB"),
        helper.make_node("Add", ["ha", "hb"], ["h0"], name="add0"),
        helper.make_node("Relu", ["h0"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "W2"], ["l0"], name="mm2"),
        helper.make_node("Add", ["l0", "b2"], ["logits"], name="add2"),
        helper.make_node("ReduceMax", ["features"], ["fmax"], name="rmax", axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("fmax", TensorProto.FLOAT, ["batch", 1]),
        ],
        [numpy_helper.from_array(a, n) for a, n in ((wa, "WA"), (wb, "WB"), (w2, "W2"), (b2, "b2"))],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    def data(n: int) -> np.ndarray:
        x = rng.uniform(-1, 1, size=(n, 8)).astype(np.float32)
        x[:, 0] = rng.uniform(-outlier, outlier, size=n)
        return x

    ds = Dataset(
        name="mlp", modality="tabular", x_train=data(200), y_train=None, x_test=data(100), y_test=None
    )
    spec = RunnerSpec(
        (TensorSpec("features", "float32", (None, 8)),),
        (TensorSpec("logits", "float32", (None, 3)),),
        "classification",
        3,
    )
    return Candidate(name="baseline", format="onnx", path=path, spec=spec), ds
