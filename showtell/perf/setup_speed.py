"""Start-up time and memory at COCO scale behind ``showtell.bench_setup``."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from showtell.data.layouts import KARPATHY_FILES
from showtell.data.writers import KarpathyImage, has_marker, write_dataset_folder, write_karpathy_json

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
        from showtell.data.features import save_features

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
    from showtell.data.datamodule import CaptionDataModule

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
        "features_memory_mapped": data.features_table.memory_mapped,
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


def load_previous() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
