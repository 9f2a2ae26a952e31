"""Corpus caption metrics, exact to coco-caption on the same tokens: BLEU-1..4 (also as a DDP-safe torchmetrics
``Metric``), CIDEr-D, ROUGE-L and METEOR (coco-caption's jar, optional). The names below load on first use:
CIDEr-D alone does not import torchmetrics."""

from showtell.lazy import lazy_exports

_EXPORTS = {"CorpusBLEU": "bleu", "corpus_bleu": "bleu", "CiderReward": "cider", "DocumentFrequency": "cider",
            "cider_d": "cider", "rouge_l": "rouge", "METRIC_NAMES": "scores", "caption_metrics": "scores",
            "format_metrics_table": "scores"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
