"""Datasets: finding and parsing every published layout (Flickr8k's three, Karpathy's JSON for Flickr30k and
COCO), cleaning and splitting, the synthetic datasets, encoder features and their cache, and the data module.
The names below load on first use: parsing a caption file does not import Lightning."""

from showtell.lazy import lazy_exports

_EXPORTS = {"Batch": "dataset", "CaptionCorpus": "sources", "CaptionDataModule": "datamodule", "FitData": "datamodule",
            "Flickr8kDataModule": "datamodule", "load_corpus": "sources"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
