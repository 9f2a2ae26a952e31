"""Flickr8k caption files in any of their three layouts -> one ``CaptionCorpus``.

Layouts, detected from what is inside ``root`` (``root`` itself and one level of subfolders, e.g.
``Flickr8k_text/``):

- ``kaggle``: ``captions.txt`` (CSV with header ``image,caption``) and ``Images/``.
- ``original``: ``Flickr8k.token.txt`` (``NAME.jpg#K<TAB>caption``), the split files
  ``Flickr_8k.{train,dev,test}Images.txt`` and ``Flickr8k_Dataset/`` (or ``Flicker8k_Dataset/``,
  possibly with the images one folder further down, as in the official zip).
- ``karpathy``: ``dataset_flickr8k.json`` (captions and split in one file) and an image folder.

When several caption files are present, detection prefers karpathy json > original token file > kaggle
captions.txt: the order in which the files carry the most (and most standard) split information.

Splits: the Karpathy json split, else the official split files wherever they are present (also beside a
Kaggle ``captions.txt``; "dev" becomes "val"), else a split *by image* seeded by ``split_seed``
(75% / 12.5% / 12.5%, ``showtell.layouts.seeded_split``, the split the synthetic datasets write). Only images
that end up in a split are kept, so ``captions`` holds exactly the images of ``splits``.

Nothing is dropped silently: every quirk of the real files (caption lines naming no image, duplicate or
empty captions, corrupt or truncated JPEGs, images in no split, malformed lines, ...) is recorded in a
``SkipReport`` whose ``summary()`` is meant to be printed.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from showtell.layouts import CAPTIONS_FILE, SPLIT_FILES, seeded_split
from showtell.vocab import tokenize

FORMATS = ("karpathy", "original", "kaggle")  # detection priority, first wins
CAPTION_FILES = {"karpathy": "dataset_flickr8k.json", "original": "Flickr8k.token.txt",
                 "kaggle": CAPTIONS_FILE}
IMAGE_DIRS = ("Images", "Flickr8k_Dataset", "Flicker8k_Dataset", "images")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
CAPTIONS_PER_IMAGE = 5

HOW_TO_GET_FLICKR8K = (
    "Download Flickr8k (Kaggle dataset adityajn105/flickr8k, "
    "https://www.kaggle.com/datasets/adityajn105/flickr8k) and unzip it there, or generate an offline "
    "synthetic dataset with `python -m showtell.demo --root data/demo`."
)

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
ONE_WORD_CAPTION = "one-word captions"
OTHER_THAN_FIVE = f"images with other than {CAPTIONS_PER_IMAGE} captions"

# What happened to the items of each reason; also the order of the summary lines.
_VERBS = {
    MALFORMED_LINE: "skipped", NO_IMAGE_FILE: "skipped", EMPTY_CAPTION: "skipped",
    DUPLICATE_CAPTION: "skipped", CORRUPT_IMAGE: "skipped", UNCAPTIONED_IMAGE: "ignored",
    SPLIT_NAME_WITHOUT_CAPTIONS: "ignored", SPLIT_NAME_SKIPPED: "ignored", REPEATED_SPLIT_NAME: "ignored",
    NO_SPLIT: "ignored", ONE_WORD_CAPTION: "kept", OTHER_THAN_FIVE: "kept",
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
    image_dir: Path | None  # folder with the image files (None when require_images=False)
    format: str  # "kaggle" | "original" | "karpathy"
    report: SkipReport


# ----------------------------------------------------------------------------------------------- locating
def detect_format(root: str | Path) -> str:
    """The layout inside ``root``: "karpathy", "original" or "kaggle" (that priority), else DatasetError."""
    return _detect(_check_root(Path(root)))[0]


def _detect(root: Path) -> tuple[str, Path]:
    for fmt in FORMATS:
        path = _find_file(root, CAPTION_FILES[fmt])
        if path is not None:
            return fmt, path
    raise _no_dataset_error(root, f"no Flickr8k caption file in {root} or its subfolders")


def _no_dataset_error(root: Path, problem: str) -> DatasetError:
    looked_for = ", ".join(f"{CAPTION_FILES[f]} ({f} layout)" for f in FORMATS)
    return DatasetError(f"{problem}: looked for {looked_for}. {HOW_TO_GET_FLICKR8K}")


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise _no_dataset_error(root, f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise _no_dataset_error(root, f"dataset root {root} is not a folder")
    if not any(root.iterdir()):
        raise _no_dataset_error(root, f"dataset folder {root} is empty")
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


def _caption_file(root: Path, format: str) -> tuple[str, Path]:
    if format == "auto":
        return _detect(root)
    if format not in CAPTION_FILES:
        raise DatasetError(f"unknown dataset format {format!r}: use 'auto', 'kaggle', 'original' "
                           "or 'karpathy'")
    path = _find_file(root, CAPTION_FILES[format])
    if path is None:
        try:
            found = _detect(root)
            hint = f"; found {found[1].name} instead, which is the {found[0]!r} layout (or use format='auto')"
        except DatasetError:
            hint = ""
        raise DatasetError(f"format={format!r} expects {CAPTION_FILES[format]} in {root} "
                           f"or one of its subfolders, but there is none{hint}")
    return format, path


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _image_names(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if _is_image_name(e.name) and e.is_file()}


def _find_image_dir(root: Path, caption_file: Path) -> Path:
    """The first of IMAGE_DIRS beside the caption file, in root or in a subfolder of root.

    A folder without images but with a subfolder that has them (``Flickr8k_Dataset/Flicker8k_Dataset/``
    in the official zip) resolves to that subfolder.
    """
    bases = list(dict.fromkeys([caption_file.parent, root, *_subfolders(root)]))
    for base in bases:
        for name in IMAGE_DIRS:
            folder = base / name
            if not folder.is_dir():
                continue
            if _image_names(folder):
                return folder
            for sub in _subfolders(folder):
                if _image_names(sub):
                    return sub
            raise DatasetError(f"image folder {folder} contains no {'/'.join(IMAGE_EXTENSIONS)} files; "
                               "put the Flickr8k images there, or pass --data.features FILE.npz when "
                               "precomputed features replace the images")
    folders = ", ".join(f"{d}/" for d in IMAGE_DIRS)
    raise DatasetError(f"found {caption_file} but no image folder: looked for {folders} (images possibly "
                       f"one folder further down) in {root} and its subfolders; unzip the Flickr8k images "
                       "there, or pass --data.features FILE.npz when precomputed features replace the images")


# ------------------------------------------------------------------------------------------------ parsing
# Each parser returns (image name, raw caption) pairs in file order, and the split it defines (or None).
Entries = list[tuple[str, str]]


def _parse_kaggle(path: Path, report: SkipReport) -> tuple[Entries, None]:
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
    return entries, None


def _parse_token_file(path: Path, report: SkipReport) -> tuple[Entries, None]:
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
    return entries, None


def _parse_karpathy(path: Path, report: SkipReport) -> tuple[Entries, dict[str, list[str]]]:
    """dataset_flickr8k.json: images with filename, split and sentences; the ``raw`` sentences are used."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); re-download dataset_flickr8k.json") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path} has no 'images' list; expected Karpathy's format "
                           '{"images": [{"filename", "split", "sentences": [{"raw"}]}]}')
    entries: Entries = []
    splits: dict[str, list[str]] = {key: [] for key in SPLIT_FILES}
    for i, item in enumerate(images):
        item = item if isinstance(item, dict) else {}
        name, split, sentences = item.get("filename"), item.get("split"), item.get("sentences")
        if not isinstance(name, str) or split not in KARPATHY_SPLITS or not isinstance(sentences, list):
            report.add(MALFORMED_LINE, f"{path.name} images[{i}]")
            continue
        splits[KARPATHY_SPLITS[split]].append(name)
        for j, sentence in enumerate(sentences):
            sentence = sentence if isinstance(sentence, dict) else {}
            raw, tokens = sentence.get("raw"), sentence.get("tokens")
            if not isinstance(raw, str) and isinstance(tokens, list):
                raw = " ".join(map(str, tokens))
            if not isinstance(raw, str):
                report.add(MALFORMED_LINE, f"{path.name} images[{i}].sentences[{j}]")
                continue
            entries.append((name.strip(), raw))
    return entries, splits


