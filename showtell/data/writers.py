"""Writing datasets in the published layouts (Kaggle's ``captions.txt`` and split files, Karpathy's JSON), for
the synthetic datasets (``showtell.data.synthetic``, ``showtell.data.lookalike``, the COCO-scale benchmark) and
the tests. ``write_dataset_folder`` puts a generated folder in place only once it is complete, so an
interrupted run never leaves a folder that looks complete. ``karpathy_from_original`` turns the original
Flickr8k files (token file and split files) into Karpathy's JSON::

    python -m showtell.layouts karpathy --root data/flickr8k --out data/flickr8k_karpathy/dataset_flickr8k.json
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from showtell.data.layouts import CAPTIONS_FILE, DATASETS, KARPATHY_SPLITS, SPLIT_FILES
from showtell.files import write_file_atomically


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


def karpathy_from_original(root: str | Path, out: str | Path) -> Path:
    """Karpathy's ``dataset_flickr8k.json`` from the original Flickr8k files in ``root`` (``Flickr8k.token.txt``
    and the three split files, found as ``showtell.data.sources`` finds them): every image of the official split
    with all its token-file captions in file order ("dev" becomes "val"). Images in no split are left out (the
    format has no "no split"); nothing else is cleaned, so reading either file gives the same corpus."""
    from showtell.data.formats import captions_by_image, original_files

    token_file, split_names = original_files(root)
    captions = captions_by_image(token_file)
    images = (KarpathyImage(name, split, captions.get(name, ()))
              for split, names in split_names.items() for name in names)
    return write_karpathy_json(out, "flickr8k", images)
