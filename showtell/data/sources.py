"""Caption files of Flickr8k, Flickr30k and MS-COCO in any of their layouts -> one ``CaptionCorpus``:
``load_corpus`` finds the files (``showtell.data.locate``), parses them (``showtell.data.formats``), then cleans
and splits what they hold (here).

Layouts, detected from what is inside ``root`` (``root`` itself and one level of subfolders, e.g.
``Flickr8k_text/``):

- ``karpathy``: Karpathy's split, ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` or ``dataset_coco.json``
  (captions and split in one file; format in ``showtell.data.layouts``) and the images: an image folder for the
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
(75% / 12.5% / 12.5%, ``showtell.data.layouts.seeded_split``, the split the synthetic datasets write). Only images
that end up in a split are kept, so ``captions`` holds exactly the images of ``splits``. Images keep all their
captions (COCO has some with 6 or 7).

Nothing is dropped silently: every quirk of the real files (caption lines naming no image, duplicate or
empty captions, corrupt or truncated JPEGs, images in no split, malformed lines, restval left out, ...) is
recorded in a ``SkipReport`` whose ``summary()`` is meant to be printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from showtell.data.formats import (
    PARSERS,
    CORRUPT_IMAGE,
    DUPLICATE_CAPTION,
    EMPTY_CAPTION,
    NO_IMAGE_FILE,
    NO_SPLIT,
    ONE_WORD_CAPTION,
    OTHER_THAN_FIVE,
    REPEATED_SPLIT_NAME,
    RESTVAL_LEFT_OUT,
    SPLIT_NAME_SKIPPED,
    SPLIT_NAME_WITHOUT_CAPTIONS,
    UNCAPTIONED_IMAGE,
    Entries,
    SkipReport,
    Parsed,
    read_split_files,
    gc_paused,
)
from showtell.data.layouts import CAPTIONS_PER_IMAGE, DATASETS, KARPATHY_FILES, SPLIT_FILES, seeded_split
from showtell.data.locate import (
    find_caption_file,
    check_root,
    existing_images,
    holds_subfolders,
    is_image_name,
    find_image_dir,
    image_file,
)
from showtell.errors import DatasetError
from showtell.files import image_is_readable
from showtell.vocab import normalized

_PROGRESS_MIN_FILES = 500  # below this the image scan is too quick for a progress bar to help



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


# ---------------------------------------------------------------------------------------------- cleaning
def _drop_unnamed_images(entries: Entries, image_files: set[str] | None, report: SkipReport) -> Entries:
    """Keep lines whose name is an image file name (and, when files are known, an existing file)."""
    usable = {name for name in {name for name, _ in entries}
              if is_image_name(name) and (image_files is None or name in image_files)}
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
    root = check_root(Path(root), dataset)
    fmt, caption_file = find_caption_file(root, format, dataset)
    report = SkipReport()
    with gc_paused():
        parsed = PARSERS[fmt](caption_file, report)
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
    if folder is not None and not holds_subfolders(folder, subfolders):
        parsed.subfolders = {}  # all images in one folder (given with image_dir)
    split_names = parsed.splits if parsed.splits is not None else read_split_files(root, caption_file.parent)

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

    image_files = existing_images(folder, parsed.subfolders, named) if require_images else None
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


def _dataset_of(parsed: Parsed, caption_file: Path, wanted: str, fmt: str) -> str:
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


def _one_line(report: SkipReport) -> str:
    return report.summary().replace("\n", "; ")