_PARSERS = {"kaggle": _parse_kaggle, "original": _parse_token_file, "karpathy": _parse_karpathy}


def read_caption_file(path: str | Path) -> Entries:
    """(image name, raw caption) pairs of one caption file of any layout, known by its name (e.g. the real
    ``Flickr8k.token.txt`` for its caption lengths); malformed lines are left out."""
    path = Path(path)
    formats = {name: fmt for fmt, name in CAPTION_FILES.items()}
    if path.name not in formats:
        raise DatasetError(f"{path} is not a Flickr8k caption file: expected one named "
                           f"{', '.join(CAPTION_FILES.values())}")
    if not path.is_file():
        raise DatasetError(f"caption file {path} does not exist")
    return _PARSERS[formats[path.name]](path, SkipReport())[0]


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
    kept = []
    for name, caption in entries:
        if _is_image_name(name) and (image_files is None or name in image_files):
            kept.append((name, caption))
        else:
            report.add(NO_IMAGE_FILE, name)
    return kept


def _group_captions(entries: Entries, report: SkipReport) -> dict[str, list[str]]:
    """image -> captions without empty or duplicate ones (same tokens); notes one-word captions."""
    captions: dict[str, list[str]] = {}
    seen: dict[str, set[tuple[str, ...]]] = {}
    for name, raw in entries:
        caption = raw.strip()
        tokens = tuple(tokenize(caption))
        if not tokens:
            report.add(EMPTY_CAPTION, name)
            continue
        if tokens in seen.setdefault(name, set()):
            report.add(DUPLICATE_CAPTION, name)
            continue
        seen[name].add(tokens)
        if len(tokens) == 1:
            report.add(ONE_WORD_CAPTION, name)
        captions.setdefault(name, []).append(caption)
    return captions


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


