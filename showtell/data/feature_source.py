"""Where training reads image features from, decided once from the data options: a bring-your-own file
(``--data.features``), the feature cache of our own frozen encoder (computed once, then reused: see
``showtell.data.features``), or nowhere, when images are decoded at every step (augmentation, a fine-tuned
encoder, caching turned off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from showtell.data.features import FeatureTable, cache_key, cached_features, extract_features, load_features
from showtell.errors import DatasetError
from showtell.model.backbones import build_backbone, eval_transform, preprocess_for


class FeatureSource:
    """The features a data module trains on: ``table(...)`` gives the bring-your-own table, the cached table
    (built on first use), or None (images). ``uses_cache`` and ``reason`` say which and why."""

    def __init__(self, *, features: str | None, table: FeatureTable | None = None, cache_features: bool = True,
                 augment: bool = False, frozen_encoder: bool = True, encoder: str = "resnet50",
                 weights: str | None = "DEFAULT", image_size: int | None = None, cache_dir: Path,
                 num_workers: int = 0, progress: bool = False):
        self.path = features
        self._user = table  # the bring-your-own table, when the options check has read it already
        self._cached: FeatureTable | None = None
        self.encoder, self.weights, self.image_size = encoder, weights, image_size
        self.cache_dir, self.num_workers, self.progress = cache_dir, num_workers, progress
        self.uses_cache, self.reason = self._decide(cache_features, augment, frozen_encoder)

    def _decide(self, cache_features: bool, augment: bool, frozen_encoder: bool) -> tuple[bool, str]:
        if self.path:
            return False, "bring-your-own features"
        if not cache_features:
            return False, "feature caching is off (cache_features: false)"
        if augment:
            return False, "augment: true needs fresh image crops every step, so images are used, not cached features"
        if not frozen_encoder:
            return False, "the encoder is fine-tuned, so images are used, not cached features"
        return True, "the encoder is frozen: features are computed once and cached"

    def user(self) -> FeatureTable | None:
        """The bring-your-own features (read once), else None."""
        if self.path and self._user is None:
            self._user = load_features(self.path)
        return self._user

    @property
    def dim(self) -> int | None:
        """D of a bring-your-own features file (the model then has no CNN), else None."""
        user = self.user()
        return user.dim if user is not None else None

    def table(self, names: Sequence[str], image_path: Callable[[str], Path]) -> FeatureTable | None:
        """What training reads: the user's features, the cache of ``names`` (every image of the corpus,
        sorted), or None (images)."""
        if self.path:
            return self.user()
        return self.cached(names, image_path) if self.uses_cache else None

    def cache_file(self, names: Sequence[str]) -> Path:
        """The cache file of these images under this encoder, weights and preprocessing."""
        spec = {"backbone": self.encoder, "weights": str(self.weights), "image_size": self.image_size,
                "preprocess": repr(preprocess_for(self.encoder, self.weights, None)), "version": 1}
        return self.cache_dir / f"features_{self.encoder.replace('/', '-')}_{cache_key(names, spec)}.npz"

    def cached(self, names: Sequence[str], image_path: Callable[[str], Path]) -> FeatureTable:
        """The cached features of ``names``, extracted on first use (read once per process)."""
        if self._cached is None:
            self._cached = self._load_or_extract(names, image_path)
        return self._cached

    def _load_or_extract(self, names: Sequence[str], image_path: Callable[[str], Path]) -> FeatureTable:
        transform = eval_transform(self.encoder, self.weights, self.image_size)

        def compute():
            # On forked random streams: building a CNN (random init) and iterating a DataLoader (its workers'
            # base seed) draw from torch's global generator, so a run that builds the cache would otherwise train
            # with other random numbers than every later run of the same command, which reads it.
            with torch.random.fork_rng(devices=[]):
                backbone, _ = build_backbone(self.encoder, self.weights)
                return extract_features(backbone, [image_path(n) for n in names], transform,
                                        num_workers=self.num_workers, progress=self.progress)

        try:
            return cached_features(self.cache_file(names), names, compute)
        except PermissionError as err:
            raise DatasetError(f"cannot write the feature cache ({err}); set --data.cache_dir to a writable "
                               "folder") from None
