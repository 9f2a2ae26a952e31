"""Flickr8k look-alike datasets for benchmarks: real-length random captions and noise photos in the original layout."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from showtell.data.formats import read_caption_file
from showtell.data.layouts import CAPTIONS_PER_IMAGE, IMAGE_DIR, seeded_split
from showtell.data.writers import has_marker, write_dataset_folder, write_kaggle
from showtell.vocab import tokenize

FLICKR8K_LIKE_MARKER = ".showtell_flickr8k_like.json"
FLICKR8K_LIKE_VERSION = 2  # 2: caption lengths may be copied from the real captions
FLICKR8K_IMAGES, FLICKR8K_TRAIN, FLICKR8K_EVAL = 8091, 6000, 1000  # + 91 images in no split
NUM_WORDS, ZIPF_EXPONENT = 3500, 1.2  # -> ~3,000 words with count >= 5 in 6,000 x 5 train captions
# Gamma lengths: mean 11.8, sd ~4.2. The real captions have 11.8 words when split on spaces (sd 3.9), but
# only 10.8 by showtell's tokenizer, which drops the final "."; real lengths (``real_lengths``) are exact.
MEAN_WORDS, MAX_WORDS, LENGTH_SHAPE = 11.8, 38, 8.0
ONE_WORD_RATE = 1 / 2000
COMMA_RATE = 0.06  # Kaggle's captions.txt quotes captions with commas (~6% of them)
PHOTO_QUALITY = 90


def synthetic_words(n: int) -> list[str]:
    """n distinct lowercase words, shortest first (frequent words are short, as in English)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70
    words = syllables + [a + b for a in syllables for b in syllables]  # 70 + 4,900
    if n > len(words):
        raise ValueError(f"at most {len(words)} synthetic words, asked for {n}")
    return words[:n]


def caption_lengths(caption_file: str | Path) -> list[int]:
    """Words per caption (showtell's tokenizer) in a real caption file, e.g. ``Flickr8k.token.txt``."""
    return [n for n in (len(tokenize(caption)) for _, caption in read_caption_file(caption_file)) if n]


def synthetic_captions(num_images: int, seed: int, real_lengths: Sequence[int] | None = None) -> list[list[str]]:
    """5 captions per image, ``A word word , word .``, with Zipf-distributed words. Lengths (in words) are
    drawn from ``real_lengths`` (with replacement), else from a Flickr8k-like gamma distribution."""
    rng = np.random.default_rng(seed)
    n = num_images * CAPTIONS_PER_IMAGE
    if real_lengths is None:
        lengths = np.clip(np.rint(rng.gamma(LENGTH_SHAPE, MEAN_WORDS / LENGTH_SHAPE, n)), 1, MAX_WORDS).astype(int)
        lengths[rng.random(n) < ONE_WORD_RATE] = 1
        lengths[n // 2] = MAX_WORDS  # Flickr8k's longest caption has 38 words
    else:
        lengths = rng.choice(np.asarray(real_lengths, dtype=np.int64), size=n)
    p = np.arange(1, NUM_WORDS + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    ids = rng.choice(NUM_WORDS, size=int(lengths.sum()), p=p / p.sum())
    vocab = synthetic_words(NUM_WORDS)
    commas = rng.random(n) < COMMA_RATE
    captions, start = [], 0
    for i, length in enumerate(lengths):
        words = [vocab[k] for k in ids[start:start + length]]
        start += length
        words[0] = words[0].capitalize()
        if commas[i] and length > 3:
            words.insert(length // 2, ",")  # punctuation: the tokenizer drops it, the CSV must quote it
        captions.append(" ".join(words) + " .")
    return [captions[i * CAPTIONS_PER_IMAGE:(i + 1) * CAPTIONS_PER_IMAGE] for i in range(num_images)]


def render_photo(job: tuple[str, int, int, int, int]) -> None:
    """A photo-sized JPEG: smooth colour field, mid-frequency texture, a few shapes, sensor-like noise
    (~90 KB at 500x375, decoding about as costly as a Flickr8k photo)."""
    path, index, seed, width, height = job
    rng = np.random.default_rng([seed, index])
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    image = Image.blend(low, Image.fromarray(mid).resize((width, height), Image.BILINEAR), 0.35)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, width // 2 + 5)), y0 + int(rng.integers(4, height // 2 + 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 14, (height, width, 1)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=PHOTO_QUALITY)


def flickr8k_split_sizes(num_images: int) -> dict[str, int]:
    """Flickr8k's 6000/1000/1000 (+91 in no split) scaled to ``num_images``; every split non-empty."""
    n_eval = max(1, round(num_images * FLICKR8K_EVAL / FLICKR8K_IMAGES))
    n_train = min(num_images - 2 * n_eval, round(num_images * FLICKR8K_TRAIN / FLICKR8K_IMAGES))
    return {"train": n_train, "val": n_eval, "test": n_eval}


def _write_flickr8k_like(folder: Path, num_images: int, width: int, height: int, seed: int,
                         real_lengths: Sequence[int] | None, workers: int, progress: bool) -> None:
    (folder / IMAGE_DIR).mkdir()
    names = [f"synth_{i:05d}.jpg" for i in range(num_images)]
    write_kaggle(folder, dict(zip(names, synthetic_captions(num_images, seed, real_lengths))),
                 seeded_split(names, seed, flickr8k_split_sizes(num_images)))
    jobs = [(str(folder / IMAGE_DIR / name), i, seed, width, height) for i, name in enumerate(names)]
    bar = tqdm(total=num_images, desc="generating JPEGs", unit="img", disable=not progress, leave=False)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(render_photo, jobs, chunksize=32):
                bar.update()
    else:
        for job in jobs:
            render_photo(job)
            bar.update()
    bar.close()


def generate_flickr8k_like(root: str | Path, num_images: int = FLICKR8K_IMAGES, width: int = 500, height: int = 375,
                           seed: int = 0, lengths_from: str | Path | None = None, workers: int = 1,
                           progress: bool = False) -> bool:
    """Write the Flickr8k-shaped dataset into root (replacing what is there) unless root already holds it with
    these parameters; returns whether it was written. ``lengths_from``: a real caption file whose caption
    lengths to copy (default: the synthetic length distribution)."""
    if num_images < 8:
        raise ValueError(f"num_images must be at least 8 (every split needs an image), got {num_images}")
    real = None if lengths_from is None else caption_lengths(lengths_from)
    lengths = "synthetic"
    if real is not None:  # the marker names the distribution itself: another caption file regenerates the data
        histogram = json.dumps(sorted(Counter(real).items())).encode()
        lengths = f"{Path(lengths_from).name} {hashlib.sha1(histogram).hexdigest()[:12]}"
    params = {"generator": "showtell.demo.flickr8k_like", "version": FLICKR8K_LIKE_VERSION, "num_images": num_images,
              "width": width, "height": height, "seed": seed, "lengths": lengths}
    complete = partial(has_marker, marker=FLICKR8K_LIKE_MARKER, params=params)
    if complete(root):
        return False
    return write_dataset_folder(
        root, lambda folder: _write_flickr8k_like(folder, num_images, width, height, seed, real, workers, progress),
        FLICKR8K_LIKE_MARKER, params, keep_if=complete)
