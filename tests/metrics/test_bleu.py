"""Tests for showtell.metrics: BLEU identical to coco-caption, corpus accumulation, index de-duplication,
and the full caption metrics with their graceful fallbacks (no pycocoevalcap, no Java)."""

from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch

from showtell.metrics import meteor as meteor_module
from showtell.metrics.bleu import CorpusBLEU, bleu_from_statistics, bleu_statistics, corpus_bleu
from showtell.metrics.scores import caption_metrics, format_metrics_table
from showtell.vocab import tokenize

BLEU_KEYS = ["bleu1", "bleu2", "bleu3", "bleu4"]
ALL_KEYS = [*BLEU_KEYS, "meteor", "rougeL", "cider"]
HAS_JAVA = meteor_module.shutil.which("java") is not None


def random_sets(count: int, seed: int = 0) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Hypotheses of 0..15 tokens with 5 references each, from a 4-word vocabulary (many n-gram matches);
    reference lengths scatter around the hypothesis length, so equal-distance length ties are frequent."""
    rng = random.Random(seed)
    words = ["a", "dog", "runs", "on"]
    hypotheses, references = [], []
    for _ in range(count):
        hyp_len = rng.randint(0, 15)
        hypotheses.append(rng.choices(words, k=hyp_len))
        ref_lens = [rng.randint(max(1, hyp_len - 3), hyp_len + 3) for _ in range(5)]
        distance = rng.randint(1, 3)
        if rng.random() < 0.5 and hyp_len - distance >= 1:  # force a tie: two lengths at the same distance
            ref_lens = [n for n in ref_lens if abs(n - hyp_len) >= distance][:3]
            ref_lens += [hyp_len - distance, hyp_len + distance]
            rng.shuffle(ref_lens)
        references.append([rng.choices(words, k=n) for n in ref_lens])
    return hypotheses, references


def coco_bleu(hypotheses: list[list[str]], references: list[list[list[str]]]) -> list[float]:
    """pycocoevalcap Bleu(4) on the same tokens (joined by spaces, as coco-caption expects)."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return score


def has_length_tie(hypothesis: list[str], references: list[list[str]]) -> bool:
    """Two different reference lengths are equally close to the hypothesis length."""
    distances = [abs(len(r) - len(hypothesis)) for r in references]
    closest = {len(r) for r, d in zip(references, distances) if d == min(distances)}
    return len(closest) > 1


# ---------------------------------------------------------------------------------------------------------
# BLEU against coco-caption


def test_bleu_matches_pycocoevalcap_on_random_sets():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    hypotheses, references = random_sets(300)
    ties = sum(has_length_tie(h, r) for h, r in zip(hypotheses, references))
    assert ties >= 50, f"the generator should produce many reference-length ties, got {ties}"
    max_diff = 0.0
    for hyp, refs in zip(hypotheses, references):
        # per-sample statistics equal coco-caption's cooked counts (closest reflen, ties -> shorter)
        cooked = cook_test(" ".join(hyp), cook_refs([" ".join(r) for r in refs]), eff="closest")
        expected = [cooked["testlen"], cooked["reflen"], *cooked["correct"], *cooked["guess"]]
        assert bleu_statistics(hyp, refs) == [float(x) for x in expected], (hyp, refs)
        # every sample as a corpus of one
        ours = corpus_bleu([hyp], [refs])
        max_diff = max(max_diff, *(abs(ours[k] - c) for k, c in zip(BLEU_KEYS, coco_bleu([hyp], [refs]))))
    rng = random.Random(1)
    corpora = [list(range(300))] + [rng.sample(range(300), rng.randint(2, 40)) for _ in range(40)]
    for corpus in corpora:
        hyps, refs = [hypotheses[i] for i in corpus], [references[i] for i in corpus]
        ours = corpus_bleu(hyps, refs)
        max_diff = max(max_diff, *(abs(ours[k] - c) for k, c in zip(BLEU_KEYS, coco_bleu(hyps, refs))))
    report = f"max |ours - pycocoevalcap| = {max_diff:.3g} over {300 + len(corpora)} corpora ({ties} ties)"
    print(report)
    assert max_diff <= 1e-12, report


