"""Caption files of Flickr8k, Flickr30k and MS-COCO in any of their layouts -> one ``CaptionCorpus``.

Layouts, detected from what is inside ``root`` (``root`` itself and one level of subfolders, e.g.
``Flickr8k_text/``):

- ``karpathy``: Karpathy's split, ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` or ``dataset_coco.json``
  (captions and split in one file; format in ``showtell.layouts``) and the images: an image folder for the
  Flickr datasets (``Images/``, ``Flickr8k_Dataset/``, ``flickr30k-images/``, ...), for COCO the folders
  its entries' ``filepath`` names (``train2014/``, ``val2014/``), or the folder given as ``image_dir``.
- ``original`` (Flickr8k): ``Flickr8k.token.txt`` (``NAME.jpg#K<TAB>caption``), the split files
  ``Flickr_8k.{train,dev,test}Images.txt`` and ``Flickr8k_Dataset/`` (or ``Flicker8k_Dataset/``,
  possibly with the images one folder further down, as in the official zip).
- ``kaggle`` (Flickr8k): ``captions.txt`` (CSV with header ``image,caption``) and ``Images/``.

When several caption files are present, detection prefers karpathy json > original token file > kaggle
captions.txt: the order in which the files carry the most (and most standard) split information. ``dataset``
(``flickr8k``, ``flickr30k``, ``coco``) picks which Karpathy file to look for; ``auto`` takes the one present
(several in one folder, as in Karpathy's ``caption_datasets.zip``: an error asking to choose). The dataset a
Karpathy file holds is read from its ``dataset`` field.

Splits: the Karpathy json split (``restval``, COCO's 30,504 validation images outside Karpathy's val and test,
joins train unless ``restval=False``), else the official split files wherever they are present (also beside a
Kaggle ``captions.txt``; "dev" becomes "val"), else a split *by image* seeded by ``split_seed``
(75% / 12.5% / 12.5%, ``showtell.layouts.seeded_split``, the split the synthetic datasets write). Only images
that end up in a split are kept, so ``captions`` holds exactly the images of ``splits``. Images keep all their
captions (COCO has some with 6 or 7).

Nothing is dropped silently: every quirk of the real files (caption lines naming no image, duplicate or
empty captions, corrupt or truncated JPEGs, images in no split, malformed lines, restval left out, ...) is
recorded in a ``SkipReport`` whose ``summary()`` is meant to be printed.
"""

from __future__ import annotations

import csv
import gc
import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from tqdm.auto import tqdm

from showtell.layouts import CAPTIONS_FILE, DATASETS, KARPATHY_FILES, KARPATHY_SPLITS, SPLIT_FILES, seeded_split
from showtell.vocab import normalized

FORMATS = ("karpathy", "original", "kaggle")  # detection priority, first wins
CAPTION_FILES = {"karpathy": KARPATHY_FILES["flickr8k"], "original": "Flickr8k.token.txt",
                 "kaggle": CAPTIONS_FILE}  # Flickr8k's; Flickr30k and COCO come as Karpathy's JSON only
IMAGE_DIRS = ("Images", "Flickr8k_Dataset", "Flicker8k_Dataset", "flickr30k-images", "flickr30k_images", "images")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CAPTIONS_PER_IMAGE = 5

KARPATHY_ZIP = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
HOW_TO_GET_FLICKR8K = (
    "Download Flickr8k (Kaggle dataset adityajn105/flickr8k, "
    "https://www.kaggle.com/datasets/adityajn105/flickr8k) and unzip it there, or generate an offline "
    "synthetic dataset with `python -m showtell.demo --root data/demo`."
)
HOW_TO_GET = {
    "flickr8k": HOW_TO_GET_FLICKR8K,
    "flickr30k": ("Get the Flickr30k images (flickr30k-images/, https://shannon.cs.illinois.edu/DenotationGraph/) "
                  f"and Karpathy's dataset_flickr30k.json (in {KARPATHY_ZIP}) and put them there."),
    "coco": ("Unzip MS-COCO's train2014.zip and val2014.zip (https://cocodataset.org/#download) there, with "
             f"Karpathy's dataset_coco.json (in {KARPATHY_ZIP}) beside them."),
}

