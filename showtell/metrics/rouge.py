"""ROUGE-L (Lin 2004) with coco-caption's beta = 1.2: per caption and corpus mean."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from showtell.metrics.tokens import Tokens, check_references, split_hypotheses, split_references

ROUGE_BETA = 1.2


def _lcs_lengths(first: list[list[int]], second: list[list[int]]) -> np.ndarray:
    """Longest common subsequence length of every pair ``(first[k], second[k])``, all pairs at once.

    Row by row of the classic table: ``L[i, j] = L[i-1, j-1] + 1`` on a match, else ``max(L[i-1, j], L[i, j-1])``,
    which equals the running maximum along j of (match ? ``L[i-1, j-1] + 1`` : ``L[i-1, j]``), one numpy
    ``maximum.accumulate`` per row. Padding uses different values (-1, -2) in the two arrays: it never matches.
    """
    pairs = len(first)
    width_a = max(map(len, first), default=0)
    width_b = max(map(len, second), default=0)
    a = np.full((pairs, width_a), -1, dtype=np.int64)
    b = np.full((pairs, width_b), -2, dtype=np.int64)
    for k, (x, y) in enumerate(zip(first, second)):
        a[k, : len(x)] = x
        b[k, : len(y)] = y
    table = np.zeros((pairs, width_b + 1), dtype=np.int32)
    for i in range(width_a):
        candidate = np.where(a[:, i : i + 1] == b, table[:, :-1] + 1, table[:, 1:])
        table[:, 1:] = np.maximum.accumulate(candidate, axis=1)
    return table[:, -1].astype(np.float64)


def rouge_l_scores(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> np.ndarray:
    """Per-caption ROUGE-L (float64, shape (N,)) of pycocoevalcap's ``Rouge``, in [0, 1]."""
    hyps = split_hypotheses(hypotheses, " ")
    check_references(references, len(hyps))
    refs = split_references(references, " ")
    if len(hyps) == 0:
        return np.zeros(0)
    vocab: dict[str, int] = {}
    hyp_ids = [[vocab.setdefault(w, len(vocab)) for w in h] for h in hyps]
    ref_ids = [[vocab.setdefault(w, len(vocab)) for w in r] for rs in refs for r in rs]
    num_refs = np.array([len(rs) for rs in refs])
    pair_hyp = np.repeat(np.arange(len(hyps)), num_refs)
    lcs = _lcs_lengths([hyp_ids[k] for k in pair_hyp], ref_ids)
    precision = lcs / np.array([len(h) for h in hyps], dtype=np.float64)[pair_hyp]
    recall = lcs / np.array([len(r) for r in ref_ids], dtype=np.float64)
    # largest precision and largest recall over the references, each on its own (as pycocoevalcap does)
    first = np.concatenate([[0], np.cumsum(num_refs)[:-1]])
    p, r = np.maximum.reduceat(precision, first), np.maximum.reduceat(recall, first)
    both = (p != 0) & (r != 0)
    beta2 = ROUGE_BETA**2
    safe = np.where(both, r + beta2 * p, 1.0)
    return np.where(both, ((1 + beta2) * p * r) / safe, 0.0)


def rouge_l(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Corpus ROUGE-L: the mean of `rouge_l_scores` (what pycocoevalcap's ``Rouge`` returns)."""
    if len(hypotheses) == 0:
        raise ValueError("rouge_l needs at least one hypothesis, got none")
    return float(np.mean(rouge_l_scores(hypotheses, references)))
