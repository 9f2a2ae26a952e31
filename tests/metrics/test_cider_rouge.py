"""Tests for showtell.rewards: CIDEr-D and ROUGE-L identical to pycocoevalcap (random corpora, edge cases,
real Flickr8k captions), the fast CiderReward, custom document frequencies and input checks."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from showtell.metrics.cider import CiderReward, DocumentFrequency, cider_d, cider_d_scores
from showtell.metrics.rouge import rouge_l, rouge_l_scores

FLICKR8K = Path(__file__).resolve().parents[3] / "shared" / "flickr8k"
TOLERANCE = 1e-6


def coco_scores(metric: str, hypotheses, references) -> tuple[float, np.ndarray]:
    """pycocoevalcap's corpus value and per-caption scores, given strings as caption_metrics gives them."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    scorer = Cider() if metric == "cider" else Rouge()
    value, scores = scorer.compute_score(gts, res)
    return float(value), np.asarray(scores, dtype=np.float64)


def assert_same_as_coco(hypotheses, references) -> None:
    for metric, corpus, per_caption in [("cider", cider_d, cider_d_scores), ("rouge", rouge_l, rouge_l_scores)]:
        expected_value, expected = coco_scores(metric, hypotheses, references)
        ours = per_caption(hypotheses, references)
        assert ours.dtype == np.float64 and ours.shape == (len(hypotheses),)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE, err_msg=metric)
        assert corpus(hypotheses, references) == pytest.approx(expected_value, abs=TOLERANCE), metric


