"""Length-bucketed training batches: coverage, homogeneity, determinism, DDP shares."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.data.batching import BucketBatchSampler, padding_ratio
from showtell.vocab import tokenize

TOKEN_FILE = Path(__file__).resolve().parents[3] / "shared" / "flickr8k" / "Flickr8k.token.txt"


def flickr8k_lengths() -> torch.Tensor:
    """Token counts (+2 for <start>/<end>) of the real Flickr8k captions, or a synthetic stand-in."""
    if TOKEN_FILE.is_file():
        lines = TOKEN_FILE.read_text(encoding="utf-8").splitlines()
        return torch.tensor([len(tokenize(line.split("\t", 1)[1])) + 2 for line in lines if "\t" in line])
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.gamma(8.0, 12.8 / 8.0, 40_000).round().clip(3, 38).astype(np.int64))


def test_every_caption_once_per_epoch():
    lengths = torch.randint(3, 30, (1001,), generator=torch.Generator().manual_seed(1))
    sampler = BucketBatchSampler(lengths, 64, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 16
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1001))
        assert sorted(len(b) for b in batches)[0] == 1001 - 15 * 64  # one partial batch, as drop_last=False


@pytest.mark.parametrize("bucket", [True, False])
def test_same_seed_same_order_new_epoch_new_order(bucket):
    lengths = torch.randint(3, 30, (500,), generator=torch.Generator().manual_seed(2))
    a, b = BucketBatchSampler(lengths, 32, seed=7, bucket=bucket), BucketBatchSampler(lengths, 32, seed=7,
                                                                                      bucket=bucket)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(BucketBatchSampler(lengths, 32, seed=8, bucket=bucket)) != list(b)


def test_real_length_distribution_is_nearly_unpadded():
    lengths = flickr8k_lengths()
    bucketed = list(BucketBatchSampler(lengths, 128, seed=0))
    shuffled = list(BucketBatchSampler(lengths, 128, seed=0, bucket=False))
    assert padding_ratio(lengths, bucketed) < 1.1
    assert padding_ratio(lengths, shuffled) > 1.5


@pytest.mark.parametrize("n", [1000, 1001, 1000 - 64, 130])
def test_ddp_ranks_disjoint_equal_and_covering(n):
    lengths = torch.randint(3, 30, (n,), generator=torch.Generator().manual_seed(n))
    ranks = [BucketBatchSampler(lengths, 64, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for epoch in range(2):
        for s in ranks:
            s.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1])
        counts = Counter(i for share in shares for b in share for i in b)
        assert set(counts.values()) == {1}  # nothing twice
        assert len(counts) == n  # nothing left out
        assert all(len(b) > 0 for share in shares for b in share)


def test_more_processes_than_leftover_captions():
    sampler = [BucketBatchSampler(torch.arange(3, 68), 64, num_replicas=4, rank=r) for r in range(4)]
    shares = [list(s) for s in sampler]
    assert {len(s) for s in shares} == {len(sampler[0])}
    flat = [i for s in shares for b in s for i in b]
    assert len(flat) == len(set(flat)) >= 65 - 3


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 8, "pool_batches": 0},
                                    {"batch_size": 8, "num_replicas": 2, "rank": 2}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be"):
        BucketBatchSampler(torch.arange(10), **kwargs)
