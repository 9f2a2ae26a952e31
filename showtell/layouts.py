"""Writing datasets in the Kaggle Flickr8k layout, and the split facts its reader shares with the writers.

    root/Images/...                              the image files
    root/captions.txt                            CSV ``image,caption``, one row per caption
    root/Flickr_8k.{train,dev,test}Images.txt    one image name per line (the official split files' names)

``showtell.sources`` reads these files (and the other layouts); the synthetic datasets (``showtell.demo``) and
the tests write them with the functions here, and ``write_dataset_folder`` puts a generated folder in place
only once it is complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
CAPTIONS_FILE = "captions.txt"
IMAGE_DIR = "Images"


def seeded_split(names: Iterable[str], seed: int, sizes: Mapping[str, int] | None = None) -> dict[str, list[str]]:
    """A random but reproducible split by image: the same names (in any order) and seed give the same split.

    ``sizes``: images per split, in the order train, val, test; names beyond their sum are in no split.
    Default: 12.5% (at least one) each for val and test, the rest for train. Each list sorted.
    """
    order = sorted(names)
    if sizes is None:
        n_eval = max(1, len(order) // 8)
        sizes = {"train": max(0, len(order) - 2 * n_eval), "val": n_eval, "test": n_eval}
    permutation = np.random.default_rng([seed, 1]).permutation(len(order))
    splits, start = {}, 0
    for key in SPLIT_FILES:
        splits[key] = sorted(order[i] for i in permutation[start:start + sizes[key]])
        start += sizes[key]
    return splits


def write_split_files(folder: str | Path, splits: Mapping[str, Sequence[str]]) -> None:
    """The three split files (one name per line); a split missing from ``splits`` gets an empty file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, file_name in SPLIT_FILES.items():
        (folder / file_name).write_text("".join(f"{name}\n" for name in splits.get(key, ())), encoding="utf-8")


def write_kaggle(root: str | Path, captions: Mapping[str, Sequence[str]],
                 splits: Mapping[str, Sequence[str]] | None = None) -> Path:
    """``captions.txt`` as Kaggle's (header ``image,caption``, one row per caption in the given order; the csv
    module quotes captions with commas or quotes) and, when ``splits`` is given, the split files beside it.
    Images are the caller's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CAPTIONS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows((name, caption) for name, per_image in captions.items() for caption in per_image)
    if splits is not None:
        write_split_files(root, splits)
    return root


def has_marker(root: str | Path, marker: str, params: Mapping[str, Any]) -> bool:
    """Whether ``root/marker`` holds exactly ``params`` (the folder was finished with these parameters)."""
    try:
        return json.loads((Path(root) / marker).read_text()) == dict(params)
    except (OSError, ValueError):
        return False


def write_dataset_folder(root: str | Path, write: Callable[[Path], None], marker: str, params: Mapping[str, Any],
                         keep_if: Callable[[Path], bool] | None = None) -> bool:
    """Generate a dataset folder so that an interrupted run never leaves one that looks complete.

    ``write(folder)`` fills a hidden sibling of ``root``; then ``marker`` (``params`` as JSON) is written last
    and the folder replaces ``root`` in one rename. When ``keep_if(root)`` is true by then (another process
    finished the same folder meanwhile), theirs is kept. Returns whether this call's folder was put in place.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()  # unlike tempfile.mkdtemp, honours the umask (the renamed folder is not private)
    try:
        write(partial)
        (partial / marker).write_text(json.dumps(dict(params), indent=2) + "\n")
        if keep_if is not None and keep_if(root):
            return False
        if root.exists():
            shutil.rmtree(root)
        os.replace(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only left when interrupted or beaten to it
    return True
