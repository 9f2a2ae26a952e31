"""The offline synthetic shapes demo in the Kaggle Flickr8k layout (the benchmark's Flickr8k-shaped data is in
``showtell.data.lookalike``).

No machine of this project can download Flickr8k, so ``generate_demo`` writes a small stand-in that every
part of showtell reads exactly like the real thing::

    root/Images/shapes_00000.jpg ...        plain background, 1 to 3 coloured shapes
    root/captions.txt                        CSV ``image,caption``, 5 rows per image (some quoted: commas)
    root/Flickr_8k.{train,dev,test}Images.txt  75% / 12.5% / 12.5% of the images, one name per line
    root/.showtell_demo.json                 parameters; written last, so its presence means "complete"

Designed to be learnable from the pooled features of a frozen, *randomly initialised* CNN (nothing can be
downloaded), measured with resnet18 (weights=None) + LSTM, see the project README:
- captions are a deterministic function of the scene: five fixed templates (the same five for every image),
  each with its own first word(s), all naming the shapes in one canonical order (left to right, top to
  bottom); so once a greedy decoder has chosen its first word the rest follows from the image;
- scenes are never ambiguous: shapes never overlap and no two shapes share a position word;
- shapes sit at five fixed positions, without random jitter: random features are not translation invariant,
  and a jitter of 1 pixel already cost ~10 points of shape-kind accuracy (linear probe); an off-white
  background gave clearly better shape-kind separation than a mid-grey one (0.98 vs 0.87);
- a small vocabulary (41 words) of saturated colours, four shape kinds and two clearly different sizes.
Random-CNN features are far from zero-mean (ReLU outputs, a constant background), so the decoder should
see them standardised per dimension (or through a BatchNorm); without that an LSTM barely learns colours.

Everything is seeded (one numpy Generator per image, derived from the seed and the image index), so the same
seed gives byte-identical files.

``generate_flickr8k_like`` writes the benchmark's data (``showtell.bench``): what matters there is the shape
of Flickr8k, not learnability: 500x375 photo-like JPEGs (~90 KB, decoding as costly as a Flickr8k photo), 5
captions each whose lengths are drawn from the real captions' word counts when a real caption file is given
(else a gamma distribution: mean ~11.8 words, max 38, some one-word captions), words drawn from a Zipf
distribution over 3,500 synthetic words (about 3,000 of them occur >= 5 times in 6,000 x 5 train captions),
~6% of captions with a comma, and the official split sizes (6000/1000/1000, 91 images in no split) scaled to
the number of images.

Both generators write into a temporary sibling folder and rename it into place at the end
(``showtell.data.writers.write_dataset_folder``), so an interrupted run never leaves a folder that looks complete.
Run ``python -m showtell.demo --root data/demo``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from showtell.data.layouts import CAPTIONS_FILE, IMAGE_DIR, SPLIT_FILES, seeded_split
from showtell.data.writers import has_marker, write_dataset_folder, write_kaggle

MARKER = ".showtell_demo.json"
VERSION = 2  # bump when the images or captions change, so old demo folders are regenerated
_IMAGE_NAME = re.compile(r"shapes_\d{5,}\.jpg")
_DEMO_ENTRIES = {MARKER, CAPTIONS_FILE, IMAGE_DIR, ".showtell_cache", *SPLIT_FILES.values()}  # + feature cache
JPEG_QUALITY = 95
SUPERSAMPLE = 2  # draw at 2x and downscale: anti-aliased edges
BACKGROUND = (245, 245, 245)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (245, 205, 10),
    "purple": (145, 45, 190),
}


KINDS = ("circle", "square", "triangle", "star")
SIZES = ("large", "small")
SYNONYM = {"large": "big", "small": "little"}
RADIUS = {"large": 0.145, "small": 0.09}  # fraction of the image size: large enough to dominate pooled features


# Where each position word puts a shape's centre (x, y as fractions of the image size): 0.32 apart, so
# even two large stars side by side (half-width 1.09 * 0.145) leave a gap.
POSITIONS = {
    "left": (0.18, 0.5),
    "middle": (0.5, 0.5),
    "right": (0.82, 0.5),
    "top": (0.5, 0.18),
    "bottom": (0.5, 0.82),
}


AT = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
      "middle": "in the middle"}


# The layouts a scene can have: the position words of its shapes, in the order the captions name them.
LAYOUTS = (
    ("left",), ("right",), ("top",), ("bottom",), ("middle",),
    ("left", "right"), ("top", "bottom"),
    ("left", "middle", "right"),
)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str


def random_scene(rng: np.random.Generator) -> list[Shape]:
    """1 to 3 shapes (equally likely), in caption order; every shape gets its own position word."""
    num_shapes = int(rng.integers(1, 4))
    layouts = [layout for layout in LAYOUTS if len(layout) == num_shapes]
    layout = layouts[int(rng.integers(len(layouts)))]
    colours, kinds = list(COLOURS), list(KINDS)
    return [Shape(kinds[int(rng.integers(len(kinds)))], colours[int(rng.integers(len(colours)))],
                  SIZES[int(rng.integers(len(SIZES)))], position) for position in layout]


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a triangle or a five-pointed star of 'radius' r centred on (cx, cy), pointing up."""
    if kind == "triangle":
        radii, angles = [1.15 * r] * 3, np.deg2rad([-90, 30, 150])
    else:
        radii, angles = [1.15 * r, 0.5 * r] * 5, np.deg2rad(np.arange(10) * 36 - 90)
    return [(cx + rad * np.cos(a), cy + rad * np.sin(a) + 0.1 * r) for rad, a in zip(radii, angles)]