# Reasons recorded in a SkipReport. The strings are stable: tests and users grep for them.
MALFORMED_LINE = "malformed caption-file lines"
NO_IMAGE_FILE = "caption lines naming no image file"
EMPTY_CAPTION = "empty captions (no words)"
DUPLICATE_CAPTION = "duplicate captions"
CORRUPT_IMAGE = "unreadable or corrupt image files"
UNCAPTIONED_IMAGE = "image files without captions"
SPLIT_NAME_WITHOUT_CAPTIONS = "split names without captions"
SPLIT_NAME_SKIPPED = "split names whose image or captions were skipped"
REPEATED_SPLIT_NAME = "repeated split names (first split kept)"
NO_SPLIT = "images in no split"
RESTVAL_LEFT_OUT = "restval images left out (restval: false)"
ONE_WORD_CAPTION = "one-word captions"
OTHER_THAN_FIVE = f"images with other than {CAPTIONS_PER_IMAGE} captions"

# What happened to the items of each reason; also the order of the summary lines.
_VERBS = {
    MALFORMED_LINE: "skipped", NO_IMAGE_FILE: "skipped", EMPTY_CAPTION: "skipped",
    DUPLICATE_CAPTION: "skipped", CORRUPT_IMAGE: "skipped", UNCAPTIONED_IMAGE: "ignored",
    SPLIT_NAME_WITHOUT_CAPTIONS: "ignored", SPLIT_NAME_SKIPPED: "ignored", REPEATED_SPLIT_NAME: "ignored",
    NO_SPLIT: "ignored", RESTVAL_LEFT_OUT: "ignored", ONE_WORD_CAPTION: "kept", OTHER_THAN_FIVE: "kept",
}
_PROGRESS_MIN_FILES = 500  # below this the image scan is too quick for a progress bar to help
_JPEG_EOI = b"\xff\xd9"


class DatasetError(ValueError):
    """A dataset problem the user must fix; the message says what was wrong and what to do."""


