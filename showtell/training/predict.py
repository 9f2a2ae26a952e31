"""Captioning many images through Lightning's predict loop: the image list, the per-process batches, the
part files each process writes and their merge in input order."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from showtell.errors import CaptionError
from showtell.files import ImageLoadError, load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # a folder's image files


class ImageReadError(ValueError):
    """One image file could not be read; the message is the reason."""


def read_image(path: Path, transform: Callable[[Image.Image], Tensor]) -> Tensor:
    """One preprocessed image (3, H, W); ``ImageReadError`` says why a file cannot be used."""
    try:
        return transform(load_rgb(path))
    except ImageLoadError as err:
        raise ImageReadError(err.reason) from None


class PathTable:
    """Many paths in two numpy arrays: their bytes back to back and where each ends.

    No Python object per path: a million paths cost their bytes plus 8 bytes each, and DataLoader worker
    processes (forked) read them without touching reference counts, so the pages stay shared (a Python list of
    ``str`` is copied page by page into every worker as it is read)."""

    def __init__(self, paths: Iterable[str] = ()):
        data, ends = bytearray(), array("q")
        for path in paths:
            data += os.fsencode(path)
            ends.append(len(data))
        self.data = np.frombuffer(bytes(data), dtype=np.uint8)
        self.ends = np.frombuffer(ends.tobytes(), dtype=np.int64) if ends else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        start = int(self.ends[i - 1]) if i else 0
        return os.fsdecode(self.data[start:int(self.ends[i])].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def digest(self) -> str:
        """A fingerprint of the list (equal in every process that listed the same files)."""
        h = hashlib.sha1(self.data.tobytes())
        h.update(self.ends.tobytes())
        return h.hexdigest()


def folder_images(folder: str) -> list[str]:
    """The image files of ``folder`` (by suffix, any case), sorted by name, as ``folder/name``; not recursive."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries
                       if e.name.lower().endswith(IMAGE_SUFFIXES) and not e.is_dir())
    return [os.path.join(folder, name) for name in names]


def expand_inputs(arguments: Sequence[str]) -> tuple[PathTable, list[str]]:
    """The arguments with each folder replaced in place by its image files; and one problem line per folder
    that gives none. Any other argument stays as given (a missing file is reported when it is read)."""
    problems: list[str] = []

    def paths() -> Iterator[str]:
        for argument in arguments:
            if not os.path.isdir(argument):
                yield argument
                continue
            try:
                found = folder_images(argument)
            except OSError as err:
                problems.append(f"{argument}: cannot list the folder ({err.strerror or err})")
                continue
            if not found:
                problems.append(f"{argument}: no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder")
            yield from found

    return PathTable(paths()), problems


class ImageFiles(Dataset):
    """Preprocessed images by index; a file that cannot be read gives its reason (a str) instead of pixels."""

    def __init__(self, paths: PathTable, transform: Callable[[Image.Image], Tensor]):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        try:
            return index, self.transform(load_rgb(Path(self.paths[index])))
        except ImageLoadError as err:
            return index, err.reason


@dataclass
class ImageBatch:
    indices: list[int]  # the dataset indices of the images read, in the order of ``images``
    images: Tensor | None  # (G, 3, H, W) those images; None when no file of the batch could be read
    errors: list[tuple[int, str]]  # (dataset index, reason) of the files that could not be read


def collate_images(items: Sequence[tuple[int, Tensor | str]]) -> ImageBatch:
    """Stack the images that were read; keep the others' reasons."""
    good = [(i, x) for i, x in items if isinstance(x, Tensor)]
    return ImageBatch([i for i, _ in good], torch.stack([x for _, x in good]) if good else None,
                      [(i, x) for i, x in items if not isinstance(x, Tensor)])


