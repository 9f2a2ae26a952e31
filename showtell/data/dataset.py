"""Caption datasets: (image or features, caption) pairs for training, images with all their references for
evaluation, and the batch they are collated into."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from showtell.data.features import FeatureTable
from showtell.data.locate import image_file
from showtell.files import load_rgb
from showtell.vocab import END_ID, PAD_ID, START_ID, Vocabulary, normalized, word_counts


class Batch(NamedTuple):
    images: Tensor  # (B, 3, H, W) pixels, or (B, D) precomputed encoder features
    captions: Tensor  # (B, T) long: <start> w1..wn <end> then <pad>
    lengths: Tensor  # (B,) tokens per caption including <start> and <end>
    references: list[list[list[str]]]  # per sample, every reference caption as tokens
    image_ids: list[str]
    indices: Tensor  # (B,) dataset index of each sample (DDP de-duplication; per-image datasets: the image)


class References(Sequence):
    """Per image, its reference captions as token lists (``references[i]``), split on access from one
    ``normalized`` string per caption: a COCO-sized training split keeps 566,737 strings instead of ~6 million
    token strings, and a batch splits its own few hundred in well under a millisecond."""

    def __init__(self, texts: list[str], counts: Sequence[int]):
        self.texts = texts  # every caption, image after image
        self._counts = [int(c) for c in counts]
        self.starts = [0, *np.cumsum(self._counts)[:-1].tolist()] if self._counts else []  # each image's first

    def __len__(self) -> int:
        return len(self._counts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        start = self.starts[i]
        return [text.split() for text in self.texts[start:start + self._counts[i]]]


class CaptionDataset(Dataset):
    """Train (``per_caption``): one sample per (image, caption). Eval and self-critical training: one sample
    per image (index = image), all references, the first one as its caption.

    Captions are tokenized and encoded once for all (``showtell.vocab.normalized``, ``Vocabulary.encode_many``)
    into one flat array of word ids; ``__getitems__`` pads a batch's captions and returns a whole ``Batch``.
    """

    def __init__(self, names: Sequence[str], captions: dict[str, list[str]], vocab: Vocabulary, *,
                 per_caption: bool, max_len: int, features: FeatureTable | None = None,
                 image_dir: Path | None = None, subfolders: Mapping[str, str] | None = None, transform=None,
                 texts: Mapping[str, list[str]] | None = None):
        self.names = list(names)
        per_image = [captions[n] for n in self.names]
        counts = np.fromiter(map(len, per_image), dtype=np.int64, count=len(per_image))
        if texts is None or not all(n in texts for n in self.names):
            flat = normalized([c for caps in per_image for c in caps])
        else:  # the corpus's own, normalized once when it was read
            flat = [t for n in self.names for t in texts[n]]
        self.references = References(flat, counts)
        if per_caption:
            self._image_of = np.repeat(np.arange(len(counts)), counts)  # (N,)
            texts = self.references.texts
        else:  # eval: loss on the first reference
            self._image_of = np.arange(len(counts))
            texts = [self.references.texts[first] for first in self.references.starts]
        self._words, words_per_caption = vocab.encode_many(texts)  # flat word ids, words of each caption
        self._starts = np.concatenate([[0], np.cumsum(words_per_caption)[:-1]]).astype(np.int64)  # (N,)
        self.truncated = int((words_per_caption > max_len).sum())
        self._kept = np.minimum(words_per_caption, max_len)  # (N,) words used of each caption
        self.lengths = torch.from_numpy(self._kept + 2)  # (N,) tokens with <start> and <end>
        self.image_of = torch.from_numpy(self._image_of)
        self.features, self.image_dir, self.transform = features, image_dir, transform
        self.subfolders = {n: subfolders[n] for n in self.names if n in subfolders} if subfolders else {}
        if features is not None:
            self.feature_rows = np.array([features.row[n] for n in self.names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._image_of)

    def image_path(self, i: int) -> Path:
        return image_file(self.image_dir, self.subfolders, self.names[i])

    def unknown_words(self, vocab: Vocabulary) -> tuple[int, int]:
        """(words not in ``vocab``, all words) over every reference caption."""
        counts = word_counts(self.references.texts)
        return sum(c for word, c in counts.items() if word not in vocab), sum(counts.values())

    def __getitem__(self, index: int | Sequence[int]) -> Batch:
        # A list of indices is a whole batch (``BucketBatchSampler`` yields batches to a loader without
        # auto-batching).
        return self.__getitems__([index] if isinstance(index, int) else index)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        image_idx = self._image_of[idx]
        kept = self._kept[idx]
        width = int(kept.max())
        captions = np.full((len(idx), width + 2), PAD_ID, dtype=np.int64)  # (B, T) <start> w1..wn <end> <pad>..
        captions[:, 0] = START_ID
        position = np.arange(width)
        real = position[None, :] < kept[:, None]  # (B, T-2)
        captions[:, 1:-1][real] = self._words[(self._starts[idx][:, None] + position[None, :])[real]]
        captions[np.arange(len(idx)), kept + 1] = END_ID
        if self.features is not None:
            images = self.features.gather(self.feature_rows[image_idx])  # (B, D)
        else:
            images = torch.stack([self.transform(load_rgb(self.image_path(i))) for i in image_idx.tolist()])
        image_list = image_idx.tolist()
        return Batch(images, torch.from_numpy(captions), torch.from_numpy(kept + 2),
                     [self.references[i] for i in image_list], [self.names[i] for i in image_list],
                     torch.from_numpy(idx))