@dataclass
class SkipReport:
    """What was skipped, ignored or noted while loading, and why: ``reason -> names`` in order found."""

    entries: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.entries.setdefault(reason, []).append(name)

    def counts(self) -> dict[str, int]:
        return {reason: len(names) for reason, names in self.entries.items()}

    def names(self, reason: str) -> list[str]:
        """Names recorded for ``reason`` (one per occurrence, so a name may repeat)."""
        return list(self.entries.get(reason, []))

    def summary(self, max_names: int = 3) -> str:
        """One line per reason: what happened, how many, the first few distinct names."""
        if not self.entries:
            return "nothing was skipped"
        known = [r for r in _VERBS if r in self.entries]
        lines = []
        for reason in known + [r for r in self.entries if r not in _VERBS]:
            names = self.entries[reason]
            distinct = list(dict.fromkeys(names))
            shown = ", ".join(distinct[:max_names]) + (", ..." if len(distinct) > max_names else "")
            head = f"{_VERBS[reason]} {len(names)} {reason}" if reason in _VERBS else f"{len(names)} {reason}"
            lines.append(f"{head}: {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class CaptionCorpus:
    """Usable images with their raw captions, and the train/val/test split of those images."""

    captions: dict[str, list[str]]  # image file name -> raw caption strings (only usable images)
    splits: dict[str, list[str]]  # "train", "val", "test" -> sorted image names (disjoint)
    image_dir: Path | None  # folder holding the images (COCO: holding train2014/, val2014/); None: none found
    format: str  # "kaggle" | "original" | "karpathy"
    report: SkipReport
    dataset: str = "flickr8k"  # "flickr8k" | "flickr30k" | "coco"
    subfolders: dict[str, str] = field(default_factory=dict)  # image -> its folder below image_dir (COCO)
    texts: dict[str, list[str]] = field(default_factory=dict)  # image -> its captions ``normalized`` (tokens)

    def normalized_captions(self, name: str) -> list[str]:
        """The captions of ``name`` as ``showtell.vocab.normalized`` strings (tokens joined by spaces)."""
        texts = self.texts.get(name)
        return texts if texts is not None else normalized(self.captions[name])

    def image_path(self, name: str) -> Path:
        """Where the image file ``name`` is (``image_dir/<filepath>/name`` for COCO)."""
        if self.image_dir is None:
            raise DatasetError(f"no image folder was found for {name} (precomputed features replace the images); "
                               "give the images' folder with --data.image_dir")
        return image_file(self.image_dir, self.subfolders, name)


def image_file(image_dir: Path, subfolders: Mapping[str, str], name: str) -> Path:
    """Where the image file ``name`` is: ``image_dir/<its subfolder>/name`` (COCO's ``filepath``), else
    ``image_dir/name``."""
    return image_dir / subfolders.get(name, "") / name


# ----------------------------------------------------------------------------------------------- locating
def detect_format(root: str | Path, dataset: str = "auto") -> str:
    """The layout inside ``root``: "karpathy", "original" or "kaggle" (that priority), else DatasetError."""
    return _detect(_check_root(Path(root), dataset), dataset)[0]


def _check_dataset(dataset: str) -> None:
    if dataset != "auto" and dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: use 'auto', {', '.join(map(repr, DATASETS))}")


def _detect(root: Path, dataset: str) -> tuple[str, Path]:
    _check_dataset(dataset)
    wanted = DATASETS if dataset == "auto" else (dataset,)
    found = [path for path in (_find_file(root, KARPATHY_FILES[d]) for d in wanted) if path is not None]
    if len(found) > 1:
        names = " and ".join(str(path) for path in found)
        raise DatasetError(f"found {names}: choose one with --data.dataset "
                           f"{'|'.join(d for d in DATASETS if _find_file(root, KARPATHY_FILES[d]))}")
    if found:
        return "karpathy", found[0]
    if dataset in ("auto", "flickr8k"):
        for fmt in ("original", "kaggle"):
            path = _find_file(root, CAPTION_FILES[fmt])
            if path is not None:
                return fmt, path
    what = "caption file" if dataset == "auto" else f"{dataset} caption file"
    raise _no_dataset_error(root, f"no {what} in {root} or its subfolders", dataset)


def _looked_for(dataset: str) -> str:
    if dataset in ("auto", "flickr8k"):
        karpathy = [KARPATHY_FILES[d] for d in (DATASETS if dataset == "auto" else ("flickr8k",))]
        files = [f"{'/'.join(karpathy)} (karpathy layout)", f"{CAPTION_FILES['original']} (original layout)",
                 f"{CAPTION_FILES['kaggle']} (kaggle layout)"]
        return ", ".join(files)
    return f"{KARPATHY_FILES[dataset]} (karpathy layout)"


def _no_dataset_error(root: Path, problem: str, dataset: str = "auto") -> DatasetError:
    how = HOW_TO_GET.get(dataset, HOW_TO_GET_FLICKR8K)
    return DatasetError(f"{problem}: looked for {_looked_for(dataset)}. {how}")


def _check_root(root: Path, dataset: str = "auto") -> Path:
    if not root.exists():
        raise _no_dataset_error(root, f"dataset folder {root} does not exist", dataset)
    if not root.is_dir():
        raise _no_dataset_error(root, f"dataset root {root} is not a folder", dataset)
    if not any(root.iterdir()):
        raise _no_dataset_error(root, f"dataset folder {root} is empty", dataset)
    return root


def _subfolders(folder: Path) -> list[Path]:
    """Sorted subfolders, without hidden ones and zip leftovers such as ``__MACOSX``."""
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith((".", "__")))


def _find_file(root: Path, name: str) -> Path | None:
    """``root/name``, else ``root/<subfolder>/name`` (subfolders in sorted order)."""
    for folder in [root, *_subfolders(root)]:
        if (folder / name).is_file():
            return folder / name
    return None


