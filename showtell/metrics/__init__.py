"""Corpus caption metrics, exact to coco-caption on the same tokens: BLEU-1..4 (also as a DDP-safe torchmetrics
``Metric``), CIDEr-D, ROUGE-L and METEOR (coco-caption's jar, optional)."""

from showtell.metrics.bleu import CorpusBLEU, corpus_bleu
from showtell.metrics.cider import CiderReward, DocumentFrequency, cider_d
from showtell.metrics.rouge import rouge_l
from showtell.metrics.scores import METRIC_NAMES, caption_metrics, format_metrics_table

__all__ = ["METRIC_NAMES", "CiderReward", "CorpusBLEU", "DocumentFrequency", "caption_metrics", "cider_d",
           "corpus_bleu", "format_metrics_table", "rouge_l"]