@pytest.mark.parametrize(
    "hypothesis",
    [[], ["a"], ["a", "dog"], ["a", "dog", "runs"], ["dog", "a", "cat"], ["a", "dog", "runs", "on", "grass"]],
    ids=["empty", "1-token", "2-tokens", "3-tokens", "3-tokens-shuffled", "identical"],
)
def test_bleu_edge_cases_match_pycocoevalcap(hypothesis):
    pytest.importorskip("pycocoevalcap")
    references = [["a", "dog", "runs", "on", "grass"], ["the", "dog", "is", "running"], ["a", "dog"]]
    ours = corpus_bleu([hypothesis], [references])
    coco = coco_bleu([hypothesis], [references])
    assert [ours[k] for k in BLEU_KEYS] == pytest.approx(coco, abs=1e-12)


def test_bleu_edge_case_values():
    references = [["a", "dog", "runs", "on", "grass"], ["a", "cat"]]
    assert corpus_bleu([[]], [references]) == dict.fromkeys(BLEU_KEYS, 0.0)
    identical = corpus_bleu([references[0]], [references])
    assert identical == pytest.approx(dict.fromkeys(BLEU_KEYS, 1.0), abs=1e-8)
    # shorter than 4 tokens and perfect: coco-caption's epsilons give BLEU-4 = (1e-6) ** (1/4), not 0
    short = corpus_bleu([["a", "cat"]], [references])
    assert short["bleu1"] == pytest.approx(1.0) and short["bleu2"] == pytest.approx(1.0)
    assert short["bleu3"] == pytest.approx(1e-6 ** (1 / 3), rel=1e-6)  # (1 * 1 * 1e-6) ** (1/3)
    assert short["bleu4"] == pytest.approx(1e-12 ** (1 / 4), rel=1e-6)


def test_closest_reference_length_ties_go_to_the_shorter_reference():
    hypothesis = ["a", "b", "c", "d", "e"]
    for references in ([list("abcdefg"), list("abc")], [list("abc"), list("abcdefg")]):
        hyp_len, ref_len = bleu_statistics(hypothesis, references)[:2]
        assert (hyp_len, ref_len) == (5.0, 3.0)


def test_torchmetrics_bleuscore_differs_on_ties_unless_references_are_sorted():
    """Documentation: torchmetrics takes the FIRST of two equally close references, coco the shorter."""
    from torchmetrics.text import BLEUScore

    hypothesis = ["a", "dog", "runs", "on", "the", "grass"]  # 6 tokens; references of 4 and 8 tokens tie
    references = [["a", "dog", "runs", "on", "the", "green", "grass", "today"], ["a", "dog", "runs", "fast"]]
    ours = corpus_bleu([hypothesis], [references])["bleu4"]

    def torchmetrics_bleu(refs: list[list[str]]) -> float:
        return BLEUScore(n_gram=4)([" ".join(hypothesis)], [[" ".join(r) for r in refs]]).item()

    assert abs(torchmetrics_bleu(references) - ours) > 0.05
    assert torchmetrics_bleu(sorted(references, key=len)) == pytest.approx(ours, abs=1e-6)


def test_bleu_from_statistics_accepts_per_sample_rows_and_rejects_bad_shapes():
    hypotheses, references = random_sets(20, seed=3)
    rows = torch.tensor([bleu_statistics(h, r) for h, r in zip(hypotheses, references)], dtype=torch.float64)
    assert bleu_from_statistics(rows) == corpus_bleu(hypotheses, references)
    with pytest.raises(ValueError, match="shaped"):
        bleu_from_statistics(torch.zeros(7))


def test_bad_bleu_input_gives_one_clear_error():
    with pytest.raises(TypeError, match="list of tokens"):
        corpus_bleu(["a dog runs"], [[["a", "dog"]]])
    with pytest.raises(TypeError, match="list of tokens"):
        corpus_bleu([["a", "dog"]], [["a dog runs"]])
    with pytest.raises(ValueError, match="reference lists"):
        corpus_bleu([["a"], ["b"]], [[["a"]]])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu([["a"]], [[]])


