"""CIDEr-D and ROUGE-L exactly as coco-caption computes them, vectorised with numpy (self-critical rewards).

CIDEr-D (Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015) and
ROUGE-L (Lin 2004) as implemented by coco-caption / pycocoevalcap (``cider/cider_scorer.py``,
``rouge/rouge.py``), the implementation behind the published tables. Same numbers (to ~1e-12, see
tests/metrics/test_cider_rouge.py), but n-grams are interned to integer ids so that whole corpora are scored with a few
numpy sorts instead of Python dictionaries per caption. Details reproduced from pycocoevalcap:

- CIDEr-D: tf-idf vectors of the 1..4-grams, idf weight ``log(num_documents) - log(max(1, df))`` where df
  counts the images whose references contain the n-gram. coco-caption counts df over the *evaluated*
  references and uses the number of evaluated images as ``num_documents`` (so one image alone scores 0);
  rewards pass a `DocumentFrequency` of the training references instead. Per reference and n: clipped dot
  product ``sum min(h, r) * r`` over the cosine norms, times ``exp(-delta**2 / (2 * 6**2))``; then mean over
  n, mean over references, x 10. The length ``delta`` is the difference of the *bigram* counts
  (``max(0, len - 1)``): pycocoevalcap counts the length while it visits the bigrams. This equals the
  difference in words whenever the score can be non-zero (only an empty caption differs, and it scores 0).
- ROUGE-L: longest common subsequence; the F-measure (beta = 1.2) combines the *largest precision* and the
  *largest recall* over the references, which may come from different references.
- Captions are token lists, joined with spaces and re-split as pycocoevalcap splits the strings that
  `showtell.metrics.scores.caption_metrics` gives it (CIDEr: ``str.split()``; ROUGE-L: ``str.split(" ")``, so an
  empty caption is one empty token and an empty hypothesis matches an empty reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from showtell.metrics.tokens import Tokens, check_references, split_hypotheses, split_references

MAX_N = 4  # CIDEr-D uses 1..4-grams
SIGMA = 6.0  # standard deviation of the Gaussian length penalty


class _NgramIndex:
    """Exact integer ids of the 1..4-grams of a list of captions, with the occurrences of each.

    Order 1 ids are token ids (``vocab``). An n-gram is keyed by ``id(prefix (n-1)-gram) * V + id(last token)``
    (V = vocabulary size, no collisions) and its id is its position in the sorted unique keys of its order.
    """

    def __init__(self, captions: Sequence[Sequence[str]]):
        self.vocab: dict[str, int] = {}
        flat = [self.vocab.setdefault(word, len(self.vocab)) for caption in captions for word in caption]
        tokens = np.array(flat, dtype=np.int64)
        lengths = np.fromiter(map(len, captions), dtype=np.int64, count=len(captions))
        owner = np.repeat(np.arange(len(captions)), lengths)  # caption of each token position
        self.size = len(self.vocab)
        self.keys: list[np.ndarray] = [np.arange(self.size, dtype=np.int64)]
        # occurrences[n - 1] = (caption, n-gram id) of every n-gram starting position, in text order
        self.occurrences: list[tuple[np.ndarray, np.ndarray]] = [(owner, tokens)]
        ids = tokens  # id of the n-gram starting at each position (-1: runs past the end of its caption)
        for n in range(2, MAX_N + 1):
            starts = max(len(tokens) - n + 1, 0)
            valid = (owner[:starts] == owner[n - 1 :]) & (ids[:starts] >= 0)
            keys, inverse = np.unique(ids[:starts][valid] * self.size + tokens[n - 1 :][valid], return_inverse=True)
            ids = np.full(starts, -1, dtype=np.int64)
            ids[valid] = inverse.ravel()
            self.keys.append(keys)
            self.occurrences.append((owner[:starts][valid], ids[valid]))

    def num_ngrams(self, n: int) -> int:
        return len(self.keys[n - 1])

    def translate(self, other: _NgramIndex) -> list[np.ndarray]:
        """For each order n, the id in ``self`` of every n-gram of ``other`` (-1 where ``self`` lacks it)."""
        first = np.array([self.vocab.get(word, -1) for word in other.vocab], dtype=np.int64)
        result = [first]
        for n in range(2, MAX_N + 1):
            prefix = result[-1][other.keys[n - 1] // max(other.size, 1)]
            last = first[other.keys[n - 1] % max(other.size, 1)]
            result.append(self._find(n, prefix, last))
        return result

    def _find(self, n: int, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Ids of the n-grams made of (n-1)-gram ``prefix`` and token ``last`` (ids in self), -1 if absent."""
        known = (prefix >= 0) & (last >= 0)
        keys = prefix * self.size + last
        position = np.searchsorted(self.keys[n - 1], keys)
        found = known & (position < self.num_ngrams(n))
        found[found] = self.keys[n - 1][position[found]] == keys[found]
        return np.where(found, position, -1)

    def lookup(self, ngram: Tokens) -> int:
        """Id of one n-gram (a tuple of words), -1 when absent."""
        if not 1 <= len(ngram) <= MAX_N:
            raise ValueError(f"n-grams have 1 to {MAX_N} words, got {ngram!r}")
        ngram_id = self.vocab.get(ngram[0], -1)
        for n, word in enumerate(ngram[1:], start=2):
            ngram_id = int(self._find(n, np.array([ngram_id]), np.array([self.vocab.get(word, -1)]))[0])
        return ngram_id