def _drop_unreadable_images(captions: dict[str, list[str]], image_dir: Path, report: SkipReport,
                            progress: bool) -> None:
    names = sorted(captions)
    show = progress and len(names) >= _PROGRESS_MIN_FILES
    # Threads, not processes: the work is file I/O and C code in PIL, and there is nothing to pickle.
    with tqdm(total=len(names), desc="checking images", unit="img", disable=not show) as bar, \
            ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        readable = []
        for ok in pool.map(image_is_readable, (image_dir / name for name in names)):
            readable.append(ok)
            bar.update()
    for name, ok in zip(names, readable):
        if not ok:
            report.add(CORRUPT_IMAGE, name)
            del captions[name]


# ------------------------------------------------------------------------------------------------- splits
def _apply_splits(split_names: dict[str, list[str]], captions: dict[str, list[str]],
                  named: set[str], report: SkipReport) -> dict[str, list[str]]:
    """Listed names that are usable, each in its first split; reports the rest and images in no split."""
    splits: dict[str, list[str]] = {}
    listed: set[str] = set()
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
def load_corpus(root: str | Path, format: str = "auto", *, split_seed: int = 0, require_images: bool = True,
                progress: bool = False) -> CaptionCorpus:
    """Read Flickr8k from ``root`` in any layout; see the module docstring.

    ``require_images=False`` (precomputed features replace the images) checks nothing about image files
    and returns ``image_dir=None``. ``progress`` shows a progress bar while image files are checked.
    Raises DatasetError with one line saying what is wrong and what to do.
    """
    root = _check_root(Path(root))
    fmt, caption_file = _caption_file(root, format)
    image_dir = _find_image_dir(root, caption_file) if require_images else None
    report = SkipReport()
    entries, split_names = _PARSERS[fmt](caption_file, report)
    if not entries:
        raise DatasetError(f"{caption_file} contains no captions; re-download it or check the file")
    if split_names is None:
        split_names = _read_split_files(root, caption_file.parent)

    image_files = _image_names(image_dir) if image_dir is not None else None
    named = {name for name, _ in entries}
    entries = _drop_unnamed_images(entries, image_files, report)
    for name in sorted((image_files or set()) - named):
        report.add(UNCAPTIONED_IMAGE, name)
    captions = _group_captions(entries, report)
    if image_dir is not None:
        _drop_unreadable_images(captions, image_dir, report, progress)
    for name in sorted(captions):
        if len(captions[name]) != CAPTIONS_PER_IMAGE:
            report.add(OTHER_THAN_FIVE, name)
    if not captions:
        raise DatasetError(f"none of the {len(named)} images named in {caption_file} is usable "
                           f"({_one_line(report)})")

    if split_names is None:
        splits = seeded_split(captions, split_seed)
    else:
        splits = _apply_splits(split_names, captions, named, report)
    for key, names in splits.items():
        if not names:
            raise DatasetError(f"the {key} split has no usable images ({len(captions)} usable in all; "
                               f"{_one_line(report)})")
    used = {name for names in splits.values() for name in names}
    captions = {name: captions[name] for name in sorted(used)}
    return CaptionCorpus(captions=captions, splits=splits, image_dir=image_dir, format=fmt, report=report)


def _one_line(report: SkipReport) -> str:
    return report.summary().replace("\n", "; ")


__all__ = [
    "CaptionCorpus", "DatasetError", "SkipReport", "detect_format", "image_is_readable", "load_corpus",
    "read_caption_file", "seeded_split",
]
