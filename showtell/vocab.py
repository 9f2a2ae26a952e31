"""Vocabulary and the one tokenizer used everywhere (training, decoding, evaluation).

The tokenizer lowercases, deletes apostrophes ("dog's" -> "dogs"), turns every other non-alphanumeric
character into a space and splits on whitespace. BLEU is computed on exactly these tokens, so the numbers
we report are on the same tokens the model is trained on.

The vocabulary is built from the *train split only* (words seen at least ``min_count`` times) and is stored
as plain JSON (also inside checkpoints); it is never pickled.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase, strip punctuation, split on whitespace: ``"A dog's ball, red."`` -> ``[a, dogs, ball, red]``."""
    text = _APOSTROPHES.sub("", text.lower())
    return _NON_WORD.sub(" ", text).split()


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
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
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