def random_corpus(seed: int, images: int, vocabulary: int, max_len: int = 15):
    """Hypotheses of 0..max_len words, 1..7 references of 1..max_len words per image, Zipf-like word use."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]
    weights = [1.0 / (rank + 1) for rank in range(vocabulary)]

    def caption(low: int) -> list[str]:
        return rng.choices(words, weights, k=rng.randint(low, max_len))

    hypotheses = [caption(0) for _ in range(images)]
    references = [[caption(1) for _ in range(rng.randint(1, 7))] for _ in range(images)]
    return hypotheses, references


# ---------------------------------------------------------------------------------------------------------
# Equal to pycocoevalcap


@pytest.mark.parametrize(
    "seed, images, vocabulary",
    [(0, 1, 5), (1, 2, 3), (2, 10, 4), (3, 40, 20), (4, 100, 200), (5, 300, 1000), (6, 60, 2)],
)
def test_random_corpora_match_pycocoevalcap(seed, images, vocabulary):
    assert_same_as_coco(*random_corpus(seed, images, vocabulary))


def test_edge_cases_match_pycocoevalcap():
    hypotheses = [
        [],  # empty hypothesis
        ["dog"],  # one word
        ["a", "a", "a", "a", "a", "a"],  # repeated n-grams (clipped by the reference counts)
        ["a", "dog", "runs", "on", "the", "grass"],  # identical to one of its references
        ["a", "dog", "a", "dog", "a", "dog"],
        ["the", "grass"],
        ["dog"],
        [],
    ]
    references = [
        [["a", "dog"], ["a", "cat"]],
        [["dog"], ["a", "dog", "runs"], ["dog", "dog"]],  # one-word reference, different numbers of references
        [["a", "a", "dog"], ["a"], ["a", "a", "a", "a", "a", "a", "a", "a", "a"]],
        [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "is", "running"]],
        [["a", "dog", "a", "dog"]],
        [["the", "grass", "is", "green"], [], ["grass"]],  # an empty reference
        [["cat"]],
        [[]],  # empty hypothesis and empty reference: ROUGE-L 1 in pycocoevalcap (one empty token each)
    ]
    assert_same_as_coco(hypotheses, references)
    assert rouge_l_scores([[]], [[["a"]]])[0] == 0.0
    assert rouge_l_scores([[]], [[[]]])[0] == 1.0


def test_identical_captions_and_single_image():
    # One image alone: every n-gram is in "all" documents, so its idf and its CIDEr are 0 (as in coco-caption).
    caption = ["a", "dog", "runs"]
    assert cider_d_scores([caption], [[caption]])[0] == 0.0
    hypotheses, references = random_corpus(7, 30, 50)
    references = [[h if h else ["x"], *refs] for h, refs in zip(hypotheses, references)]
    assert_same_as_coco(hypotheses, references)


def test_custom_document_frequency_matches_pycocoevalcap_on_a_larger_corpus():
    # pycocoevalcap on images A + B gives A's scores with df and log(num_documents) of A + B: exactly what a
    # DocumentFrequency of the A + B references gives when only A is scored.
    hyps_a, refs_a = random_corpus(8, 50, 30)
    hyps_b, refs_b = random_corpus(9, 80, 30)
    _, expected = coco_scores("cider", hyps_a + hyps_b, refs_a + refs_b)
    df = DocumentFrequency.from_references(refs_a + refs_b)
    assert df.num_documents == 130
    np.testing.assert_allclose(cider_d_scores(hyps_a, refs_a, df), expected[:50], rtol=0, atol=TOLERANCE)
    reward = CiderReward(refs_a + refs_b, df)
    np.testing.assert_allclose(reward(hyps_b, np.arange(50, 130)), expected[50:], rtol=0, atol=TOLERANCE)


@pytest.mark.skipif(not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason="no shared Flickr8k captions")
def test_real_flickr8k_captions_match_pycocoevalcap():
    from showtell.vocab import tokenize

    captions: dict[str, list[list[str]]] = defaultdict(list)
    for line in (FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            key, text = line.split("\t", 1)
            captions[key.split("#")[0]].append(tokenize(text))
    images = [caps for caps in captions.values() if len(caps) == 5][:200]
    assert len(images) == 200
    hypotheses = [caps[0] for caps in images]
    references = [caps[1:] for caps in images]
    assert_same_as_coco(hypotheses, references)
    assert 0.3 < cider_d(hypotheses, references) < 1.5  # human captions against each other: CIDEr ~ 60-90


# ---------------------------------------------------------------------------------------------------------
# CiderReward and document frequencies


def test_cider_reward_equals_cider_d_scores():
    hyps, refs = random_corpus(10, 60, 40)
    df = DocumentFrequency.from_references(random_corpus(11, 200, 40)[1])  # another corpus, e.g. training
    reward = CiderReward(refs, df)
    # several samples per image, in shuffled order, including images never asked for
    rng = np.random.default_rng(0)
    image_index = rng.integers(0, 50, size=150)
    samples = [hyps[rng.integers(0, len(hyps))] for _ in image_index]
    expected = cider_d_scores(samples, [refs[i] for i in image_index], df)
    np.testing.assert_allclose(reward(samples, image_index), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reward(hyps, list(range(60))), cider_d_scores(hyps, refs, df), rtol=0, atol=1e-12)
    # with the evaluated references as df, the reward is coco-caption's CIDEr-D
    own = CiderReward(refs, DocumentFrequency.from_references(refs))
    np.testing.assert_allclose(own(hyps, np.arange(60)), coco_scores("cider", hyps, refs)[1], atol=TOLERANCE)
    assert reward([], []).shape == (0,)


def test_document_frequency_counts_images_not_captions():
    references = [[["a", "dog"], ["a", "dog", "runs"]], [["a", "cat"]], [["the", "dog"]]]
    df = DocumentFrequency.from_references(references)
    assert df.num_documents == 3
    assert df[("a",)] == 2  # twice in image 0, once in image 1
    assert df[("dog",)] == 2
    assert df[("a", "dog")] == 1
    assert df[("a", "dog", "runs")] == 1
    assert df[("dog", "a")] == 0 and df[("zebra",)] == 0 and df[("a", "zebra")] == 0


def test_frequent_ngram_in_the_document_frequency_corpus_contributes_less():
    references = [[["cat", "dog"]]]
    frequent_cat = DocumentFrequency.from_references([[["cat"]]] * 8 + [[["dog"]]] * 2)
    frequent_dog = DocumentFrequency.from_references([[["cat"]]] * 2 + [[["dog"]]] * 8)
    hyps = [["cat"], ["dog"]]
    cat, dog = cider_d_scores(hyps, references * 2, frequent_cat)
    assert 0 < cat < dog
    cat, dog = cider_d_scores(hyps, references * 2, frequent_dog)
    assert 0 < dog < cat
    # a word in every document has idf 0: matching only it earns nothing
    everywhere = DocumentFrequency.from_references([[["cat", "x"]], [["cat", "dog"]], [["cat"]]])
    assert cider_d_scores([["cat"]], references, everywhere)[0] == 0.0
    assert cider_d_scores([["dog"]], references, everywhere)[0] > 0


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "call",
    [
        lambda: cider_d_scores(["a dog"], [[["a", "dog"]]]),  # a string, not a token list
        lambda: cider_d_scores([["a", 1]], [[["a", "dog"]]]),  # a token that is not a string
        lambda: cider_d_scores([["a"]], [[["a"]], [["b"]]]),  # mismatched lengths
        lambda: cider_d_scores([["a"]], [[]]),  # no reference for an image
        lambda: cider_d_scores([["a"]], [[["a", None]]]),
        lambda: cider_d("a dog", ["a dog"]),
        lambda: cider_d([], []),
        lambda: rouge_l_scores([["a"], "b"], [[["a"]], [["b"]]]),
        lambda: rouge_l_scores([["a"]], [[["a"]], [["b"]]]),
        lambda: rouge_l([], []),
        lambda: DocumentFrequency.from_references([["a", "dog"]]),  # captions as strings
        lambda: CiderReward([[["a"]]], DocumentFrequency.from_references([[["a"]]]))([["a"]], [1]),
        lambda: CiderReward([[["a"]]], DocumentFrequency.from_references([[["a"]]]))([["a"]], [0, 0]),
        lambda: CiderReward([[["a"]]], DocumentFrequency.from_references([[["a"]]]))([["a"]], [0.0]),
        lambda: CiderReward([[["a"]]], None),
    ],
)
def test_bad_input_raises_value_error_with_one_line(call):
    with pytest.raises(ValueError) as error:
        call()
    assert "\n" not in str(error.value) and str(error.value)


def test_tuples_and_empty_corpus_are_accepted():
    assert cider_d_scores([], []).shape == (0,) and rouge_l_scores([], []).shape == (0,)
    scores = cider_d_scores([("a", "dog"), ("a", "cat")], [[("a", "dog")], (("a", "cat"), ("the", "cat"))])
    np.testing.assert_allclose(
        scores, cider_d_scores([["a", "dog"], ["a", "cat"]], [[["a", "dog"]], [["a", "cat"], ["the", "cat"]]])
    )
