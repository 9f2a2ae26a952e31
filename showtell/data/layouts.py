"""The facts of the published dataset layouts, shared by their readers (``locate``, ``formats``, ``sources``) and
writers (``writers``): file and folder names, the formats in detection order, where to get each dataset, and
the seeded by-image split of layouts that carry none.

Kaggle Flickr8k::

    root/Images/...                              the image files
    root/captions.txt                            CSV ``image,caption``, one row per caption
    root/Flickr_8k.{train,dev,test}Images.txt    one image name per line (the official split files' names)

The original Flickr8k files: ``Flickr8k.token.txt`` (``name.jpg#k<TAB>caption``), the same three split files,
and ``Flickr8k_Dataset/``.

Karpathy's split (``dataset_flickr8k.json``, ``dataset_flickr30k.json``, ``dataset_coco.json``; Karpathy &
Fei-Fei 2015)::

    {"images": [{"filepath": "val2014",            (COCO only: the image's folder)
                 "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
                 "split": "train" | "restval" | "val" | "test",
                 "sentids": [0, 1, ...], "cocoid": 391895,  (COCO only)
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...], "imgid": 0, "sentid": 0}, ...]},
                ...],
     "dataset": "flickr8k" | "flickr30k" | "coco"}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
CAPTIONS_FILE = "captions.txt"
IMAGE_DIR = "Images"
KARPATHY_FILES = {"flickr8k": "dataset_flickr8k.json", "flickr30k": "dataset_flickr30k.json",
                  "coco": "dataset_coco.json"}
DATASETS = tuple(KARPATHY_FILES)
KARPATHY_SPLITS = ("train", "restval", "val", "test")


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
