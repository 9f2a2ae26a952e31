"""Vocabulary and the one tokenizer used everywhere (training, decoding, evaluation).

The tokenizer lowercases, deletes apostrophes ("dog's" -> "dogs"), turns every other non-alphanumeric
character into a space and splits on whitespace. BLEU is computed on exactly these tokens, so the numbers
we report are on the same tokens the model is trained on.

``normalized`` applies the same tokenizer to many captions at once (a COCO-sized corpus, 616,767 captions, in
about a second) and returns each as one string, its tokens joined by single spaces: compact to keep and to
compare, and ``str.split`` gives the tokens back.

The vocabulary is built from the *train split only* (words seen at least ``min_count`` times) and is stored
as plain JSON (also inside checkpoints); it is never pickled.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice, repeat
from pathlib import Path

import numpy as np

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_NON_WORD_OR_LINE = re.compile(r"[^a-z0-9\n]+")
# str.translate for ASCII text: every ASCII character but a-z, 0-9 and the line break becomes a space.
_ASCII_NON_WORD = {i: " " for i in range(128) if not (chr(i).islower() or chr(i).isdigit() or chr(i) == "\n")}
_CHUNK = 50_000  # captions per piece of work in batch functions (bounds the memory of temporary lists)


def tokenize(text: str) -> list[str]:
    """Lowercase, strip punctuation, split on whitespace: ``"A dog's ball, red."`` -> ``[a, dogs, ball, red]``."""
    text = _APOSTROPHES.sub("", text.lower())
    return _NON_WORD.sub(" ", text).split()


def normalized(captions: Sequence[str]) -> list[str]:
    """``tokenize`` for many captions at once: ``normalized(captions)[i] == " ".join(tokenize(captions[i]))``.

    The captions are processed joined by line breaks, so the lowercasing and the regular expressions run once
    per piece of ``_CHUNK`` captions instead of once per caption.
    """
    out: list[str] = []
    for start in range(0, len(captions), _CHUNK):
        chunk = [c.replace("\n", " ") if "\n" in c else c for c in captions[start:start + _CHUNK]]
        text = _APOSTROPHES.sub("", "\n".join(chunk).lower())
        text = text.translate(_ASCII_NON_WORD) if text.isascii() else _NON_WORD_OR_LINE.sub(" ", text)
        out.extend(" ".join(line.split()) for line in text.split("\n"))
    return out


def word_counts(texts: Iterable[str]) -> Counter:
    """How often each word occurs in ``texts`` (``normalized`` captions)."""
    counts: Counter = Counter()
    texts = iter(texts)
    while chunk := list(islice(texts, _CHUNK)):
        counts.update(" ".join(chunk).split())
    return counts


class Vocabulary:
    """Maps words to ids and back. Ids 0..3 are always ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Sequence[str], min_count: int | None = None):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not contain duplicate words")
        self.itos: list[str] = words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(words)}
        self.min_count = min_count

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> Vocabulary:
        """Words occurring at least ``min_count`` times in ``captions`` (pass train captions only).

        Order is by decreasing count, ties alphabetical, so the same captions always give the same ids.
        """
        return cls.from_counts(word_counts(normalized(list(captions))), min_count)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5) -> Vocabulary:
        """As ``build``, from word counts (``word_counts`` of the train split's ``normalized`` captions)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept], min_count=min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, min_count={self.min_count})"

    def encode(self, caption: str | Sequence[str], add_special: bool = True) -> list[int]:
        """Caption (string or tokens) -> ids, ``<start> w1..wn <end>`` when ``add_special``."""
        tokens = tokenize(caption) if isinstance(caption, str) else caption
        ids = [self.stoi.get(tok, UNK_ID) for tok in tokens]
        return [START_ID, *ids, END_ID] if add_special else ids

    def encode_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Many ``normalized`` captions at once: their word ids (no ``<start>``/``<end>``; unknown words are
        ``<unk>``) in one flat int32 array, and each caption's number of words (int64)."""
        lengths = np.fromiter(map(str.count, texts, repeat(" ")), dtype=np.int64, count=len(texts)) + 1
        lengths[np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) == 0] = 0
        ids = np.empty(int(lengths.sum()), dtype=np.int32)
        position, lookup = 0, self.stoi.get
        for start in range(0, len(texts), _CHUNK):
            words = " ".join(texts[start:start + _CHUNK]).split()
            ids[position:position + len(words)] = np.fromiter(map(lookup, words, repeat(UNK_ID)), dtype=np.int32,
                                                              count=len(words))
            position += len(words)
        return ids, lengths

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens: stops at ``<end>``, drops ``<pad>`` and ``<start>``."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            tokens.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return tokens

    def decode_str(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode(ids))

    # Plain-data persistence (JSON, and a dict that fits inside a checkpoint).
    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "min_count": self.min_count}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        return cls(data["itos"], min_count=data.get("min_count"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text()))
