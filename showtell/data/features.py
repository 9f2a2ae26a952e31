"""Encoder features computed once: the cache, bring-your-own ``.npz`` files, and batched extraction.

The encoder is frozen by default, so running the CNN on every step of every epoch is wasted work. Features
are extracted once per (image list, backbone, weights, transform) and stored as ``.npz`` with two arrays,
the same format users bring their own features in::

    names     (N,)    image file names as in the caption file
    features  (N, D)  float16 or float32

Two lines of numpy make one: ``np.savez("feats.npz", names=np.array(names), features=feats)``.

The ``features`` array of an uncompressed ``.npz`` (``np.savez``, and the cache written here) is memory-mapped,
not read: at MS-COCO size (123,287 x 2048 float16, ~500 MB) every process of a multi-GPU run maps the same
file and the operating system keeps one copy of it in its page cache, whatever the number of processes;
batches gather their rows from it. A compressed file (``np.savez_compressed``) is read into each process's
memory (``FeatureTable.memory_mapped`` says which).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from showtell.errors import DatasetError
from showtell.files import load_rgb, write_file_atomically


@dataclass
class FeatureTable:
    """Image name -> row of an (N, D) feature matrix: a memory map of the file where it can be mapped (see the
    module docstring), else in memory (Flickr8k x 2048 x fp16 = 33 MB)."""

    names: list[str]
    array: np.ndarray  # (N, D) float16 or float32; np.memmap (copy-on-write, never written) when mapped
    path: Path | None = None  # the file it was read from

    def __post_init__(self):
        self.row = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def memory_mapped(self) -> bool:
        return isinstance(self.array, np.memmap)

    @property
    def features(self) -> Tensor:
        """All rows as one tensor (sharing the memory map: nothing is copied)."""
        return torch.from_numpy(self.array)

    def gather(self, rows: np.ndarray) -> Tensor:
        """The rows ``rows`` (B,) as a (B, D) tensor: one numpy gather, which reads only those rows' pages."""
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))

    def __getstate__(self) -> dict:
        # Pickled (e.g. to spawned DDP processes): a memory-mapped table travels as its path and is mapped
        # again on arrival, instead of as a copy of the whole matrix.
        state = {key: value for key, value in self.__dict__.items() if key != "row"}  # rebuilt on arrival
        if self.memory_mapped and self.path is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None:
            self.array = load_features(self.path, check_values=False).array
        self.__post_init__()


class FeaturesFileError(DatasetError):
    """A features file that cannot be used; ``problem`` says why, without the path."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"features file {path}: {problem}")
        self.path, self.problem = path, problem

    def __reduce__(self):  # picklable (e.g. raised in a worker process) despite the two arguments
        return type(self), (self.path, self.problem)


def _dimensions(array: np.ndarray) -> str:
    return f"{array.ndim} dimension{'' if array.ndim == 1 else 's'}"


def _array(data, key: str, path: Path) -> np.ndarray:
    try:
        return data[key]
    except ValueError as err:  # an object array, which allow_pickle=False refuses
        if "allow_pickle" in str(err):
            fix = "strings, e.g. np.array(names, dtype=str)" if key == "names" else "numbers, e.g. float32"
            raise FeaturesFileError(path, f"'{key}' is an object array; save it as {fix}") from None
        raise


def _mapped_member(path: Path, member: str) -> np.ndarray | None:
    """``member`` (e.g. "features.npy") of an ``.npz`` as a copy-on-write memory map, when it is stored
    uncompressed as a plain numeric array; else None (the caller reads it instead)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local file header, then its name and extra field
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return None
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_length + extra_length
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            offset = f.tell()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, struct.error):
        return None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or len(shape) != 2 or offset - start + nbytes != info.file_size or nbytes == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran_order else "C")


_CHECK_ROWS = 16_384  # rows per step of the NaN/inf check (bounds its temporary memory)