class ProcessBatches:
    """This process's share of the batches of ``size`` consecutive images: batch b goes to process
    b mod world size, so every image is decoded in the batch a one-process run decodes it in (identical
    captions and log-probabilities whatever the number of processes). Processes with one batch fewer get an
    empty batch instead, so that every process runs the same number of steps and at least one: Lightning skips
    a process's predict loop, epoch-end hooks included, when it has no batch, and the others would wait for it.

    The rank and world size are read when the loop starts (the process group exists then)."""

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size

    @staticmethod
    def _rank() -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _shares(self) -> tuple[range, int]:
        rank, world = self._rank()
        batches = -(-self.count // self.size)
        return range(rank, batches, world), -(-batches // world)

    def __len__(self) -> int:
        return self._shares()[1]

    def __iter__(self) -> Iterator[list[int]]:
        mine, steps = self._shares()
        for b in mine:
            yield list(range(b * self.size, min(self.count, (b + 1) * self.size)))
        for _ in range(steps - len(mine)):
            yield []


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with the predict bar on stderr: stdout carries the captions."""

    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.predict_description, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Finished before CaptionWriter (after it in the callbacks) prints the merged lines; closing is idempotent.
        if self._predict_progress_bar is not None:
            self._predict_progress_bar.close()


def _part_records(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            yield record["index"], record


def merge_parts(parts: Sequence[Path]) -> Iterator[tuple[int, dict]]:
    """(index, record) of the part files (each in increasing index order) in index order, streaming (one line of
    each file in memory), each index once (the first occurrence of a repeated one)."""
    last = -1
    for index, record in heapq.merge(*(_part_records(p) for p in parts), key=itemgetter(0)):
        if index == last:
            continue
        if index < last:
            raise RuntimeError(f"caption part files out of order (index {index} after {last})")
        last = index
        yield index, record


class CaptionWriter(BasePredictionWriter):
    """Results of ``predict_step`` -> ``report(path, ranked captions or ImageReadError)``, in input order, once
    per image, on process 0 only.

    One process: each batch is reported as it ends. Several: in ``setup`` (all processes) process 0 makes a
    parts folder and broadcasts it, with its file list's size and fingerprint, which every process checks
    against its own; each process writes its results as JSON lines to ``rank-NNNNN.jsonl`` there; at epoch end
    every process closes its file and waits at a barrier, then process 0 merges the parts (``merge_parts``),
    reports them and deletes the folder. Every collective is on a path that all processes take."""

    def __init__(self, paths: PathTable, report: Report, parts_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.paths, self.report, self.parts_dir = paths, report, parts_dir
        self.folder: Path | None = None
        self._file: IO[str] | None = None
        self.reported = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.reported = 0
        if trainer.world_size == 1:
            return
        strategy = trainer.strategy
        folder = tempfile.mkdtemp(prefix="showtell-caption-", dir=self.parts_dir) if trainer.is_global_zero else None
        folder, count, digest = strategy.broadcast((folder, len(self.paths), self.paths.digest()), src=0)
        same = strategy.reduce_boolean_decision((count, digest) == (len(self.paths), self.paths.digest()), all=True)
        seen = strategy.reduce_boolean_decision(os.path.isdir(folder), all=True)
        if not (same and seen):
            if trainer.is_global_zero:
                shutil.rmtree(folder, ignore_errors=True)
            if not same:
                raise CaptionError("the processes found different image files (a folder changed while they "
                                   "started?); run again")
            raise CaptionError(f"the parts folder {folder} (made by process 0) is not visible to every process; "
                               "give --parts_dir a folder all machines see")
        self.folder = Path(folder)
        part = self.folder / f"rank-{trainer.global_rank:05d}.jsonl"
        self._file = open(part, "w", encoding="utf-8")  # noqa: SIM115 (closed at epoch end, or on an exception)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: ImageBatch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        results: list[tuple[int, Ranked | str]] = [*zip(batch.indices, prediction), *batch.errors]
        results.sort(key=itemgetter(0))
        if self._file is None:  # one process: report now, in order
            for index, result in results:
                self._report(index, ImageReadError(result) if isinstance(result, str) else result)
            return
        for index, result in results:
            record = {"index": index, "error": result} if isinstance(result, str) else \
                {"index": index, "captions": [[c, lp] for c, lp in result]}
            self._file.write(json.dumps(record) + "\n")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.folder is None:
            self._check_complete()
            return
        self._close()
        trainer.strategy.barrier("showtell-caption-parts")  # every process: all parts are complete after it
        if not trainer.is_global_zero:
            return
        try:
            for index, record in merge_parts(sorted(self.folder.glob("rank-*.jsonl"))):
                self._report(index, ImageReadError(record["error"]) if "error" in record else
                             [(c, lp) for c, lp in record["captions"]])
        finally:
            self._remove_folder()
        self._check_complete()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()
        if trainer.is_global_zero:
            self._remove_folder()

    def _report(self, index: int, result: Ranked | ImageReadError) -> None:
        self.report(self.paths[index], result)
        self.reported += 1

    def _check_complete(self) -> None:
        if self.reported != len(self.paths):
            raise RuntimeError(f"captioned {self.reported} of {len(self.paths)} images: some results were lost")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


Ranked = list[tuple[str, float]]  # (caption, log-probability), best first
Report = Callable[[str, "Ranked | ImageReadError"], None]
