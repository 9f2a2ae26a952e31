"""Finding a dataset's files: its layout, caption file and image folder, with errors that say what was looked for."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from showtell.data.layouts import (
    CAPTION_FILES,
    DATASETS,
    HOW_TO_GET,
    HOW_TO_GET_FLICKR8K,
    IMAGE_DIRS,
    IMAGE_EXTENSIONS,
    KARPATHY_FILES,
)
from showtell.errors import DatasetError



def image_file(image_dir: Path, subfolders: Mapping[str, str], name: str) -> Path:
    """Where the image file ``name`` is: ``image_dir/<its subfolder>/name`` (COCO's ``filepath``), else
    ``image_dir/name``."""
    return image_dir / subfolders.get(name, "") / name


# ----------------------------------------------------------------------------------------------- locating
def detect_format(root: str | Path, dataset: str = "auto") -> str:
    """The layout inside ``root``: "karpathy", "original" or "kaggle" (that priority), else DatasetError."""
    return _detect(check_root(Path(root), dataset), dataset)[0]


def _check_dataset(dataset: str) -> None:
    if dataset != "auto" and dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: use 'auto', {', '.join(map(repr, DATASETS))}")


def _detect(root: Path, dataset: str) -> tuple[str, Path]:
    _check_dataset(dataset)
    wanted = DATASETS if dataset == "auto" else (dataset,)
    found = [path for path in (find_file(root, KARPATHY_FILES[d]) for d in wanted) if path is not None]
    if len(found) > 1:
        names = " and ".join(str(path) for path in found)
        raise DatasetError(f"found {names}: choose one with --data.dataset "
                           f"{'|'.join(d for d in DATASETS if find_file(root, KARPATHY_FILES[d]))}")
    if found:
        return "karpathy", found[0]
    if dataset in ("auto", "flickr8k"):
        for fmt in ("original", "kaggle"):
            path = find_file(root, CAPTION_FILES[fmt])
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


def check_root(root: Path, dataset: str = "auto") -> Path:
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


def find_file(root: Path, name: str) -> Path | None:
    """``root/name``, else ``root/<subfolder>/name`` (subfolders in sorted order)."""
    for folder in [root, *_subfolders(root)]:
        if (folder / name).is_file():
            return folder / name
    return None


def find_caption_file(root: Path, format: str, dataset: str) -> tuple[str, Path]:
    if format == "auto":
        return _detect(root, dataset)
    if format not in CAPTION_FILES:
        raise DatasetError(f"unknown dataset format {format!r}: use 'auto', 'kaggle', 'original' "
                           "or 'karpathy'")
    _check_dataset(dataset)
    if format == "karpathy":
        wanted = DATASETS if dataset == "auto" else (dataset,)
        if any(find_file(root, KARPATHY_FILES[d]) for d in wanted):
            return _detect(root, dataset)  # the one file, or the error asking to choose
        expected = " or ".join(KARPATHY_FILES[d] for d in wanted)
    elif dataset not in ("auto", "flickr8k"):
        raise DatasetError(f"format={format!r} is a Flickr8k layout, but dataset={dataset!r} comes as Karpathy's "
                           f"{KARPATHY_FILES[dataset]}: use format 'karpathy' or 'auto'")
    else:
        path = find_file(root, CAPTION_FILES[format])
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


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _image_names(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if is_image_name(e.name) and e.is_file()}


def _has_images(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(is_image_name(e.name) and e.is_file() for e in it)


def _with_images(folder: Path) -> Path | None:
    """``folder`` if it holds images, else its first subfolder that does (the official Flickr8k zip nests
    ``Flickr8k_Dataset/Flicker8k_Dataset/``), else None."""
    if _has_images(folder):
        return folder
    return next((sub for sub in _subfolders(folder) if _has_images(sub)), None)


def holds_subfolders(base: Path, subfolders: set[str]) -> bool:
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
        if subfolders and holds_subfolders(given, subfolders):
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
            if holds_subfolders(base, subfolders):
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


def existing_images(folder: Path, subfolders: dict[str, str], named: set[str]) -> set[str]:
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
