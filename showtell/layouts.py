"""Writing datasets in the Kaggle Flickr8k layout and in Karpathy's JSON, and the facts their reader shares.

Kaggle Flickr8k::

    root/Images/...                              the image files
    root/captions.txt                            CSV ``image,caption``, one row per caption
    root/Flickr_8k.{train,dev,test}Images.txt    one image name per line (the official split files' names)

Karpathy's split (``dataset_flickr8k.json``, ``dataset_flickr30k.json``, ``dataset_coco.json``; Karpathy &
Fei-Fei 2015)::

    {"images": [{"filepath": "val2014",            (COCO only: the image's folder)
                 "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
                 "split": "train" | "restval" | "val" | "test",
                 "sentids": [0, 1, ...], "cocoid": 391895,  (COCO only)
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...], "imgid": 0, "sentid": 0}, ...]},
                ...],
     "dataset": "flickr8k" | "flickr30k" | "coco"}

``showtell.sources`` reads these files (and the other layouts); the synthetic datasets (``showtell.demo``,
``showtell.bench_setup``) and the tests write them with the functions here, and ``write_dataset_folder`` puts a
generated folder in place only once it is complete. ``karpathy_from_original`` turns the original Flickr8k
files (token file and split files) into Karpathy's JSON::

    python -m showtell.layouts karpathy --root data/flickr8k --out data/flickr8k_karpathy/dataset_flickr8k.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
CAPTIONS_FILE = "captions.txt"
IMAGE_DIR = "Images"
KARPATHY_FILES = {"flickr8k": "dataset_flickr8k.json", "flickr30k": "dataset_flickr30k.json",
                  "coco": "dataset_coco.json"}
DATASETS = tuple(KARPATHY_FILES)
KARPATHY_SPLITS = ("train", "restval", "val", "test")


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


# ------------------------------------------------------------------------------------------ Karpathy's JSON
@dataclass
class KarpathyImage:
    """One entry of Karpathy's ``images`` list: an image, its split and its raw captions."""

    filename: str
    split: str  # train | restval | val | test
    captions: Sequence[str]
    filepath: str | None = None  # COCO: "train2014" or "val2014"
    cocoid: int | None = None  # COCO's image id


def karpathy_tokens(raw: str) -> list[str]:
    """Tokens as Karpathy's files hold them: lowercased, punctuation removed."""
    return "".join(c if c.isalnum() else " " for c in raw.lower()).split()


def write_karpathy_json(path: str | Path, dataset: str, images: Iterable[KarpathyImage]) -> Path:
    """Karpathy's JSON for ``images`` (in that order; ``imgid`` and ``sentid`` count up from 0), streamed to a
    temporary file beside ``path`` and renamed into place, so a COCO-sized file never sits in memory and an
    interrupted write never leaves a file that looks complete."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.write('{"images": [')
            sentid = 0
            for imgid, image in enumerate(images):
                if image.split not in KARPATHY_SPLITS:
                    raise ValueError(f"{image.filename}: split {image.split!r} is not one of {KARPATHY_SPLITS}")
                sentences = [{"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": sentid + k}
                             for k, raw in enumerate(image.captions)]
                entry: dict[str, Any] = {}
                if image.filepath is not None:
                    entry["filepath"] = image.filepath
                entry.update(sentids=[s["sentid"] for s in sentences], filename=image.filename, imgid=imgid,
                             split=image.split, sentences=sentences)
                if image.cocoid is not None:
                    entry["cocoid"] = image.cocoid
                f.write((", " if imgid else "") + json.dumps(entry))
                sentid += len(sentences)
            f.write(f'], "dataset": {json.dumps(dataset)}}}')

    return write_file_atomically(path, write)


def write_file_atomically(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """``write(tmp)`` into a temporary file beside ``path`` (named ``<name>...<suffix>``), then rename it into
    place, so an interrupted write never leaves a file that looks complete. The file gets the permissions the
    umask gives (``mkstemp``'s own are private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def karpathy_from_original(root: str | Path, out: str | Path) -> Path:
    """Karpathy's ``dataset_flickr8k.json`` from the original Flickr8k files in ``root`` (``Flickr8k.token.txt``
    and the three split files, found as ``showtell.sources`` finds them): every image of the official split
    with all its token-file captions in file order ("dev" becomes "val"). Images in no split are left out (the
    format has no "no split"); nothing else is cleaned, so reading either file gives the same corpus."""
    from showtell.sources import captions_by_image, original_files  # sources reads what this module writes

    token_file, split_names = original_files(root)
    captions = captions_by_image(token_file)
    images = (KarpathyImage(name, split, captions.get(name, ()))
              for split, names in split_names.items() for name in names)
    return write_karpathy_json(out, "flickr8k", images)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m showtell.layouts karpathy --root ROOT --out FILE``; returns the exit code (2: bad input)."""
    from showtell.sources import DatasetError

    parser = argparse.ArgumentParser(prog="python -m showtell.layouts", description="Convert dataset layouts.")
    commands = parser.add_subparsers(dest="command", required=True)
    karpathy = commands.add_parser("karpathy", help="Karpathy's dataset_flickr8k.json from the original files")
    karpathy.add_argument("--root", required=True, help="folder with Flickr8k.token.txt and the split files")
    karpathy.add_argument("--out", required=True, help="the JSON file to write (dataset_flickr8k.json)")
    args = parser.parse_args(argv)
    try:
        path = karpathy_from_original(args.root, args.out)
    except (DatasetError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
