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
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from showtell.layouts import KARPATHY_FILES, KarpathyImage, has_marker, write_dataset_folder, write_karpathy_json

COCO_SPLITS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}  # Karpathy's COCO split
COCO_IMAGES = sum(COCO_SPLITS.values())  # 123,287
COCO_CAPTIONS = 616_767
FEATURES_FILE = "features.npz"
MARKER = ".showtell_bench_setup.json"
VERSION = 2


def split_sizes(images: int) -> dict[str, int]:
    """COCO's Karpathy split scaled to ``images`` (each split at least one image)."""
    val = test = max(1, round(images * COCO_SPLITS["val"] / COCO_IMAGES))
    restval = max(1, round(images * COCO_SPLITS["restval"] / COCO_IMAGES))
    train = images - val - test - restval
    if train < 1:
        raise ValueError(f"--images {images} is too few for four splits; use at least 8")
    return {"train": train, "restval": restval, "val": val, "test": test}


def _words(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct lowercase pseudo-words of 2 to 9 letters."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < count:
        for length in rng.integers(2, 10, size=count):
            words["".join(rng.choice(letters, size=length))] = None
    return list(words)[:count]


def coco_like_images(images: int, seed: int = 0, vocab_types: int = 25_000) -> Iterator[KarpathyImage]:
    """The entries of a COCO-shaped Karpathy JSON (see the module docstring), in split order."""
    rng = np.random.default_rng([seed, 13])
    words = np.array(_words(vocab_types, rng))
    ranks = np.arange(1, vocab_types + 1)
    probabilities = 1.0 / (ranks + 2.7) ** 1.5  # Zipf-Mandelbrot: ~10,500 words occur >= 5 times at COCO size
    probabilities /= probabilities.sum()
    extra = round(images * (COCO_CAPTIONS - 5 * COCO_IMAGES) / COCO_IMAGES)  # 332 at full size
    per_image = np.full(images, 5)
    sevens = extra // 10
    chosen = rng.choice(images, size=extra - sevens, replace=False)
    per_image[chosen] = 6
    per_image[chosen[:sevens]] = 7
    lengths = 7 + rng.poisson(3.5, size=int(per_image.sum()))
    tokens = words[rng.choice(vocab_types, size=int(lengths.sum()), p=probabilities)]
    ends = np.cumsum(lengths)
    caption, image = 0, 0
    for split, size in split_sizes(images).items():
        folder = "train2014" if split == "train" else "val2014"
        for _ in range(size):
            cocoid = 1 + image * 7  # distinct, not consecutive, like COCO's ids
            captions = []
            for _ in range(per_image[image]):
                start = ends[caption] - lengths[caption]
                captions.append(" ".join(tokens[start:ends[caption]]).capitalize() + ".")
                caption += 1
            yield KarpathyImage(f"COCO_{folder}_{cocoid:012d}.jpg", split, captions, folder, cocoid)
            image += 1


def generate_coco_like(root: str | Path, images: int = COCO_IMAGES, dim: int = 2048, seed: int = 0,
                       vocab_types: int = 25_000) -> Path:
    """``root/dataset_coco.json`` and ``root/features.npz`` (see the module docstring); kept when ``root``
    already holds them for the same parameters."""
    root = Path(root)
    params = {"images": images, "dim": dim, "seed": seed, "vocab_types": vocab_types, "version": VERSION}
    if has_marker(root, MARKER, params):
        return root

    def write(folder: Path) -> None:
        names = []

        def entries() -> Iterator[KarpathyImage]:
            for entry in coco_like_images(images, seed, vocab_types):
                names.append(entry.filename)
                yield entry

        write_karpathy_json(folder / KARPATHY_FILES["coco"], "coco", entries())
        rng = np.random.default_rng([seed, 17])
        features = np.empty((images, dim), dtype=np.float16)
        for start in range(0, images, 8192):
            stop = min(images, start + 8192)
            features[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        from showtell.features import save_features

        save_features(folder / FEATURES_FILE, names, features)

    write_dataset_folder(root, write, MARKER, params)
    return root


# ------------------------------------------------------------------------------------------------ measuring
def memory() -> dict[str, float]:
    """This process's memory in MB: VmHWM, VmRSS, RssAnon, RssFile (``/proc/self/status``) and Pss,
    Pss_Anon, Pss_File (``/proc/self/smaps_rollup``); {} where /proc is not there."""
    values: dict[str, float] = {}
    for path, keys in (("/proc/self/status", ("VmHWM", "VmRSS", "RssAnon", "RssFile")),
                       ("/proc/self/smaps_rollup", ("Pss", "Pss_Anon", "Pss_File"))):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = round(int(rest.split()[0]) / 1024, 1)  # kB -> MB
    return values


def measure_once(root: str, features: str, batch_size: int, train_batches: int, barrier=None) -> dict[str, Any]:
    """Set up the data module in this process and time it (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    from showtell.data import CaptionDataModule

    before = memory()
    times: dict[str, float] = {}
    start = time.perf_counter()
    data = CaptionDataModule(root=root, features=features, batch_size=batch_size, num_workers=0,
                             progress=False, min_count=5, encoder="resnet18", weights=None)
    times["build_s"] = time.perf_counter() - start
    clock = time.perf_counter()
    corpus = data.corpus
    times["captions_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    vocab = data.vocab
    times["vocab_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    data.setup("fit")
    times["datasets_s"] = time.perf_counter() - clock
    times["setup_s"] = time.perf_counter() - start
    clock = time.perf_counter()
    val_images = sum(len(batch.image_ids) for batch in data.val_dataloader())
    times["val_batches_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    fetched = 0
    for fetched, _ in enumerate(data.train_dataloader(), 1):
        if fetched == train_batches:
            break
    times["train_batches_s"] = time.perf_counter() - clock
    if barrier is not None:
        barrier.wait()  # every process holds its data now: shared pages count once in Pss
    after = memory()
    if barrier is not None:
        barrier.wait()  # nobody exits before all have read their memory
    return {
        **{key: round(value, 3) for key, value in times.items()},
        "memory_before_mb": before, "memory_after_mb": after,
        "features_memory_mapped": data._user_features().memory_mapped,
        "split_images": {split: len(names) for split, names in corpus.splits.items()},
        "train_captions": len(data.datasets["train"]), "vocab_size": len(vocab),
        "val_images": val_images, "eval_batch_size": data.eval_batch_size,
        "val_batches": len(data.val_dataloader()), "train_batches_timed": fetched,
        "report": corpus.report.counts(),
    }


def _child(args: tuple, barrier, queue) -> None:
    try:
        queue.put(measure_once(*args, barrier=barrier))
    except BaseException as err:  # reported by the parent, which would otherwise wait forever
        queue.put({"error": f"{type(err).__name__}: {err}"})
        if barrier is not None:
            barrier.abort()


def measure_processes(count: int, root: Path, batch_size: int, train_batches: int) -> list[dict[str, Any]]:
    """``count`` fresh (spawned) processes setting up at the same time; their results."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(count) if count > 1 else None
    queue = context.Queue()
    args = (str(root), str(root / FEATURES_FILE), batch_size, train_batches)
    processes = [context.Process(target=_child, args=(args, barrier, queue)) for _ in range(count)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"a measuring process failed: {errors[0]}")
    return results


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "cpu_load": _load(),
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
