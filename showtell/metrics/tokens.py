"""The input checks and word convention shared by CIDEr-D and ROUGE-L (pycocoevalcap's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Tokens = Sequence[str]


def _words(tokens: Any, what: str, separator: str | None) -> list[str]:
    """The words pycocoevalcap sees for ``tokens``: joined with spaces, split with ``separator``."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError(f"{what} must be a list of string tokens (showtell.vocab.tokenize), got {tokens!r}")
    try:
        return " ".join(tokens).split(separator)
    except TypeError:
        raise ValueError(f"{what} must be a list of string tokens, got {tokens!r}") from None


def check_references(references: Any, count: int | None) -> None:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list of reference lists (one per image), got {references!r}")
    if count is not None and len(references) != count:
        raise ValueError(f"got {count} hypotheses but {len(references)} reference lists; pass one per hypothesis")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"image {i} needs a non-empty list of reference token lists, got {refs!r}")


def split_hypotheses(hypotheses: Any, separator: str | None) -> list[list[str]]:
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise ValueError(f"hypotheses must be a list of token lists, got {hypotheses!r}")
    return [_words(h, f"hypothesis {i}", separator) for i, h in enumerate(hypotheses)]


def split_references(references: Sequence[Sequence[Tokens]], separator: str | None) -> list[list[list[str]]]:
    return [
        [_words(r, f"reference {j} of image {i}", separator) for j, r in enumerate(rs)]
        for i, rs in enumerate(references)
    ]