def _term_frequencies(index: _NgramIndex, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(caption, n-gram id, count) of every distinct n-gram of every caption of ``index``."""
    caption, ngram = index.occurrences[n - 1]
    width = max(index.num_ngrams(n), 1)
    pairs, counts = np.unique(caption * width + ngram, return_counts=True)
    return pairs // width, pairs % width, counts.astype(np.float64)


class DocumentFrequency:
    """n-gram document frequencies of a reference corpus (one document per image), for the CIDEr-D idf.

    ``num_documents`` is the number of images counted over; ``df[("a", "dog")]`` the frequency of one n-gram.
    """

    def __init__(self, index: _NgramIndex, counts: list[np.ndarray], num_documents: int):
        self._index = index
        self._counts = counts  # counts[n - 1][id]: number of images whose references contain the n-gram
        self.num_documents = num_documents

    @classmethod
    def from_references(cls, references: Sequence[Sequence[Tokens]]) -> DocumentFrequency:
        """Count, for every n-gram, the images (entries of ``references``) whose references contain it."""
        check_references(references, None)
        words = split_references(references, None)
        index = _NgramIndex([caption for refs in words for caption in refs])
        image_of_caption = np.repeat(np.arange(len(words)), [len(refs) for refs in words])
        counts = []
        for n in range(1, MAX_N + 1):
            caption, ngram = index.occurrences[n - 1]
            width = max(index.num_ngrams(n), 1)
            in_image = np.unique(image_of_caption[caption] * width + ngram)  # each n-gram once per image
            counts.append(np.bincount(in_image % width, minlength=index.num_ngrams(n)).astype(np.float64))
        return cls(index, counts, len(references))

    def __getitem__(self, ngram: Tokens) -> int:
        """Document frequency of one n-gram given as a tuple of words (0 when unseen)."""
        ngram_id = self._index.lookup(tuple(ngram))
        return int(self._counts[len(ngram) - 1][ngram_id]) if ngram_id >= 0 else 0

    def idf(self, other: _NgramIndex) -> list[np.ndarray]:
        """CIDEr-D weight ``log(num_documents) - log(max(1, df))`` of every n-gram of ``other``, per order."""
        log_documents = np.log(float(self.num_documents))
        weights = []
        for n, ids in enumerate(self._index.translate(other), start=1):
            df = np.zeros(len(ids))
            df[ids >= 0] = self._counts[n - 1][ids[ids >= 0]]
            weights.append(log_documents - np.log(np.maximum(1.0, df)))
        return weights


class CiderReward:
    """CIDEr-D of many captions against the references of a fixed set of images (self-critical rewards).

    The references' n-gram tf-idf vectors, norms and lengths are computed once; a call interns the n-grams
    of all hypotheses, joins them with the reference n-grams of their image by sorted search, and sums the
    clipped products with ``np.bincount``.
    """

    def __init__(self, references: Sequence[Sequence[Tokens]], document_frequency: DocumentFrequency):
        check_references(references, None)
        if not isinstance(document_frequency, DocumentFrequency):
            raise ValueError(f"document_frequency must be a DocumentFrequency, got {type(document_frequency)}")
        self.document_frequency = document_frequency
        words = split_references(references, None)
        self.num_images = len(words)
        self._refs_per_image = np.array([len(refs) for refs in words], dtype=np.int64)
        self._first_ref = np.concatenate([[0], np.cumsum(self._refs_per_image)[:-1]]).astype(np.int64)
        captions = [caption for refs in words for caption in refs]
        image_of_ref = np.repeat(np.arange(self.num_images), self._refs_per_image)
        self._bigrams = np.array([max(0, len(c) - 1) for c in captions], dtype=np.float64)  # pycocoevalcap length
        self._index = _NgramIndex(captions)
        weights = document_frequency.idf(self._index)
        # One id space for all orders, so that (image, n-gram) is a single sortable integer key.
        self._offsets = np.cumsum([0] + [self._index.num_ngrams(n) for n in range(1, MAX_N + 1)])
        self._width = max(int(self._offsets[-1]), 1)
        norms = np.zeros((len(captions), MAX_N))
        keys, ref, values = [], [], []
        for n in range(1, MAX_N + 1):
            caption, ngram, tf = _term_frequencies(self._index, n)
            value = tf * weights[n - 1][ngram]  # tf-idf entry of the reference vector
            norms[:, n - 1] = np.bincount(caption, value**2, minlength=len(captions))
            keys.append(image_of_ref[caption] * self._width + self._offsets[n - 1] + ngram)
            ref.append(caption)
            values.append(value)
        self._norms = np.sqrt(norms)
        order = np.argsort(np.concatenate(keys), kind="stable")
        self._keys = np.concatenate(keys)[order]  # sorted (image, n-gram) keys of all reference entries
        self._entry_ref = np.concatenate(ref)[order]  # global reference number of each entry
        self._entry_slot = self._entry_ref - self._first_ref[image_of_ref[self._entry_ref]]  # j within its image
        self._entry_value = np.concatenate(values)[order]

    def __call__(self, hypotheses: Sequence[Tokens], image_index: Sequence[int]) -> np.ndarray:
        """CIDEr-D (float64, shape (N,)) of ``hypotheses[i]`` against the references of ``image_index[i]``."""
        words = split_hypotheses(hypotheses, None)
        image = np.asarray(image_index)
        if image.shape != (len(words),) or (len(words) and not np.issubdtype(image.dtype, np.integer)):
            raise ValueError(
                f"image_index must hold one integer per hypothesis ({len(words)}), got shape "
                f"{image.shape} of {image.dtype}"
            )
        if len(words) == 0:
            return np.zeros(0)
        if image.min() < 0 or image.max() >= self.num_images:
            raise ValueError(f"image_index must lie in [0, {self.num_images}), got {image.min()}..{image.max()}")
        image = image.astype(np.int64)
        index = _NgramIndex(words)
        weights = self.document_frequency.idf(index)
        ref_ids = self._index.translate(index)
        # Every (hypothesis, reference of its image) pair gets one row: rows of hypothesis i start at start[i].
        num_refs = self._refs_per_image[image]
        start = np.concatenate([[0], np.cumsum(num_refs)[:-1]])
        pair_hyp = np.repeat(np.arange(len(words)), num_refs)
        pair_ref = self._first_ref[image][pair_hyp] + np.arange(len(pair_hyp)) - start[pair_hyp]
        dot = np.zeros((len(pair_hyp), MAX_N))
        hyp_norm = np.zeros((len(words), MAX_N))
        for n in range(1, MAX_N + 1):
            hyp, ngram, tf = _term_frequencies(index, n)
            value = tf * weights[n - 1][ngram]
            hyp_norm[:, n - 1] = np.bincount(hyp, value**2, minlength=len(words))
            # Reference entries with the same (image, n-gram) key: a contiguous run in the sorted keys.
            shared = ref_ids[n - 1][ngram] >= 0
            keys = image[hyp[shared]] * self._width + self._offsets[n - 1] + ref_ids[n - 1][ngram[shared]]
            low = np.searchsorted(self._keys, keys, side="left")
            matches = np.searchsorted(self._keys, keys, side="right") - low
            # expand every run low..low+matches-1 into entry numbers (a vectorised concatenation of aranges)
            entry = np.repeat(low - np.cumsum(matches) + matches, matches) + np.arange(matches.sum())
            h = np.repeat(value[shared], matches)
            r = self._entry_value[entry]
            row = np.repeat(start[hyp[shared]], matches) + self._entry_slot[entry]  # (hypothesis, reference j)
            dot[:, n - 1] = np.bincount(row, np.minimum(h, r) * r, minlength=len(pair_hyp))  # clipped tf
        hyp_norm = np.sqrt(hyp_norm)
        norm = hyp_norm[pair_hyp] * self._norms[pair_ref]
        # pycocoevalcap divides only when both norms are non-zero; otherwise the product is 0 anyway.
        cosine = np.divide(dot, norm, out=dot.copy(), where=norm != 0)
        hyp_bigrams = np.array([max(0, len(w) - 1) for w in words], dtype=np.float64)
        delta = hyp_bigrams[pair_hyp] - self._bigrams[pair_ref]
        cosine *= np.e ** (-(delta**2) / (2 * SIGMA**2))[:, None]
        per_n = np.stack([np.bincount(pair_hyp, cosine[:, k], minlength=len(words)) for k in range(MAX_N)], 1)
        return per_n.mean(axis=1) / num_refs * 10.0


def cider_d_scores(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    document_frequency: DocumentFrequency | None = None,
) -> np.ndarray:
    """Per-caption CIDEr-D (float64, shape (N,)), on the coco-caption scale (0.5 = CIDEr 50).

    ``document_frequency`` None: counted from ``references`` themselves, as coco-caption does at evaluation
    (each entry is one image). Given (e.g. the training references, for rewards): used as is.
    """
    split_hypotheses(hypotheses, None)  # check the hypotheses first, so errors name them
    check_references(references, len(hypotheses))
    if len(hypotheses) == 0:
        return np.zeros(0)
    if document_frequency is None:
        document_frequency = DocumentFrequency.from_references(references)
    return CiderReward(references, document_frequency)(hypotheses, np.arange(len(hypotheses)))


def cider_d(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    document_frequency: DocumentFrequency | None = None,
) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_scores` (what pycocoevalcap's ``Cider`` returns)."""
    if len(hypotheses) == 0:
        raise ValueError("cider_d needs at least one hypothesis, got none")
    return float(np.mean(cider_d_scores(hypotheses, references, document_frequency)))
