"""Writers of tiny Flickr8k-like datasets (all three layouts) and tiny real image files, for tests.

``captions`` is always ``image name -> list of raw captions`` (written in that order), ``splits`` is
``{"train"|"val"|"test": [names]}`` and ``images`` is ``image name -> kind`` (see ``IMAGE_KINDS``); by
default every caption name with an image extension gets a small valid RGB JPEG.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from showtell.data import layouts, writers
from showtell.data.writers import write_split_files

IMAGE_KINDS = ("rgb", "gray", "cmyk", "rgba_png", "corrupt", "truncated")

Captions = Mapping[str, Sequence[str]]
Splits = Mapping[str, Sequence[str]]


def _image_bytes(mode: str, size: tuple[int, int], seed: int, format: str) -> bytes:
    rng = random.Random(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    image = Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * channels))
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def make_jpeg(path: str | Path, mode: str = "RGB", size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """A tiny real image of random pixels. Modes "RGB", "L" (grayscale) and "CMYK" are saved as JPEG;
    "RGBA" (JPEG cannot store alpha) is saved as PNG data under the given name, as some downloads have.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(mode, size, seed, "PNG" if mode == "RGBA" else "JPEG"))
    return path


def make_corrupt(path: str | Path, num_bytes: int = 600, seed: int = 0) -> Path:
    """Random bytes under an image name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(num_bytes))
    return path


def make_truncated_jpeg(path: str | Path, keep: float = 0.6, seed: int = 0) -> Path:
    """A valid JPEG cut off part-way (its header still parses, its end marker is missing)."""
    data = _image_bytes("RGB", (32, 32), seed, "JPEG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_image(path: str | Path, kind: str = "rgb", seed: int = 0) -> Path:
    """One image file of the given kind (see IMAGE_KINDS)."""
    writers = {
        "rgb": lambda: make_jpeg(path, "RGB", seed=seed),
        "gray": lambda: make_jpeg(path, "L", seed=seed),
        "cmyk": lambda: make_jpeg(path, "CMYK", seed=seed),
        "rgba_png": lambda: make_jpeg(path, "RGBA", seed=seed),
        "corrupt": lambda: make_corrupt(path, seed=seed),
        "truncated": lambda: make_truncated_jpeg(path, seed=seed),
    }
    if kind not in writers:
        raise ValueError(f"unknown image kind {kind!r}; use one of {IMAGE_KINDS}")
    return writers[kind]()


def default_images(captions: Captions) -> dict[str, str]:
    """A valid RGB JPEG for every caption name that looks like an image file name."""
    return {name: "rgb" for name in captions if name.lower().endswith((".jpg", ".jpeg", ".png"))}


def write_images(image_dir: str | Path, images: Mapping[str, str]) -> Path:
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, kind) in enumerate(sorted(images.items())):
        write_image(image_dir / name, kind, seed=i)
    return image_dir


def write_kaggle(root: str | Path, captions: Captions, splits: Splits | None = None,
                 images: Mapping[str, str] | None = None, image_dir: str = "Images") -> Path:
    """Kaggle layout (``showtell.data.writers.write_kaggle``: ``captions.txt`` with commas and quotes quoted, and
    the split files beside it when ``splits`` is given) plus the image files."""
    root = writers.write_kaggle(root, captions, splits)
    write_images(root / image_dir, default_images(captions) if images is None else images)
    return root


def write_original(root: str | Path, captions: Captions, splits: Splits | None = None,
                   images: Mapping[str, str] | None = None, text_dir: str = "Flickr8k_text",
                   image_dir: str = "Flickr8k_Dataset/Flicker8k_Dataset") -> Path:
    """Original layout: ``Flickr8k_text/Flickr8k.token.txt`` (``NAME#K<TAB>caption``) with the split
    files beside it, images nested as in the official zip (``Flickr8k_Dataset/Flicker8k_Dataset/``)."""
    root = Path(root)
    text = root / text_dir
    text.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}#{k}\t{caption}\n" for name, caps in captions.items() for k, caption in enumerate(caps)]
    (text / "Flickr8k.token.txt").write_text("".join(lines))
    if splits is not None:
        write_split_files(text, splits)
    write_images(root / image_dir, default_images(captions) if images is None else images)
    return root


def write_karpathy(root: str | Path, captions: Captions, splits: Splits,
                   images: Mapping[str, str] | None = None, image_dir: str = "Images",
                   restval: Sequence[str] = (), dataset: str = "flickr8k",
                   filepaths: Mapping[str, str] | None = None) -> Path:
    """Karpathy layout: ``dataset_<dataset>.json`` (``showtell.data.writers.write_karpathy_json``) + the images.
    Every name in ``splits`` becomes an entry (with no sentences if it has no captions); caption names in no
    split are left out of the json, since the format has no "no split". Train names listed in ``restval`` get
    split "restval". ``filepaths`` (COCO): image -> its ``filepath`` folder, where its file is written (and
    a ``cocoid``); the other images go to ``image_dir``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    filepaths = filepaths or {}
    entries = [writers.KarpathyImage(name, "restval" if name in restval else key, list(captions.get(name, [])),
                                     filepaths.get(name), 1000 + i if name in filepaths else None)
               for i, (key, name) in enumerate((key, name) for key in ("train", "val", "test")
                                               for name in splits.get(key, []))]
    writers.write_karpathy_json(root / layouts.KARPATHY_FILES[dataset], dataset, entries)
    images = default_images(captions) if images is None else images
    by_folder: dict[str, dict[str, str]] = {}
    for name, kind in images.items():
        by_folder.setdefault(filepaths.get(name, image_dir), {})[name] = kind
    for folder, kinds in sorted(by_folder.items()):
        write_images(root / folder, kinds)
    if not by_folder:
        (root / image_dir).mkdir(parents=True, exist_ok=True)
    return root


def simple_captions(num_images: int, prefix: str = "img") -> dict[str, list[str]]:
    """``num_images`` images with 5 distinct ordinary captions each."""
    return {f"{prefix}_{i:03d}.jpg": [f"A dog number {i} runs in scene {k} ." for k in range(5)]
            for i in range(num_images)}


def quirky_dataset() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """(captions, splits, images) with every quirk of the real Flickr8k files in a few images.

    Usable in the end: img_000..img_009, quoted, gray, cmyk, rgba, four (4 captions), dup (5 after its
    duplicate is dropped), oneword (keeps "Dog."), empty (4 after its empty caption is dropped).
    Left out: the ``.jpg.1`` name, missing (no file), corrupt, truncated, nocaps (file without captions),
    nosplit (in no split), unknown (in a split, without captions).
    """
    captions = simple_captions(10)
    five = [f"A cat sits on mat {k} ." for k in range(5)]
    captions.update({
        "quoted.jpg": ["A dog, brown and white, runs .", 'A sign reads "stop" .', 'A man says "hi, there" .',
                       "A plain caption here .", "Another plain caption ."],
        "2258277193_586949ec62.jpg.1": ["people waiting for the subway", *five[1:]],
        "missing.jpg": five,
        "corrupt.jpg": five,
        "truncated.jpg": five,
        "gray.jpg": five,
        "cmyk.jpg": five,
        "rgba.jpg": five,
        "four.jpg": five[:4],
        "dup.jpg": [*five[:3], "a cat sits on MAT 1", *five[3:]],
        "oneword.jpg": ["Dog.", *five[1:]],
        "empty.jpg": [*five[:2], " ... ", *five[2:4]],
        "nosplit.jpg": five,
    })
    images = default_images(captions)
    del images["missing.jpg"]
    images.update({"corrupt.jpg": "corrupt", "truncated.jpg": "truncated", "gray.jpg": "gray",
                   "cmyk.jpg": "cmyk", "rgba.jpg": "rgba_png", "nocaps.jpg": "rgb"})
    names = list(simple_captions(10))
    splits = {
        "train": [*names[:6], "quoted.jpg", "gray.jpg", "cmyk.jpg", "rgba.jpg", "four.jpg", "dup.jpg",
                  "oneword.jpg", "empty.jpg", "corrupt.jpg", "truncated.jpg"],
        "val": names[6:8],
        "test": [*names[8:], "missing.jpg", "unknown.jpg"],
    }
    return captions, splits, images
