"""All caption metrics of a corpus at once, their names, and the table they are printed in."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from showtell.metrics.bleu import check_pairs, corpus_bleu
from showtell.metrics.cider import cider_d
from showtell.metrics.meteor import meteor
from showtell.metrics.rouge import rouge_l
from showtell.vocab import tokenize

METRIC_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rougeL": "ROUGE-L",
    "cider": "CIDEr",
}


def as_tokens(caption: str | Sequence[str]) -> list[str]:
    """Tokens of a caption given as a string (tokenized with showtell.vocab.tokenize) or as tokens."""
    return tokenize(caption) if isinstance(caption, str) else list(caption)


def caption_metrics(
    hypotheses: list[list[str]] | list[str], references: list[list[list[str]]] | list[list[str]]
) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of hypotheses against all their references.

    Captions are token lists or strings (strings are tokenized with showtell.vocab.tokenize). BLEU
    (`corpus_bleu`), ROUGE-L and CIDEr-D (``showtell.metrics.cider``) are our own and equal coco-caption's; METEOR
    runs coco-caption's jar (`meteor`) and is ``None`` with one warning when pycocoevalcap or Java is missing.
    Values are fractions; CIDEr can exceed 1.
    """
    check_pairs(hypotheses, references)
    if len(hypotheses) == 0:
        raise ValueError("caption_metrics needs at least one hypothesis, got none")
    hyps = [as_tokens(h) for h in hypotheses]
    refs = [[as_tokens(r) for r in rs] for rs in references]
    metrics: dict[str, float | None] = dict(corpus_bleu(hyps, refs))
    metrics["meteor"] = meteor(hyps, refs)
    metrics["rougeL"] = rouge_l(hyps, refs)
    metrics["cider"] = cider_d(hyps, refs)
    return metrics


def format_metrics_table(metrics: dict[str, float | Tensor | None], title: str | None = None) -> str:
    """A small aligned text table of metrics x 100 (as in the papers), ``n/a`` for missing ones."""
    names = [METRIC_NAMES.get(key, key) for key in metrics]
    values = ["n/a" if v is None else f"{100 * float(v):.2f}" for v in metrics.values()]
    name_width = max([len("metric"), *map(len, names)])
    value_width = max([len("x 100"), *map(len, values)])
    lines = [title] if title else []
    lines.append(f"{'metric':<{name_width}}  {'x 100':>{value_width}}")
    lines.append("-" * (name_width + 2 + value_width))
    lines += [f"{name:<{name_width}}  {value:>{value_width}}" for name, value in zip(names, values)]
    return "\n".join(lines)
