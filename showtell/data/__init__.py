"""Datasets: finding and parsing every published layout (Flickr8k's three, Karpathy's JSON for Flickr30k and
COCO), cleaning and splitting, the synthetic datasets, encoder features and their cache, and the data module."""

from showtell.data.dataset import Batch
from showtell.data.datamodule import CaptionDataModule, FitData, Flickr8kDataModule
from showtell.data.sources import CaptionCorpus, load_corpus

__all__ = ["Batch", "CaptionCorpus", "CaptionDataModule", "FitData", "Flickr8kDataModule", "load_corpus"]
