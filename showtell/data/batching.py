"""Training batch order: length-bucketed (the default) or plain shuffled, a function of seed and epoch only.

A random batch of 128 Flickr8k captions is padded to its longest caption: about 2x as many positions as real
tokens. ``BucketBatchSampler`` shuffles the captions, cuts the shuffled list into pools of ``pool_batches``
batches, sorts each pool by length, cuts it into batches and shuffles the order of the batches, so each batch
holds captions of similar length (padding ratio ~1.02) while the epoch stays random.

Distributed: every process builds the same batch list (same seed and epoch) and takes every ``num_replicas``-th
batch, so processes get different batches and the same number of them. When the number of batches does not
divide evenly, the captions of the last, incomplete round are re-cut into exactly ``num_replicas`` smaller
batches: every caption is still used once per epoch and none twice (with fewer leftover captions than
processes, the leftover ones, at most ``num_replicas - 1``, wait for the next epoch's shuffle).

The sampler yields whole batches (lists of indices); use it as a DataLoader's ``sampler`` with
``batch_size=None``. It subclasses ``DistributedSampler`` so that Lightning keeps it under DDP instead of
replacing it with its own (Lightning calls ``set_epoch`` each epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class BucketBatchSampler(DistributedSampler):
    """Batches of dataset indices for one process, reshuffled every epoch (``set_epoch``).

    Args:
        lengths: (N,) length of each sample (tokens); only used to sort within pools.
        batch_size: samples per batch (the last batch of the epoch may be smaller).
        bucket: sort pools by length (``False``: plain shuffled batches, as a random sampler gives).
        pool_batches: batches per sorting pool (larger pools: more uniform lengths, less random batches).
        seed: with the epoch, the only source of randomness of the order.
        num_replicas, rank: the process's share under DDP (1, 0 on one device).
    """

    def __init__(self, lengths: Tensor, batch_size: int, *, bucket: bool = True, pool_batches: int = 50,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        _check_positive("batch_size", batch_size)
        _check_positive("pool_batches", pool_batches)
        _check_positive("num_replicas", num_replicas)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        # Not DistributedSampler.__init__: it needs a dataset and would query torch.distributed.
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.bucket, self.pool_batches = batch_size, bucket, pool_batches
        self.seed, self.num_replicas, self.rank = int(seed), num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list[list[int]]:
        """Every process's batches of this epoch, in order (process r takes ``[r::num_replicas]``)."""
        n = len(self.lengths)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=generator)
        if self.bucket:
            pool = self.batch_size * self.pool_batches
            order = torch.cat([chunk[torch.sort(self.lengths[chunk], stable=True).indices]
                               for chunk in order.split(pool)]) if n else order
        batches = list(order.split(self.batch_size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        leftover = len(batches) % self.num_replicas
        if leftover:
            rest = torch.cat(batches[len(batches) - leftover:])
            rest = rest[torch.sort(self.lengths[rest], stable=True).indices]
            parts = [p for p in torch.tensor_split(rest, self.num_replicas) if len(p)]
            batches = batches[: len(batches) - leftover] + (parts if len(parts) == self.num_replicas else [])
        return [b.tolist() for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches()[self.rank:: self.num_replicas])

    def __len__(self) -> int:
        n, r = len(self.lengths), self.num_replicas
        full = -(-n // self.batch_size)  # batches before the distributed re-cut
        if full % r == 0:
            return full // r
        leftover_samples = n - (full - full % r) * self.batch_size
        return full // r + (1 if leftover_samples >= r else 0)


def padding_ratio(lengths: Tensor, batches: list[list[int]]) -> float:
    """Positions computed (each batch padded to its longest sample) per real token."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return padded / max(1, int(sum(int(lengths[b].sum()) for b in batches)))
