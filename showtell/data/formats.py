"""Parsing caption files (Kaggle CSV, Flickr8k token file, Karpathy JSON) and split files, recording what was
skipped and why (``SkipReport``)."""

from __future__ import annotations

import csv
import gc
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from showtell.data.layouts import CAPTION_FILES, CAPTIONS_PER_IMAGE, KARPATHY_FILES, KARPATHY_SPLITS, SPLIT_FILES
from showtell.data.locate import check_root, find_file
from showtell.errors import DatasetError

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


# ------------------------------------------------------------------------------------------------ parsing
Entries = list[tuple[str, str]]  # (image name, raw caption) pairs in file order


@dataclass
class Parsed:
    """What a caption file holds: its captions, the split it defines (or None), and for Karpathy's JSON the
    dataset it declares and each image's folder (COCO's ``filepath``)."""

    entries: Entries
    splits: dict[str, list[str]] | None = None  # "train", "restval", "val", "test" -> names in file order
    dataset: str | None = None
    subfolders: dict[str, str] = field(default_factory=dict)


def _parse_kaggle(path: Path, report: SkipReport) -> Parsed:
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
    return Parsed(entries)


def _parse_token_file(path: Path, report: SkipReport) -> Parsed:
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
    return Parsed(entries)


def _parse_karpathy(path: Path, report: SkipReport) -> Parsed:
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
    return Parsed(entries, splits, declared if isinstance(declared, str) else None, subfolders)


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


PARSERS = {"kaggle": _parse_kaggle, "original": _parse_token_file, "karpathy": _parse_karpathy}


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
    return PARSERS[formats[path.name]](path, SkipReport()).entries


def captions_by_image(path: str | Path) -> dict[str, list[str]]:
    """``read_caption_file`` grouped: image name -> its raw captions, in file order."""
    captions: dict[str, list[str]] = {}
    for name, caption in read_caption_file(path):
        captions.setdefault(name, []).append(caption)
    return captions


def original_files(root: str | Path) -> tuple[Path, dict[str, list[str]]]:
    """The original Flickr8k files in ``root``: the token file and the official split (names per split)."""
    root = check_root(Path(root), "flickr8k")
    token_file = find_file(root, CAPTION_FILES["original"])
    if token_file is None:
        raise DatasetError(f"no {CAPTION_FILES['original']} in {root} or its subfolders; give the folder of the "
                           "original Flickr8k text files (Flickr8k_text/)")
    splits = read_split_files(root, token_file.parent)
    if splits is None:
        raise DatasetError(f"no official split files ({', '.join(SPLIT_FILES.values())}) in {root} or its "
                           "subfolders; they come with the original Flickr8k text files")
    return token_file, splits


def read_split_files(root: Path, caption_dir: Path) -> dict[str, list[str]] | None:
    """The official split files beside the caption file (else anywhere findable), or None if absent."""
    found = {key: caption_dir / name if (caption_dir / name).is_file() else find_file(root, name)
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
