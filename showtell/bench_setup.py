"""Data setup at MS-COCO scale: ``python -m showtell.bench_setup``.

Generates (once, reused from ``--workdir``) a COCO-shaped Karpathy JSON and a features file, then measures
the data module's setup in fresh processes: one alone, then ``--processes`` at once (as DDP ranks would, each
on the same files), and writes a JSON with the numbers.

The data (``generate_coco_like``): ``--images`` images (default 123,287, COCO's) in Karpathy's split scaled
from COCO's train 82,783 / restval 30,504 / val 5,000 / test 5,000, ``filepath`` ``train2014`` for train and
``val2014`` for the rest, COCO-style file names and ``cocoid``; 5 captions each and some with 6 or 7
(616,767 captions at full size); words drawn from a Zipf distribution over ``--vocab_types`` synthetic words
(~10,000 of them occur >= 5 times in the train captions at full size, like COCO's usual vocabulary),
7 + Poisson(3.5) words per caption (COCO's mean is ~10.5). Features: random float16 ``(N, --dim)`` in an
uncompressed ``.npz`` (``names``, ``features``), the bring-your-own format and the feature cache's; no image
files (the data module reads features instead).

Each measuring process builds ``CaptionDataModule(root, features=..., num_workers=0)`` and records:

- wall times: building the module (option checks, which open the features file), parsing the captions
  (``corpus``), the vocabulary, ``setup("fit")`` (caption encoding and datasets), fetching every validation
  batch (``eval_batch_size`` images each) and ``--train_batches`` training batches;
- memory from ``/proc/self/status`` and ``/proc/self/smaps_rollup`` after setup: ``VmHWM`` (peak resident
  set), ``RssAnon`` (private memory), ``RssFile`` (file pages mapped and touched: the memory-mapped features
  live there, shared with every other process mapping the file, through the page cache) and ``Pss``
  (resident memory with shared pages divided among the processes sharing them), and the same before the data
  module was built (after the imports: torch, Lightning), so the data's own share is visible.

All processes of a round start together and hold their data until all have measured, so the shared pages
are shared while ``Pss`` is read. On a shared CPU the times vary with the load; ``cpu_load`` records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from showtell.data.layouts import KARPATHY_FILES
from showtell.perf.setup_speed import COCO_IMAGES, FEATURES_FILE, generate_coco_like, load_previous, measure_processes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m showtell.bench_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=COCO_IMAGES, help="images (default: COCO's 123,287)")
    parser.add_argument("--dim", type=int, default=2048, help="feature size (2048: ResNet-50's)")
    parser.add_argument("--vocab_types", type=int, default=25_000, help="distinct words in the captions")
    parser.add_argument("--processes", type=int, default=2, help="processes of the concurrent round")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--train_batches", type=int, default=200, help="training batches fetched and timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="data/bench_setup", help="where the generated data is kept")
    parser.add_argument("--out", default="experiments/results/bench_setup_cpu.json")
    args = parser.parse_args(argv)
    for key in ("images", "dim", "vocab_types", "processes", "batch_size", "train_batches"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1, got {getattr(args, key)}")
    return args


def _summary(rounds: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"{'round':<12} {'setup s':>8} {'captions s':>10} {'vocab s':>8} {'datasets s':>10} {'val s':>6} "
             f"{'peak MB':>8} {'anon MB':>8} {'file MB':>8} {'PSS MB':>8}"]
    for name, results in rounds.items():
        for k, r in enumerate(results):
            m = r["memory_after_mb"]
            lines.append(f"{name + ' #' + str(k):<12} {r['setup_s']:>8.2f} {r['captions_s']:>10.2f} "
                         f"{r['vocab_s']:>8.2f} {r['datasets_s']:>10.2f} {r['val_batches_s']:>6.2f} "
                         f"{m.get('VmHWM', 0):>8.0f} {m.get('RssAnon', 0):>8.0f} {m.get('RssFile', 0):>8.0f} "
                         f"{m.get('Pss', 0):>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    root = Path(args.workdir).expanduser() / f"coco_like_{args.images}_{args.dim}"
    start = time.perf_counter()
    print(f"generating a COCO-shaped dataset in {root} (kept for the next run) ...", flush=True)
    generate_coco_like(root, args.images, args.dim, args.seed, args.vocab_types)
    generate_s = time.perf_counter() - start
    rounds = {}
    for count in dict.fromkeys([1, args.processes]):
        print(f"measuring {count} process{'es' if count > 1 else ''} ...", flush=True)
        rounds[f"{count}_process{'es' if count > 1 else ''}"] = measure_processes(count, root, args.batch_size,
                                                                                 args.train_batches)
    sizes = {"json_mb": round((root / KARPATHY_FILES["coco"]).stat().st_size / 2**20, 1),
             "features_mb": round((root / FEATURES_FILE).stat().st_size / 2**20, 1)}
    results = {
        "images": args.images, "dim": args.dim, "vocab_types": args.vocab_types, "seed": args.seed,
        "batch_size": args.batch_size, "files": sizes, "generate_s": round(generate_s, 1), "rounds": rounds,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "cpu_load": load_previous(),
        "python": sys.version.split()[0],
    }
    print(_summary(rounds))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
