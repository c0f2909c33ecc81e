"""The built-in sentence set of the minilm demo is well formed (no model is loaded here)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import modelyard.zoo

SENTENCES_PATH = Path(modelyard.zoo.__file__).with_name("minilm_sentences.json")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    loaded = json.loads(SENTENCES_PATH.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise TypeError(f"{SENTENCES_PATH} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def test_keys_and_version(data: dict[str, Any]) -> None:
    assert set(data) == {"version", "description", "sentences", "pairs", "topics", "ood"}
    assert data["version"] == 1
    assert isinstance(data["description"], str) and len(data["description"]) > 20


def test_counts_within_ranges(data: dict[str, Any]) -> None:
    assert 320 <= len(data["sentences"]) <= 400
    assert 100 <= len(data["pairs"]) <= 130
    assert len(data["ood"]) == 60


def test_sentences_are_non_empty_strings_of_3_to_40_words(data: dict[str, Any]) -> None:
    for s in data["sentences"]:
        assert isinstance(s, str)
        assert 3 <= len(s.split()) <= 40, s


def test_no_duplicate_sentences(data: dict[str, Any]) -> None:
    counts = Counter(_norm(s) for s in data["sentences"])
    dupes = [s for s, n in counts.items() if n > 1]
    assert dupes == []


def test_pair_indices_valid_distinct_and_used_once(data: dict[str, Any]) -> None:
    n = len(data["sentences"])
    used: list[int] = []
    for pair in data["pairs"]:
        assert isinstance(pair, list) and len(pair) == 2, pair
        i, j = pair
        assert isinstance(i, int) and isinstance(j, int) and not isinstance(i, bool), pair
        assert 0 <= i < n and 0 <= j < n, pair
        assert i != j, pair
        used += [i, j]
    assert len(used) == len(set(used)), "a sentence appears in more than one pair"


def test_pairs_have_different_wording(data: dict[str, Any]) -> None:
    sents = data["sentences"]
    for i, j in data["pairs"]:
        a = set(re.findall(r"[a-z0-9']+", sents[i].lower()))
        b = set(re.findall(r"[a-z0-9']+", sents[j].lower()))
        # a paraphrase is more than one swapped word: the two word sets differ in at least 3 words
        assert len(a ^ b) >= 3, (sents[i], sents[j])


def test_topics_align_and_cover_at_least_15(data: dict[str, Any]) -> None:
    topics = data["topics"]
    assert len(topics) == len(data["sentences"])
    assert all(isinstance(t, str) and t.strip() for t in topics)
    assert len(set(topics)) >= 15


def test_pairs_share_a_topic(data: dict[str, Any]) -> None:
    topics = data["topics"]
    for i, j in data["pairs"]:
        assert topics[i] == topics[j], (i, j)


def test_unpaired_sentences_exist_in_every_topic(data: dict[str, Any]) -> None:
    # hard negatives: each topic has sentences outside any pair, so recall@1 is not trivial
    paired = {k for pair in data["pairs"] for k in pair}
    unpaired_topics = {t for k, t in enumerate(data["topics"]) if k not in paired}
    assert unpaired_topics == set(data["topics"])


def test_ood_inputs_are_distinct_strings_not_in_the_set(data: dict[str, Any]) -> None:
    ood = data["ood"]
    assert all(isinstance(s, str) and s.strip() for s in ood)
    assert len({_norm(s) for s in ood}) == len(ood)
    assert not {_norm(s) for s in ood} & {_norm(s) for s in data["sentences"]}


def test_file_is_ascii_json(data: dict[str, Any]) -> None:
    # non-ASCII text is stored as JSON escapes, so any platform's default encoding reads the file
    SENTENCES_PATH.read_bytes().decode("ascii")
    assert any(not s.isascii() for s in data["ood"])
