"""Caption metrics: corpus BLEU exactly as coco-caption computes it; METEOR, ROUGE-L, CIDEr-D for testing.

BLEU reimplements coco-caption / pycocoevalcap ``Bleu(4)``, the tool behind the published Flickr8k and COCO
tables, in plain Python so that training needs no extra dependency. It gives the same floats (measured
difference 0.0 on hundreds of random corpora, see tests/metrics/test_bleu.py):

- clipped n-gram counts: a hypothesis n-gram counts at most as often as it occurs in any single reference;
- the brevity penalty uses the reference length closest to the hypothesis length, ties going to the SHORTER
  reference (torchmetrics' ``BLEUScore`` takes the first one, which moves Flickr8k BLEU-4 by about 0.004);
- corpus level: the counts of all samples are summed before the geometric mean. Averaging per-batch or
  per-sentence BLEU gives a different (lower) number, so `CorpusBLEU` accumulates counts over the epoch;
- the same epsilons as coco-caption (1e-15 added to matches, 1e-9 to totals), so an n-gram order without
  matches gives ~0 instead of a division error. A consequence worth knowing: a perfect 3-word hypothesis
  gets BLEU-4 = (1 * 1 * 1 * 1e-6) ** (1/4) = 0.032, not 0, exactly as in coco-caption.

`CorpusBLEU` stores one row of statistics per sample together with the sample's dataset index. Under DDP the
DistributedSampler pads an uneven split by repeating samples; after the cross-process gather, ``compute``
keeps one row per index, so every sample counts exactly once (7 samples on 2 processes: 0.410 would become
0.378 without this).

`caption_metrics` adds ROUGE-L and CIDEr-D (our own, ``showtell.metrics.cider``, equal to coco-caption's on the same
tokens; no extra install) and METEOR from coco-caption's jar (optional extra ``showtell[eval]``, plus Java);
METEOR is ``None`` with one warning when either is missing. All metrics see our own tokens
(`showtell.vocab.tokenize`), not PTBTokenizer output: we evaluate on the tokens we train on. CIDEr-D's document
frequencies come from the references of the evaluated set, as in coco-caption, so CIDEr depends on the whole
test set (a single image scores 0); 0.469 is "46.9" in the tables.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

# coco-caption's epsilons: added to n-gram matches (tiny) and n-gram totals / lengths (small).
BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of every 1..max_n-gram of ``tokens`` (n-grams as tuples)."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _check_tokens(tokens: Any, what: str) -> None:
    # A string would silently be scored character by character.
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{what} must be a list of tokens (showtell.vocab.tokenize(caption)), got {tokens!r}")


def bleu_statistics(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> list[float]:
    """Sufficient statistics of one sample: ``[hyp_len, ref_len, correct_1..n, total_1..n]``.

    ``ref_len`` is the reference length closest to ``hyp_len`` (ties -> the shorter reference) and
    ``correct_k`` counts hypothesis k-grams clipped by their largest count in any single reference.
    """
    _check_tokens(hypothesis, "a hypothesis")
    if len(references) == 0:
        raise ValueError("every hypothesis needs at least one reference caption, got an empty reference list")
    for reference in references:
        _check_tokens(reference, "a reference")
    hyp_len = len(hypothesis)
    max_ref_counts: Counter = Counter()
    for reference in references:
        max_ref_counts |= _ngram_counts(reference, max_n)  # Counter union = element-wise max
    # Tuples compare the distance first, then the length, so ties go to the shorter reference.
    ref_len = min((abs(len(r) - hyp_len), len(r)) for r in references)[1]
    correct = [0] * max_n
    for ngram, count in _ngram_counts(hypothesis, max_n).items():
        correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
    total = [max(0, hyp_len - n) for n in range(max_n)]
    return [float(hyp_len), float(ref_len), *map(float, correct), *map(float, total)]


def bleu_from_statistics(stats: Tensor | Sequence[float]) -> dict[str, float]:
    """BLEU-1..n (fractions in [0, 1]) from summed statistics of shape (2 + 2n,); (N, 2 + 2n) is summed first.

    Same float operations in the same order as coco-caption, so the results are bit-identical.
    """
    stats = torch.as_tensor(stats, dtype=torch.float64)
    if stats.ndim == 2:
        stats = stats.sum(0)
    if stats.ndim != 1 or stats.numel() < 4 or stats.numel() % 2:
        raise ValueError(f"BLEU statistics must be shaped (2 + 2n,) or (N, 2 + 2n), not {tuple(stats.shape)}")
    hyp_len, ref_len, *counts = stats.tolist()
    max_n = len(counts) // 2
    correct, total = counts[:max_n], counts[max_n:]
    scores = {}
    precision_product = 1.0
    for n in range(max_n):
        precision_product *= (correct[n] + BLEU_TINY) / (total[n] + BLEU_SMALL)
        scores[f"bleu{n + 1}"] = precision_product ** (1.0 / (n + 1))
    ratio = (hyp_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    if ratio < 1:  # brevity penalty
        penalty = math.exp(1 - 1 / ratio)
        scores = {name: value * penalty for name, value in scores.items()}
    return scores


def check_pairs(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} reference lists; "
            "pass one list of references per hypothesis"
        )


def corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """Corpus BLEU-1..4 of tokenized hypotheses against all their references (zeros for an empty corpus)."""
    check_pairs(hypotheses, references)
    summed = [0.0] * 10
    for hypothesis, refs in zip(hypotheses, references):
        summed = [a + b for a, b in zip(summed, bleu_statistics(hypothesis, refs))]
    return bleu_from_statistics(summed)


def _first_row_per_index(rows: Tensor) -> Tensor:
    """Keep rows without index (index < 0) and the first row of every dataset index."""
    unindexed, indexed = rows[rows[:, 0] < 0], rows[rows[:, 0] >= 0]
    if len(indexed) == 0:
        return unindexed
    _, inverse = torch.unique(indexed[:, 0], return_inverse=True)
    positions = torch.arange(len(indexed), device=rows.device)
    first = torch.full((int(inverse.max()) + 1,), len(indexed), device=rows.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    kept = indexed[first]
    # DDP padding repeats the same sample, so repeated indices should carry identical statistics. Different
    # ones mean the indices are not dataset indices (e.g. positions within the batch): say so, do not hide it.
    differing = (indexed[:, 1:] != kept[inverse][:, 1:]).any(dim=1).sum().item()
    if differing:
        warnings.warn(
            f"CorpusBLEU: {differing} samples reuse a dataset index with different statistics and were "
            "dropped; `indices` must be the dataset index of each sample (unique per sample)",
            stacklevel=3,
        )
    return torch.cat([unindexed, kept])


class CorpusBLEU(Metric):
    """Corpus BLEU-1..4 (coco-caption) accumulated over an epoch, synced across processes.

    ``update(hypotheses, references, indices)`` takes token lists and the dataset index of each sample;
    ``compute()`` gathers every process's rows, counts each index once (DDP padding repeats samples), sums
    the counts and returns ``{"bleu1": tensor, ..., "bleu4": tensor}``. Without indices every sample counts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    rows: list[Tensor] | Tensor

    def __init__(self, max_n: int = 4, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_n = max_n
        self.width = 1 + 2 + 2 * max_n  # [index, hyp_len, ref_len, correct_1..n, total_1..n]
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(
        self,
        hypotheses: list[list[str]],
        references: list[list[list[str]]],
        indices: Tensor | Sequence[int] | None = None,
    ) -> None:
        check_pairs(hypotheses, references)
        if indices is None:
            index_values = [-1.0] * len(hypotheses)
        else:
            indices = torch.as_tensor(indices).flatten()
            if len(indices) != len(hypotheses) or indices.is_floating_point() or (indices < 0).any():
                raise ValueError(
                    "indices must hold one non-negative integer dataset index per hypothesis, "
                    f"got {indices.tolist()} for {len(hypotheses)} hypotheses"
                )
            index_values = [float(i) for i in indices.tolist()]
        stats = [bleu_statistics(h, r, self.max_n) for h, r in zip(hypotheses, references)]
        rows = torch.tensor([[i, *s] for i, s in zip(index_values, stats)], dtype=torch.float64)
        self.rows.append(rows.reshape(-1, self.width).to(self.device))  # (B, 1 + 2 + 2n)

    def compute(self) -> dict[str, Tensor]:
        empty = isinstance(self.rows, list) and len(self.rows) == 0
        rows = torch.zeros(0, self.width, dtype=torch.float64, device=self.device) if empty else None
        rows = dim_zero_cat(self.rows) if rows is None else rows
        rows = _first_row_per_index(rows.reshape(-1, self.width))
        scores = bleu_from_statistics(rows[:, 1:].sum(0))
        return {name: torch.tensor(v, dtype=torch.float64, device=self.device) for name, v in scores.items()}

    def sync(self, *args: Any, **kwargs: Any) -> None:
        # torchmetrics stands in a 1-d float32 tensor for a process that saw no sample, which cannot be
        # gathered with the (n, width) float64 rows of the others; give it an empty row block instead.
        if isinstance(self.rows, list) and len(self.rows) == 0:
            self.rows = [torch.zeros(0, self.width, dtype=torch.float64, device=self.device)]
        super().sync(*args, **kwargs)