def _caption_file(root: Path, format: str, dataset: str) -> tuple[str, Path]:
    if format == "auto":
        return _detect(root, dataset)
    if format not in CAPTION_FILES:
        raise DatasetError(f"unknown dataset format {format!r}: use 'auto', 'kaggle', 'original' "
                           "or 'karpathy'")
    _check_dataset(dataset)
    if format == "karpathy":
        wanted = DATASETS if dataset == "auto" else (dataset,)
        if any(_find_file(root, KARPATHY_FILES[d]) for d in wanted):
            return _detect(root, dataset)  # the one file, or the error asking to choose
        expected = " or ".join(KARPATHY_FILES[d] for d in wanted)
    elif dataset not in ("auto", "flickr8k"):
        raise DatasetError(f"format={format!r} is a Flickr8k layout, but dataset={dataset!r} comes as Karpathy's "
                           f"{KARPATHY_FILES[dataset]}: use format 'karpathy' or 'auto'")
    else:
        path = _find_file(root, CAPTION_FILES[format])
        if path is not None:
            return format, path
        expected = CAPTION_FILES[format]
    try:
        found = _detect(root, "auto")
        hint = f"; found {found[1].name} instead, which is the {found[0]!r} layout (or use format='auto')"
    except DatasetError:
        hint = ""
    raise DatasetError(f"format={format!r} expects {expected} in {root} or one of its subfolders, but there is "
                       f"none{hint}")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _image_names(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if _is_image_name(e.name) and e.is_file()}


def _has_images(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(_is_image_name(e.name) and e.is_file() for e in it)


def _with_images(folder: Path) -> Path | None:
    """``folder`` if it holds images, else its first subfolder that does (the official Flickr8k zip nests
    ``Flickr8k_Dataset/Flicker8k_Dataset/``), else None."""
    if _has_images(folder):
        return folder
    return next((sub for sub in _subfolders(folder) if _has_images(sub)), None)


def _holds_subfolders(base: Path, subfolders: set[str]) -> bool:
    return any((base / sub).is_dir() for sub in subfolders)


_NO_IMAGES_HINT = "or pass --data.features FILE.npz when precomputed features replace the images"


def find_image_dir(root: Path, caption_file: Path, dataset: str = "flickr8k", subfolders: set[str] = frozenset(),
                   given: str | Path | None = None) -> Path:
    """The folder holding the images: ``given`` (a folder holding the images, or COCO's ``filepath``
    folders), else for COCO-style entries with ``subfolders`` (``train2014``, ``val2014``) the first folder
    holding one of them, else the first of ``IMAGE_DIRS`` -- beside the caption file, in root or in a
    subfolder of root. A folder without images but with a subfolder that has them
    (``Flickr8k_Dataset/Flicker8k_Dataset/`` in the official zip) resolves to that subfolder.
    """
    how = {"flickr8k": "unzip the Flickr8k images there", "flickr30k": "unzip flickr30k-images there",
           "coco": "unzip COCO's train2014.zip and val2014.zip there"}.get(dataset, "put the images there")
    if given is not None:
        given = Path(given).expanduser()
        if not given.is_dir():
            raise DatasetError(f"--data.image_dir {given} is not a folder; give the folder holding the images")
        if subfolders and _holds_subfolders(given, subfolders):
            return given
        found = _with_images(given)
        if found is None:
            inside = f" (nor the folders {', '.join(sorted(subfolders))} its entries name)" if subfolders else ""
            raise DatasetError(f"--data.image_dir {given} contains no {'/'.join(IMAGE_EXTENSIONS)} files{inside}; "
                               f"give the folder holding the images, {_NO_IMAGES_HINT}")
        return found
    bases = list(dict.fromkeys([caption_file.parent, root, *_subfolders(root)]))
    if subfolders:
        for base in bases:
            if _holds_subfolders(base, subfolders):
                return base
        folders = ", ".join(f"{d}/" for d in sorted(subfolders))
        raise DatasetError(f"found {caption_file} but not the image folders its entries name ({folders}) in "
                           f"{root} or its subfolders; {how}, give their parent folder with --data.image_dir, "
                           f"{_NO_IMAGES_HINT}")
    for base in bases:
        for name in IMAGE_DIRS:
            folder = base / name
            if not folder.is_dir():
                continue
            found = _with_images(folder)
            if found is not None:
                return found
            raise DatasetError(f"image folder {folder} contains no {'/'.join(IMAGE_EXTENSIONS)} files; "
                               f"{how}, {_NO_IMAGES_HINT}")
    folders = ", ".join(f"{d}/" for d in IMAGE_DIRS)
    raise DatasetError(f"found {caption_file} but no image folder: looked for {folders} (images possibly "
                       f"one folder further down) in {root} and its subfolders; {how}, give the folder with "
                       f"--data.image_dir, {_NO_IMAGES_HINT}")


# ------------------------------------------------------------------------------------------------ parsing
Entries = list[tuple[str, str]]  # (image name, raw caption) pairs in file order


@dataclass
class _Parsed:
    """What a caption file holds: its captions, the split it defines (or None), and for Karpathy's JSON the
    dataset it declares and each image's folder (COCO's ``filepath``)."""

    entries: Entries
    splits: dict[str, list[str]] | None = None  # "train", "restval", "val", "test" -> names in file order
    dataset: str | None = None
    subfolders: dict[str, str] = field(default_factory=dict)


def _parse_kaggle(path: Path, report: SkipReport) -> _Parsed:
    """captions.txt: CSV ``image,caption``; the csv module handles quoted commas and doubled quotes."""
    entries: Entries = []
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        start = 1
        for row in reader:
            first, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if first == 1 and row[0].strip().lower() in ("image", "image_name", "filename"):
                continue  # header
            where = f"{path.name} line {first}" + (f"-{reader.line_num}" if reader.line_num > first else "")
            # An unclosed quote makes one field swallow the following lines: report rather than keep it.
            if len(row) != 2 or "\n" in row[1] or "\r" in row[1]:
                report.add(MALFORMED_LINE, where)
                continue
            entries.append((row[0].strip(), row[1]))
    return _Parsed(entries)


def _parse_token_file(path: Path, report: SkipReport) -> _Parsed:
    """Flickr8k.token.txt: ``NAME#K<TAB>caption`` per line."""
    entries: Entries = []
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            key, tab, caption = line.rstrip("\r\n").partition("\t")
            if not tab and not key.strip():
                continue  # blank line
            name, hash_, _ = key.partition("#")
            if not tab or not hash_:
                report.add(MALFORMED_LINE, f"{path.name} line {lineno}")
                continue
            entries.append((name.strip(), caption))
    return _Parsed(entries)


def _parse_karpathy(path: Path, report: SkipReport) -> _Parsed:
    """Karpathy's dataset_*.json: images with filename, optional filepath, split and sentences; the ``raw``
    sentences are used (``tokens`` joined when an entry has no ``raw``)."""
    data = _read_karpathy_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path} has no 'images' list; expected Karpathy's format "
                           '{"images": [{"filename", "split", "sentences": [{"raw"}]}]}')
    declared = data.get("dataset")
    entries: Entries = []
    splits: dict[str, list[str]] = {key: [] for key in KARPATHY_SPLITS}
    subfolders: dict[str, str] = {}
    for i, item in enumerate(images):
        if not isinstance(item, _KarpathyEntry):
            item = _KarpathyEntry(None, None, None, None)
        name, split, sentences, filepath = item
        if not isinstance(name, str) or split not in KARPATHY_SPLITS or not isinstance(sentences, list) \
                or not isinstance(filepath, (str, type(None))):
            report.add(MALFORMED_LINE, f"{path.name} images[{i}]")
            continue
        name = name.strip()
        splits[split].append(name)
        if filepath and filepath.strip("/"):
            subfolders[name] = filepath.strip("/")
        for j, raw in enumerate(sentences):
            if not isinstance(raw, str):
                report.add(MALFORMED_LINE, f"{path.name} images[{i}].sentences[{j}]")
                continue
            entries.append((name, raw))
    return _Parsed(entries, splits, declared if isinstance(declared, str) else None, subfolders)