def draw_scene(scene: Sequence[Shape], image_size: int) -> Image.Image:
    """Render the scene as an RGB image of image_size x image_size pixels."""
    size = image_size * SUPERSAMPLE
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene:
        cx, cy = (coord * size for coord in POSITIONS[shape.position])
        r = RADIUS[shape.size] * size
        colour = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif shape.kind == "square":
            half = 0.9 * r
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=colour)
        else:
            draw.polygon(_polygon(shape.kind, cx, cy, r), fill=colour)
    return image.reduce(SUPERSAMPLE)


def _phrase(shape: Shape, synonyms: bool = False) -> str:
    size = SYNONYM[shape.size] if synonyms else shape.size
    return f"{size} {shape.colour} {shape.kind}"


def _join(phrases: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(scene: Sequence[Shape]) -> list[str]:
    """Five different captions, one per fixed template; each a deterministic function of the scene.

    Every template has its own first word(s) (a / there / on, at, in / one, two, three / the), so once a
    decoder has picked its first word the rest of the caption follows from the image alone, and every
    template names the shapes in the same order (left to right, top to bottom).
    """
    a = [f"a {_phrase(s)}" for s in scene]
    big = [f"a {_phrase(s, synonyms=True)}" for s in scene]
    at = [AT[s.position] for s in scene]
    at_a = "; ".join(f"{w}, {p}" for w, p in zip(at, a))
    if len(scene) == 1:
        captions = [
            f"{a[0]} {at[0]}",
            f"there is {big[0]} {at[0]} of the picture",
            at_a,
            f"one shape: {a[0]}, {at[0]}",
            f"the picture shows {big[0]} {at[0]}",
        ]
    elif len(scene) == 2:
        horizontal = scene[0].position == "left"
        captions = [
            f"{a[0]} {'to the left of' if horizontal else 'above'} {a[1]}",
            f"there is {big[0]} {at[0]} and {big[1]} {at[1]}",
            at_a,
            f"two shapes, {a[0]} and {a[1]}",
            f"the picture shows {big[0]} and, {'to its right' if horizontal else 'below it'}, {big[1]}",
        ]
    else:
        captions = [
            f"{_join(a)}, from left to right",
            f"there is {_join([f'{p} {w}' for p, w in zip(big, at)])}",
            at_a,
            f"three shapes, {_join(a)}",
            f"the picture shows {big[0]}, then {big[1]}, then {big[2]}",
        ]
    return [caption[0].upper() + caption[1:] + "." for caption in captions]


def _params(num_images: int, seed: int, image_size: int) -> dict:
    return {"generator": "showtell.demo", "version": VERSION, "num_images": num_images, "seed": seed,
            "image_size": image_size}


def is_complete(root: str | Path, num_images: int = 3000, seed: int = 0, image_size: int = 128) -> bool:
    """True when root holds a finished demo generated with exactly these parameters."""
    root = Path(root)
    files_there = all((root / name).is_file() for name in [CAPTIONS_FILE, *SPLIT_FILES.values()])
    return (has_marker(root, MARKER, _params(num_images, seed, image_size)) and files_there
            and (root / IMAGE_DIR).is_dir() and len(os.listdir(root / IMAGE_DIR)) == num_images)


def _is_demo_folder(root: Path) -> bool:
    """Only demo files (any parameters, complete or not) or nothing at all: safe to delete and rewrite."""
    entries = os.listdir(root)
    if not set(entries) <= _DEMO_ENTRIES:
        return False
    images = root / IMAGE_DIR
    return not images.exists() or (images.is_dir() and all(_IMAGE_NAME.fullmatch(n) for n in os.listdir(images)))


def _write(folder: Path, num_images: int, seed: int, image_size: int, progress: bool) -> None:
    """Write the images, captions.txt and the split files (75% / 12.5% / 12.5%) into folder."""
    (folder / IMAGE_DIR).mkdir()
    width = max(5, len(str(num_images - 1)))
    names = [f"shapes_{i:0{width}d}.jpg" for i in range(num_images)]
    captions = {}
    for i, name in enumerate(tqdm(names, desc="demo images", disable=not progress)):
        rng = np.random.default_rng([seed, 0, i])  # one stream per image: order-independent
        scene = random_scene(rng)
        # Fixed quality and no chroma subsampling: crisp colours, the same bytes on every run.
        draw_scene(scene, image_size).save(folder / IMAGE_DIR / name, quality=JPEG_QUALITY, subsampling=0)
        captions[name] = captions_for(scene)
    write_kaggle(folder, captions, seeded_split(names, seed))


def generate_demo(root: str | Path, num_images: int = 3000, seed: int = 0, image_size: int = 128,
                  progress: bool = True, overwrite: bool = False) -> Path:
    """Write the shapes demo into root (Kaggle Flickr8k layout plus split files) and return root.

    Returns at once when root already holds a complete demo with the same parameters (unless overwrite).
    An incomplete demo, or one with other parameters, is replaced; a folder holding anything else is never
    touched (FileExistsError).
    """
    if num_images < 8:
        raise ValueError(f"num_images must be at least 8 (so every split gets an image), got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    root = Path(root)
    if not overwrite and is_complete(root, num_images, seed, image_size):
        return root
    if root.exists() and not (root.is_dir() and _is_demo_folder(root)):
        raise FileExistsError(f"{root} exists and is not a showtell demo folder; refusing to overwrite it: "
                              f"pass an empty or new folder as root")
    # Another process may finish the same demo meanwhile: keep theirs (unless overwrite).
    keep = None if overwrite else partial(is_complete, num_images=num_images, seed=seed, image_size=image_size)
    # _write is looked up when called, so tests can stand in for it.
    write_dataset_folder(root, lambda folder: _write(folder, num_images, seed, image_size, progress), MARKER,
                         _params(num_images, seed, image_size), keep_if=keep)
    return root
