"""Check that a declared encoder reproduces a bring-your-own features file (``--model.attach_encoder true``).

A model trained on precomputed features captions photographs only if the CNN built into it computes the
same features from pixels as whoever made the file: same network, same weights, same preprocessing. Before
training, ``check_reproduces`` runs the encoder on up to 16 images of the dataset that have a row in the file
and compares: every cosine similarity must be at least ``MIN_COSINE``. float16 rounding of the file and
bf16/TF32 arithmetic stay far above it; another resize or crop, or other weights, falls well below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from showtell.data.features import FeatureTable
from showtell.errors import OptionError
from showtell.files import load_rgb
from showtell.model.backbones import eval_transform, preprocess_for
from showtell.options import shown_path

MIN_COSINE = 0.999
MAX_IMAGES = 16


class AttachError(OptionError):
    """The declared encoder does not reproduce the features file."""


ImagePath = Callable[[str], "Path | None"]  # image name -> its file (None: unknown)


def _checkable(table: FeatureTable, image_path: ImagePath, limit: int) -> list[Path]:
    """Up to ``limit`` image files of the file's names (sorted) that exist."""
    found: list[Path] = []
    for name in sorted(table.row):
        path = image_path(name)
        if path is not None and path.is_file():
            found.append(path)
            if len(found) == limit:
                break
    return found


@torch.no_grad()
def feature_similarity(backbone: nn.Module, table: FeatureTable, paths: list[Path],
                       transform: Callable[[Image.Image], Tensor]) -> Tensor:
    """Cosine similarity (N,) of ``backbone``'s pooled features and the file's rows (named by file name)."""
    was_training = backbone.training
    backbone.eval()
    try:
        pixels = torch.stack([transform(load_rgb(p)) for p in paths])  # (N, 3, H, W)
        device = next(backbone.parameters()).device
        ours = backbone(pixels.to(device)).float().cpu()  # (N, D)
    finally:
        backbone.train(was_training)
    rows = [table.row[p.name] for p in paths]
    theirs = torch.as_tensor(np.asarray(table.features[rows])).float()  # (N, D); a tensor or a memory map
    return torch.nn.functional.cosine_similarity(ours, theirs, dim=1)


def check_reproduces(backbone: nn.Module, table: FeatureTable, image_dir: Path | None, image_path: ImagePath,
                     transform: Callable[[Image.Image], Tensor], *, encoder: str, weights: object,
                     features_path: str, preprocessing: str, limit: int = MAX_IMAGES) -> str:
    """One line saying what was checked (or why it was skipped); ``AttachError`` (one line) when the encoder's
    features differ from the file's on any checked image. ``image_path`` maps a row's name to its image file
    (in ``image_dir``, the dataset's image folder, or None when there is none)."""
    if image_dir is None or not image_dir.is_dir():
        return (f"attach_encoder: no image folder found, so it was NOT checked that {encoder} reproduces "
                f"{shown_path(features_path)} (give --data.image_dir to check)")
    names = _checkable(table, image_path, limit)
    if not names:
        return (f"attach_encoder: none of the images of {shown_path(features_path)} is in {image_dir}, so it was "
                f"NOT checked that {encoder} reproduces the file")
    cosine = feature_similarity(backbone, table, names, transform)
    bad = int((cosine < MIN_COSINE).sum())
    if bad:
        raise AttachError(
            f"--model.attach_encoder: {encoder} (weights {weights}, preprocessing {preprocessing}) does not "
            f"reproduce {shown_path(features_path)}: on {bad} of {len(names)} images of {image_dir} the cosine "
            f"similarity is below {MIN_COSINE} (lowest {float(cosine.min()):.4f}); likely another preprocessing "
            "(--data.image_size, or the encoder's own resize and crop) or other weights (--model.weights)")
    return (f"attach_encoder: {encoder} reproduces {shown_path(features_path)} on {len(names)} images of "
            f"{image_dir} (cosine similarity >= {float(cosine.min()):.5f})")


def check_attached_encoder(backbone: nn.Module, encoder: str, weights: str | None, fit_data: Any) -> str:
    """The attached encoder must compute the features file's rows from the dataset's images: the one line
    saying so (else ``AttachError``). ``fit_data``: ``CaptionDataModule.fit_data()`` (None: no data module)."""
    if fit_data is None or fit_data.features is None:
        raise OptionError("--model.attach_encoder true needs --data.features (the file the encoder is declared "
                          "to have made)")
    preprocess = preprocess_for(encoder, weights, None)
    image_size = fit_data.image_size
    transform = eval_transform(encoder, weights, image_size)
    shape = (f"{image_size}x{image_size} whole image" if image_size
             else f"resize {preprocess.resize}, crop {preprocess.crop}")
    return check_reproduces(backbone, fit_data.features, fit_data.image_folder, fit_data.image_path, transform,
                            encoder=encoder, weights=weights, features_path=fit_data.features_path,
                            preprocessing=f"{shape}, {preprocess.interpolation}, mean {preprocess.mean}, "
                                          f"std {preprocess.std}")