class _KarpathyEntry(NamedTuple):
    """One image of Karpathy's JSON with what is read of it (the rest is dropped while the file is parsed)."""

    filename: object
    split: object
    sentences: object  # a list of raw captions (or, where an entry is malformed, what stood there)
    filepath: object


def _compact(item: dict) -> object:
    """``json`` object hook: each sentence becomes its raw caption (its tokens joined when it has no ``raw``),
    each image a ``_KarpathyEntry``, as soon as it is parsed. A COCO-sized file then never exists in memory
    as ~7 million token strings and 740,000 dicts at once (measured on a COCO-sized file: peak resident memory
    2.24 -> 1.70 GB, private memory after reading 1.32 -> 0.78 GB, with torch imported)."""
    if "sentences" in item or "filename" in item:
        return _KarpathyEntry(item.get("filename"), item.get("split"), item.get("sentences"), item.get("filepath"))
    if "raw" in item or "tokens" in item:
        raw, tokens = item.get("raw"), item.get("tokens")
        if isinstance(raw, str):
            return raw
        if isinstance(tokens, list):
            return " ".join(map(str, tokens))
    return item


def _read_karpathy_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return json.load(f, object_hook=_compact)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); re-download {path.name}") from None


_PARSERS = {"kaggle": _parse_kaggle, "original": _parse_token_file, "karpathy": _parse_karpathy}


