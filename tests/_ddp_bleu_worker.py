"""One process of the CorpusBLEU DDP test (tests/metrics/test_bleu_ddp.py), started once per rank.

    python tests/_ddp_bleu_worker.py RANK WORLD_SIZE RENDEZVOUS_FILE OUTPUT_JSON

Each rank takes its share of ``SAMPLES`` from a DistributedSampler (shuffle=False, default padding, so an odd
number of samples gets a repeated one), updates CorpusBLEU in batches of 2 and writes what compute() returned.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from showtell.metrics.bleu import CorpusBLEU

# 7 fixed samples: (hypothesis, references). Sample 0, the one the sampler repeats, scores well above the
# rest, so counting it twice visibly changes corpus BLEU.
_CAPTIONS = [
    ("a dog runs on the grass", ["a dog runs on the grass", "a brown dog runs on green grass"]),
    ("a man in a red shirt", ["a man wearing a red shirt stands", "a person in red"]),
    ("two children play", ["two kids are playing in the water", "children splash in a pool"]),
    ("a woman is sitting on a bench", ["a lady sits on a park bench", "a woman rests outside"]),
    ("a dog jumps", ["a black dog jumps over a log", "the dog is jumping"]),
    ("people walk down the street", ["a group of people walk along a city street", "pedestrians on a road"]),
    ("a boy on a bike", ["a boy rides his bike on a dirt track", "a child cycling"]),
]
SAMPLES = [(hypothesis.split(), [r.split() for r in references]) for hypothesis, references in _CAPTIONS]


def scores(metric: CorpusBLEU) -> dict[str, float]:
    return {name: value.item() for name, value in metric.compute().items()}


def main(rank: int, world_size: int, rendezvous: str, output: str) -> None:
    dist.init_process_group(
        "gloo", f"file://{rendezvous}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    sampler = DistributedSampler(range(len(SAMPLES)), num_replicas=world_size, rank=rank, shuffle=False)
    mine = list(sampler)
    deduplicated, every_row, only_rank0 = CorpusBLEU(), CorpusBLEU(), CorpusBLEU()
    for start in range(0, len(mine), 2):
        batch = mine[start : start + 2]
        hypotheses = [SAMPLES[i][0] for i in batch]
        references = [SAMPLES[i][1] for i in batch]
        deduplicated.update(hypotheses, references, torch.tensor(batch))
        every_row.update(hypotheses, references)  # no indices: the repeated sample counts twice
    if rank == 0:  # the other ranks see no sample at all (as with an unpadded sampler and tiny sets)
        only_rank0.update([h for h, _ in SAMPLES], [r for _, r in SAMPLES], torch.arange(len(SAMPLES)))
    result = {
        "rank": rank,
        "indices": mine,
        "deduplicated": scores(deduplicated),
        "without_indices": scores(every_row),
        "only_rank0_has_samples": scores(only_rank0),
    }
    with open(output, "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