# ---------------------------------------------------------------------------------------------------------
# CorpusBLEU (torchmetrics)


def test_corpus_bleu_metric_accumulates_counts_over_updates():
    hypotheses, references = random_sets(60, seed=4)
    metric = CorpusBLEU()
    for start in range(0, 60, 16):
        batch = slice(start, min(start + 16, 60))
        metric.update(hypotheses[batch], references[batch], torch.arange(batch.start, batch.stop))
    scores = metric.compute()
    assert {k: v.item() for k, v in scores.items()} == corpus_bleu(hypotheses, references)
    assert all(v.dtype == torch.float64 for v in scores.values())
    metric.reset()
    metric.update(hypotheses[:5], references[:5])
    assert metric.compute()["bleu4"].item() == corpus_bleu(hypotheses[:5], references[:5])["bleu4"]


def test_corpus_bleu_is_not_the_mean_of_batch_bleu():
    hypotheses, references = random_sets(64, seed=5)
    batches = [slice(i, i + 8) for i in range(0, 64, 8)]
    mean_of_batches = sum(corpus_bleu(hypotheses[b], references[b])["bleu4"] for b in batches) / len(batches)
    corpus = corpus_bleu(hypotheses, references)["bleu4"]
    assert abs(corpus - mean_of_batches) > 1e-3, (corpus, mean_of_batches)


def test_repeated_index_counts_once():
    hypotheses, references = random_sets(7, seed=6)
    expected = corpus_bleu(hypotheses, references)
    # what DistributedSampler does to 7 samples on 2 processes: sample 0 is repeated to pad to 8
    order = [0, 2, 4, 6, 1, 3, 5, 0]
    metric = CorpusBLEU()
    for batch in (order[:4], order[4:]):
        metric.update([hypotheses[i] for i in batch], [references[i] for i in batch], torch.tensor(batch))
    assert {k: v.item() for k, v in metric.compute().items()} == expected
    # without indices the repeated sample counts twice, and the score differs (so the test above can fail)
    plain = CorpusBLEU()
    plain.update([hypotheses[i] for i in order], [references[i] for i in order])
    assert plain.compute()["bleu4"].item() != pytest.approx(expected["bleu4"], abs=1e-6)


def test_same_index_with_different_statistics_warns():
    metric = CorpusBLEU()
    hypotheses, references = [["a", "dog"], ["a", "cat", "sits"]], [[["a", "dog"]], [["a", "cat"]]]
    metric.update(hypotheses, references, torch.tensor([0, 0]))
    with pytest.warns(UserWarning, match="reuse a dataset index"):
        metric.compute()


def test_empty_compute_returns_zeros():
    metric = CorpusBLEU()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*before the ``update`` method.*")
        scores = metric.compute()
    assert list(scores) == BLEU_KEYS and all(v.item() == 0.0 for v in scores.values())
    metric.update([], [], torch.tensor([], dtype=torch.long))
    assert all(v.item() == 0.0 for v in metric.compute().values())