def read_caption_file(path: str | Path) -> Entries:
    """(image name, raw caption) pairs of one caption file of any layout, known by its name (e.g. the real
    ``Flickr8k.token.txt`` for its caption lengths); malformed lines are left out."""
    path = Path(path)
    formats = {name: fmt for fmt, name in CAPTION_FILES.items()}
    formats.update({name: "karpathy" for name in KARPATHY_FILES.values()})
    if path.name not in formats:
        raise DatasetError(f"{path} is not a caption file: expected one named {', '.join(formats)}")
    if not path.is_file():
        raise DatasetError(f"caption file {path} does not exist")
    return _PARSERS[formats[path.name]](path, SkipReport()).entries


def captions_by_image(path: str | Path) -> dict[str, list[str]]:
    """``read_caption_file`` grouped: image name -> its raw captions, in file order."""
    captions: dict[str, list[str]] = {}
    for name, caption in read_caption_file(path):
        captions.setdefault(name, []).append(caption)
    return captions


def original_files(root: str | Path) -> tuple[Path, dict[str, list[str]]]:
    """The original Flickr8k files in ``root``: the token file and the official split (names per split)."""
    root = _check_root(Path(root), "flickr8k")
    token_file = _find_file(root, CAPTION_FILES["original"])
    if token_file is None:
        raise DatasetError(f"no {CAPTION_FILES['original']} in {root} or its subfolders; give the folder of the "
                           "original Flickr8k text files (Flickr8k_text/)")
    splits = _read_split_files(root, token_file.parent)
    if splits is None:
        raise DatasetError(f"no official split files ({', '.join(SPLIT_FILES.values())}) in {root} or its "
                           "subfolders; they come with the original Flickr8k text files")
    return token_file, splits


def _read_split_files(root: Path, caption_dir: Path) -> dict[str, list[str]] | None:
    """The official split files beside the caption file (else anywhere findable), or None if absent."""
    found = {key: caption_dir / name if (caption_dir / name).is_file() else _find_file(root, name)
             for key, name in SPLIT_FILES.items()}
    present = {key: path for key, path in found.items() if path is not None}
    if not present:
        return None
    if len(present) < len(found):
        missing = ", ".join(SPLIT_FILES[key] for key in found if key not in present)
        have = ", ".join(str(path) for path in present.values())
        raise DatasetError(f"found {have} but not {missing}; provide all three official split files, "
                           "or remove them all to get a seeded split")
    return {key: [line.strip() for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
                  if line.strip()]
            for key, path in present.items()}


# ---------------------------------------------------------------------------------------------- cleaning
def _drop_unnamed_images(entries: Entries, image_files: set[str] | None, report: SkipReport) -> Entries:
    """Keep lines whose name is an image file name (and, when files are known, an existing file)."""
    usable = {name for name in {name for name, _ in entries}
              if _is_image_name(name) and (image_files is None or name in image_files)}
    kept = []
    for name, caption in entries:
        if name in usable:
            kept.append((name, caption))
        else:
            report.add(NO_IMAGE_FILE, name)
    return kept


def _group_captions(entries: Entries, report: SkipReport) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """image -> captions without empty or duplicate ones (same tokens), and image -> those captions
    ``normalized`` (tokens joined by spaces); notes one-word captions."""
    captions: dict[str, list[str]] = {}
    texts: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    for (name, raw), text in zip(entries, normalized([raw for _, raw in entries])):
        if not text:
            report.add(EMPTY_CAPTION, name)
            continue
        if text in seen.setdefault(name, set()):
            report.add(DUPLICATE_CAPTION, name)
            continue
        seen[name].add(text)
        if " " not in text:
            report.add(ONE_WORD_CAPTION, name)
        captions.setdefault(name, []).append(raw.strip())
        texts.setdefault(name, []).append(text)
    return captions, texts