def load_features(path: str | Path, check_values: bool = True) -> FeatureTable:
    """Read and check a features ``.npz``: ``names`` (N,) distinct strings, ``features`` (N, D) finite numbers,
    N, D >= 1. Anything else raises ``FeaturesFileError`` with one line saying what is wrong.

    ``features`` is memory-mapped when the file stores it uncompressed as float16 or float32 (see the module
    docstring). ``check_values=False`` skips the NaN/inf check, which reads every row (the feature cache
    skips it: its rows come from the encoder, and reading them would touch every page in every process).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FeaturesFileError(path, "does not exist; expected an .npz with arrays 'names' and 'features' "
                                      "(see README, 'Bring your own features')")
    if not path.is_file():
        raise FeaturesFileError(path, "is a folder, expected an .npz file with arrays 'names' and 'features'")
    if not os.access(path, os.R_OK):
        raise FeaturesFileError(path, "is not readable (permission denied)")
    if not zipfile.is_zipfile(path):
        raise FeaturesFileError(path, "is not an .npz file (a zip of arrays); write one with "
                                      "np.savez(path, names=names, features=features)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("names", "features") if key not in data.files]
            if missing:
                raise FeaturesFileError(path, f"missing array '{missing[0]}': expected arrays 'names' and "
                                              f"'features', found {sorted(data.files)}")
            names = _array(data, "names", path)
            features = _mapped_member(path, "features.npy")
            if features is None or features.dtype not in (np.float16, np.float32):
                features = _array(data, "features", path)
    except FeaturesFileError:
        raise
    except Exception as err:  # zip/npy format errors, permissions: they come in many types
        reason = " ".join(str(err).split())[:200]
        raise FeaturesFileError(path, f"cannot be read as .npz ({type(err).__name__}: {reason})") from None
    if names.ndim != 1:
        raise FeaturesFileError(path, f"'names' has {_dimensions(names)}, expected (N,)")
    if features.ndim != 2:
        raise FeaturesFileError(path, f"'features' has {_dimensions(features)}, expected (N, D)")
    if features.shape[0] != len(names):
        raise FeaturesFileError(path, f"'features' has {features.shape[0]} rows but 'names' has {len(names)} "
                                      "entries, expected one row per name")
    if features.size == 0:
        raise FeaturesFileError(path, f"'features' is empty, shape {features.shape}")
    if names.dtype.kind not in "US":
        raise FeaturesFileError(path, f"'names' must hold strings (image file names), got dtype {names.dtype}")
    if features.dtype.kind not in "iuf":
        raise FeaturesFileError(path, f"'features' must hold numbers, got dtype {features.dtype}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        duplicate = next(name for name in names if name in seen or seen.add(name))
        raise FeaturesFileError(path, f"'names' holds duplicate image names, e.g. {duplicate!r}")
    if features.dtype not in (np.float16, np.float32):
        features = features.astype(np.float32)
    if check_values:
        for start in range(0, len(names), _CHECK_ROWS):
            finite = np.isfinite(features[start:start + _CHECK_ROWS]).all(axis=1)
            if not finite.all():
                bad = sum(int((~np.isfinite(features[k:k + _CHECK_ROWS]).all(axis=1)).sum())
                          for k in range(start, len(names), _CHECK_ROWS))
                row = start + int(np.argmin(finite))
                raise FeaturesFileError(path, f"'features' holds NaN or inf in {bad} of {len(names)} rows, e.g. "
                                              f"row {row} ({names[row]!r})")
    if not isinstance(features, np.memmap):
        features = np.ascontiguousarray(features)
    return FeatureTable(names, features, path)


def save_features(path: str | Path, names: Sequence[str], features: np.ndarray, meta: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then rename, so a crash never leaves a
    half-written file that a later run would read as complete."""
    arrays = {"names": np.asarray(list(names)), "features": features}
    if meta is not None:
        arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    write_file_atomically(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")


def cache_key(names: Sequence[str], spec: dict) -> str:
    """Hash of everything that changes the features: image list, backbone, weights, transform."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for name in names:
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()[:16]


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(load_rgb(self.paths[i]))


@torch.inference_mode()
def extract_features(backbone: nn.Module, paths: Sequence[Path], transform, *,
                     batch_size: int = 128, num_workers: int = 4, device: str | torch.device | None = None,
                     progress: bool = True) -> np.ndarray:
    """Run ``backbone`` ((B,3,H,W) -> (B,D)) over the image files ``paths`` once; returns (N, D) float16.

    On a GPU: bf16 autocast and channels_last (the fast path for convolutions on tensor cores).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    backbone = backbone.to(device).eval()
    if cuda:
        backbone = backbone.to(memory_format=torch.channels_last)
    loader = DataLoader(_ImageFiles(paths, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    chunks = []
    bar = tqdm(total=len(paths), desc="extracting features", unit="img", disable=not progress, leave=False)
    for images in loader:
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            feats = backbone(images)  # (B, D)
        chunks.append(feats.float().to(torch.float16))
        bar.update(len(images))
    bar.close()
    return torch.cat(chunks).cpu().numpy()


def cached_features(cache_file: Path, names: Sequence[str], compute) -> FeatureTable:
    """Load ``cache_file`` if complete and matching ``names``; otherwise ``compute()`` and store it."""
    if cache_file.is_file():
        try:
            table = load_features(cache_file, check_values=False)
            if table.names == list(names):
                return table
        except DatasetError:
            pass  # unreadable: recompute below
    features = compute()
    save_features(cache_file, names, features)
    try:
        return load_features(cache_file, check_values=False)  # mapped, as every later run will have it
    except DatasetError:
        return FeatureTable(list(names), features)