def test_bad_indices_give_one_clear_error():
    metric = CorpusBLEU()
    with pytest.raises(ValueError, match="dataset index"):
        metric.update([["a"]], [[["a"]]], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dataset index"):
        metric.update([["a"]], [[["a"]]], torch.tensor([-2]))
    with pytest.raises(ValueError, match="dataset index"):
        metric.update([["a"]], [[["a"]]], torch.tensor([0.5]))


# ---------------------------------------------------------------------------------------------------------
# caption_metrics and the table

HYPOTHESES = ["a dog runs on the grass", "two children play in the water", "a man rides a bike", ""]
REFERENCES = [
    ["A dog is running on the grass.", "a brown dog runs through a field", "the dog runs outside"],
    ["Two kids are playing in the water.", "children splash in a pool", "two children swim"],
    ["A man is riding a bicycle.", "a cyclist on a road", "a man rides his bike down the street"],
    ["a woman sits on a bench", "a lady is sitting outside", "a person rests on a bench"],
]


def java_children() -> list[int]:
    """Pids of java processes whose parent is this process (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (name) state ppid ..."
        except OSError:
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and name == "java":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAVA, reason="METEOR needs java on PATH")
def test_caption_metrics_with_meteor_and_no_leaked_java_process():
    pytest.importorskip("pycocoevalcap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when everything is installed
        result = caption_metrics(HYPOTHESES, REFERENCES)  # ~7 s: java start of METEOR
    assert list(result) == ALL_KEYS
    assert all(0.0 <= result[k] <= 1.0 for k in [*BLEU_KEYS, "meteor", "rougeL"]), result
    assert result["cider"] > 0.0 and result["meteor"] > 0.1
    assert java_children() == [], "the METEOR java process must be closed"
    # the same value as pycocoevalcap's own (interactive) wrapper on the same tokens
    from pycocoevalcap.meteor.meteor import Meteor
    scorer = Meteor()
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(HYPOTHESES)}
    assert result["meteor"] == pytest.approx(scorer.compute_score(gts, res)[0], abs=1e-12)
    del scorer


def test_caption_metrics_without_java_gives_meteor_none_and_one_warning(monkeypatch):
    pytest.importorskip("pycocoevalcap")
    monkeypatch.setattr(meteor_module.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning) as record:
        result = caption_metrics(HYPOTHESES, REFERENCES)
    assert [str(w.message) for w in record if "METEOR" in str(w.message)] == [
        "METEOR needs Java but `java` is not on PATH: meteor=None (install Java)"
    ]
    assert result["meteor"] is None
    assert result["rougeL"] is not None and result["cider"] is not None


def test_caption_metrics_with_a_broken_java_gives_meteor_none(monkeypatch, tmp_path):
    pytest.importorskip("pycocoevalcap")
    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine.' >&2\nexit 1\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.warns(UserWarning, match="METEOR failed") as record:
        result = caption_metrics(HYPOTHESES, REFERENCES)
    assert len([w for w in record if "METEOR" in str(w.message)]) == 1
    assert result["meteor"] is None and result["rougeL"] is not None


def test_caption_metrics_without_pycocoevalcap(monkeypatch):
    # None in sys.modules makes an import fail; submodules imported by earlier tests must be blocked too
    for name in [n for n in sys.modules if n.split(".")[0] == "pycocoevalcap"] + ["pycocoevalcap"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.warns(UserWarning) as record:
        result = caption_metrics(HYPOTHESES, REFERENCES)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "METEOR needs pycocoevalcap" in messages[0] and "showtell[eval]" in messages[0]
    assert list(result) == ALL_KEYS
    # only METEOR needs the optional extra: ROUGE-L and CIDEr-D are our own
    assert result["meteor"] is None and result["rougeL"] > 0 and result["cider"] > 0
    tokens = [tokenize(h) for h in HYPOTHESES]
    reference_tokens = [[tokenize(r) for r in refs] for refs in REFERENCES]
    assert [result[k] for k in BLEU_KEYS] == list(corpus_bleu(tokens, reference_tokens).values())


def test_caption_metrics_tokenizes_strings_like_training(monkeypatch):
    monkeypatch.setattr(meteor_module.shutil, "which", lambda name: None)  # keep it fast: no METEOR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_strings = caption_metrics(["A Dog's ball, red."], [["a dogs ball red", "a ball"]])
        tokens = ["a", "dogs", "ball", "red"]
        from_tokens = caption_metrics([tokens], [[tokens, ["a", "ball"]]])
    assert from_strings == from_tokens
    assert from_strings["bleu4"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one hypothesis"):
        caption_metrics([], [])


def test_format_metrics_table():
    table = format_metrics_table(
        {"bleu1": 0.63214, "bleu4": torch.tensor(0.2), "meteor": None, "cider": 0.469}, title="test (beam 3)"
    )
    lines = table.splitlines()
    assert lines[0] == "test (beam 3)"
    assert "BLEU-1" in table and "63.21" in table and "20.00" in table and "46.90" in table
    assert "METEOR" in table and "n/a" in table
    assert len({len(line) for line in lines[1:]}) == 1, "rows are aligned"