def _ends_with_eoi(path: Path) -> bool:
    """A complete JPEG ends with the EOI marker, possibly followed by zero bytes or whitespace."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return f.read().rstrip(b"\x00 \t\r\n").endswith(_JPEG_EOI)


def image_is_readable(path: str | Path) -> bool:
    """Cheap check that an image file will decode: PIL header parse + ``verify()``, and for JPEGs the EOI
    marker at the end (``verify()`` alone does not notice a truncated JPEG). Grayscale, CMYK, RGBA and
    PNG data under a .jpg name all count as readable: the dataset converts them to RGB.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            kind = image.format
            image.verify()
        return kind != "JPEG" or _ends_with_eoi(path)
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) on bad data
        return False


def _drop_unreadable_images(captions: dict[str, list[str]], path_of: Callable[[str], Path], report: SkipReport,
                            progress: bool) -> None:
    names = sorted(captions)
    show = progress and len(names) >= _PROGRESS_MIN_FILES
    # Threads, not processes: the work is file I/O and C code in PIL, and there is nothing to pickle.
    with tqdm(total=len(names), desc="checking images", unit="img", disable=not show) as bar, \
            ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        readable = []
        for ok in pool.map(image_is_readable, (path_of(name) for name in names)):
            readable.append(ok)
            bar.update()
    for name, ok in zip(names, readable):
        if not ok:
            report.add(CORRUPT_IMAGE, name)
            del captions[name]


# ------------------------------------------------------------------------------------------------- splits
def _apply_splits(split_names: dict[str, list[str]], captions: dict[str, list[str]],
                  named: set[str], report: SkipReport, left_out: set[str] = frozenset()) -> dict[str, list[str]]:
    """Listed names that are usable, each in its first split; reports the rest and images in no split
    (but those ``left_out`` on purpose, reported already)."""
    splits: dict[str, list[str]] = {}
    listed: set[str] = set(left_out)
    for key in SPLIT_FILES:
        kept = []
        for name in split_names.get(key, []):
            if name in listed:
                report.add(REPEATED_SPLIT_NAME, name)
                continue
            listed.add(name)
            if name in captions:
                kept.append(name)
            else:
                report.add(SPLIT_NAME_SKIPPED if name in named else SPLIT_NAME_WITHOUT_CAPTIONS, name)
        splits[key] = sorted(kept)
    for name in sorted(set(captions) - listed):
        report.add(NO_SPLIT, name)
    return splits


