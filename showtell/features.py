"""Encoder features computed once: the cache, bring-your-own ``.npz`` files, and batched extraction.

The encoder is frozen by default, so running the CNN on every step of every epoch is wasted work. Features
are extracted once per (image list, backbone, weights, transform) and stored as ``.npz`` with two arrays,
the same format users bring their own features in::

    names     (N,)    image file names as in the caption file
    features  (N, D)  float16 or float32

Two lines of numpy make one: ``np.savez("feats.npz", names=np.array(names), features=feats)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from showtell.sources import DatasetError


@dataclass
class FeatureTable:
    """Image name -> row of an (N, D) feature matrix, held in memory (Flickr8k x 2048 x fp16 = 33 MB)."""

    names: list[str]
    features: Tensor  # (N, D) float16 or float32

    def __post_init__(self):
        self.row = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def load_features(path: str | Path) -> FeatureTable:
    """Read a features ``.npz`` (arrays ``names`` and ``features``); one clear error for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"features file {path} does not exist; pass --data.features PATH to an .npz "
                           "with arrays 'names' and 'features' (see README, 'Bring your own features')")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "names" not in data or "features" not in data:
                raise DatasetError(f"features file {path} must hold arrays 'names' and 'features', "
                                   f"found {sorted(data.files)}")
            names = [str(n) for n in data["names"]]
            features = data["features"]
    except DatasetError:
        raise
    except Exception as err:  # zip/npy format errors come in many types
        raise DatasetError(f"cannot read features file {path} as .npz ({type(err).__name__}: {err})") from None
    if features.ndim != 2 or features.shape[0] != len(names):
        raise DatasetError(f"features file {path}: 'features' must be (N, D) with N = len(names) = {len(names)}, "
                           f"got shape {features.shape}")
    if features.dtype not in (np.float16, np.float32):
        features = features.astype(np.float32)
    if len(set(names)) != len(names):
        raise DatasetError(f"features file {path}: 'names' holds duplicate image names")
    return FeatureTable(names, torch.from_numpy(np.ascontiguousarray(features)))


def save_features(path: str | Path, names: Sequence[str], features: np.ndarray, meta: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then rename, so a crash never leaves a
    half-written file that a later run would read as complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    os.close(fd)
    try:
        arrays = {"names": np.asarray(list(names)), "features": features}
        if meta is not None:
            arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cache_key(names: Sequence[str], spec: dict) -> str:
    """Hash of everything that changes the features: image list, backbone, weights, transform."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for name in names:
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()[:16]


class _ImageFiles(Dataset):
    def __init__(self, image_dir: Path, names: Sequence[str], transform):
        self.image_dir, self.names, self.transform = image_dir, list(names), transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(load_rgb(self.image_dir / self.names[i]))


def load_rgb(path: Path) -> Image.Image:
    """Open any PIL-readable image (grayscale, CMYK, RGBA, PNG inside .jpg) as RGB."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


@torch.inference_mode()
def extract_features(backbone: nn.Module, image_dir: Path, names: Sequence[str], transform, *,
                     batch_size: int = 128, num_workers: int = 4, device: str | torch.device | None = None,
                     progress: bool = True) -> np.ndarray:
    """Run ``backbone`` ((B,3,H,W) -> (B,D)) over every image once; returns (N, D) float16.

    On a GPU: bf16 autocast and channels_last (the fast path for convolutions on tensor cores).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    backbone = backbone.to(device).eval()
    if cuda:
        backbone = backbone.to(memory_format=torch.channels_last)
    loader = DataLoader(_ImageFiles(image_dir, names, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    chunks = []
    bar = tqdm(total=len(names), desc="extracting features", unit="img", disable=not progress, leave=False)
    for images in loader:
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            feats = backbone(images)  # (B, D)
        chunks.append(feats.float().to(torch.float16))
        bar.update(len(images))
    bar.close()
    return torch.cat(chunks).cpu().numpy()


def cached_features(cache_file: Path, names: Sequence[str], compute) -> FeatureTable:
    """Load ``cache_file`` if complete and matching ``names``; otherwise ``compute()`` and store it."""
    if cache_file.is_file():
        try:
            table = load_features(cache_file)
            if table.names == list(names):
                return table
        except DatasetError:
            pass  # unreadable: recompute below
    features = compute()
    save_features(cache_file, names, features)
    return FeatureTable(list(names), torch.from_numpy(features))