# --------------------------------------------------------------------------------------------------- main
@contextmanager
def gc_paused():
    """No cyclic garbage collection meanwhile: parsing a COCO-sized file creates millions of lists and dicts
    that all stay alive, and the collector would scan them again and again (3x slower, measured); the
    reference counts still free everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_corpus(root: str | Path, format: str = "auto", *, dataset: str = "auto", image_dir: str | Path | None = None,
                restval: bool = True, split_seed: int = 0, require_images: bool = True,
                progress: bool = False) -> CaptionCorpus:
    """Read Flickr8k, Flickr30k or MS-COCO from ``root`` in any layout; see the module docstring.

    ``dataset``: which Karpathy file to read (``auto``: the one present). ``image_dir``: the folder holding the
    images (for COCO: holding ``train2014/`` and ``val2014/``, or all images in one folder), instead of
    looking for it. ``restval``: COCO's restval images join train (the convention, 113,287 train images);
    ``False`` leaves them out (reported). ``require_images=False`` (precomputed features replace the images)
    checks nothing about image files; ``image_dir`` is then the folder found or given, else None.
    ``progress`` shows a progress bar while image files are checked.
    Raises DatasetError with one line saying what is wrong and what to do.
    """
    root = _check_root(Path(root), dataset)
    fmt, caption_file = _caption_file(root, format, dataset)
    report = SkipReport()
    with gc_paused():
        parsed = _PARSERS[fmt](caption_file, report)
    found_dataset = _dataset_of(parsed, caption_file, dataset, fmt)
    if not parsed.entries:
        raise DatasetError(f"{caption_file} contains no captions; re-download it or check the file")
    subfolders = set(parsed.subfolders.values())
    try:
        folder = find_image_dir(root, caption_file, found_dataset, subfolders, image_dir)
    except DatasetError:
        if require_images:
            raise
        folder = None  # features replace the images; a missing image folder is no error then
    if folder is not None and not _holds_subfolders(folder, subfolders):
        parsed.subfolders = {}  # all images in one folder (given with image_dir)
    split_names = parsed.splits if parsed.splits is not None else _read_split_files(root, caption_file.parent)

    entries = parsed.entries
    named = {name for name, _ in entries}
    left_out: set[str] = set()
    if split_names is not None and "restval" in split_names:
        split_names = dict(split_names)
        restval_names = split_names.pop("restval")
        if restval:
            split_names["train"] = [*split_names["train"], *restval_names]
        else:
            for name in restval_names:
                report.add(RESTVAL_LEFT_OUT, name)
            left_out = set(restval_names)
            entries = [(name, caption) for name, caption in entries if name not in left_out]

    image_files = _existing_images(folder, parsed.subfolders, named) if require_images else None
    entries = _drop_unnamed_images(entries, image_files, report)
    for name in sorted((image_files or set()) - named):
        report.add(UNCAPTIONED_IMAGE, name)
    with gc_paused():
        captions, texts = _group_captions(entries, report)
    del entries, parsed.entries
    if require_images:
        _drop_unreadable_images(captions, partial(image_file, folder, parsed.subfolders), report, progress)
    for name in sorted(captions):
        if len(captions[name]) != CAPTIONS_PER_IMAGE:
            report.add(OTHER_THAN_FIVE, name)
    if not captions:
        raise DatasetError(f"none of the {len(named)} images named in {caption_file} is usable "
                           f"({_one_line(report)})")

    if split_names is None:
        splits = seeded_split(captions, split_seed)
    else:
        splits = _apply_splits(split_names, captions, named, report, left_out)
    for key, names in splits.items():
        if not names:
            raise DatasetError(f"the {key} split has no usable images ({len(captions)} usable in all; "
                               f"{_one_line(report)})")
    used = {name for names in splits.values() for name in names}
    captions = {name: captions[name] for name in sorted(used)}
    texts = {name: texts[name] for name in captions}
    subfolders_used = {name: parsed.subfolders[name] for name in captions if name in parsed.subfolders}
    return CaptionCorpus(captions=captions, splits=splits, image_dir=folder, format=fmt, report=report,
                         dataset=found_dataset, subfolders=subfolders_used, texts=texts)


def _dataset_of(parsed: _Parsed, caption_file: Path, wanted: str, fmt: str) -> str:
    """The dataset a caption file holds: a Karpathy file's ``dataset`` field (else its name); Flickr8k for the
    other layouts. A field that contradicts an explicit ``dataset`` is an error."""
    if fmt != "karpathy":
        return "flickr8k"
    by_name = next(d for d, name in KARPATHY_FILES.items() if name == caption_file.name)
    declared = parsed.dataset if parsed.dataset in DATASETS else by_name
    if wanted not in ("auto", declared):
        raise DatasetError(f"{caption_file} holds dataset {declared!r}, not {wanted!r}; use --data.dataset "
                           f"{declared} or auto, or point --data.root at the {wanted} files")
    return declared


def _existing_images(folder: Path, subfolders: dict[str, str], named: set[str]) -> set[str]:
    """Image files present: in ``folder``, or for entries with a subfolder (COCO) in their own subfolder."""
    if not subfolders:
        return _image_names(folder)
    present: set[str] = set()
    for sub in sorted(set(subfolders.values())):
        if (folder / sub).is_dir():
            in_sub = _image_names(folder / sub)
            present |= {name for name in in_sub if subfolders.get(name, sub) == sub}
    # entries without a filepath next to COCO-style ones: look in the folder itself
    if named - subfolders.keys():
        present |= _image_names(folder) & (named - subfolders.keys())
    return present


def _one_line(report: SkipReport) -> str:
    return report.summary().replace("\n", "; ")


__all__ = [
    "CaptionCorpus", "DatasetError", "SkipReport", "captions_by_image", "detect_format", "find_image_dir",
    "image_file", "image_is_readable", "load_corpus", "original_files", "read_caption_file", "seeded_split",
]
