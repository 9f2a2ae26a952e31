"""Checkpoints: reading them safely and finding the one to resume from.

``read_checkpoint`` turns every way a file can fail to be a showtell checkpoint (missing, not a checkpoint,
cut short by a kill during writing, another model's) into one ``CheckpointError`` line. ``resume_checkpoint``
resolves ``--ckpt_path last``: the run folder's ``checkpoints/last.ckpt``, or, when that file is unreadable,
the newest readable checkpoint beside it. ``load_weights`` copies another run's weights into a model
(``--model.init_from``); ``rng_states`` are what a checkpoint keeps so that a resumed fit draws the same random
numbers.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from showtell.errors import CheckpointError, OptionError
from showtell.options import shown_path
from showtell.vocab import Vocabulary


def readable(path: Path) -> bool:
    """Whether a checkpoint file is complete (torch.save writes a zip archive; a cut-short one fails its CRCs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary (tensors on the CPU), checked to be a showtell checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if zipfile.is_zipfile(path) and not readable(path):
        raise CheckpointError(f"checkpoint {path} is cut short or corrupt (a kill while it was written?); "
                              "use an older checkpoint of the run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same one-line message
        reason = str(err).splitlines()[0][:120] if str(err) else ""
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {reason})"
                              ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "vocab_size" not in hparams or "showtell_vocab" not in checkpoint:
        raise CheckpointError(f"{path} is not a showtell checkpoint (no model hyperparameters or vocabulary); "
                              "use a .ckpt written by train.py")
    return checkpoint


def newest_readable(folder: Path) -> Path | None:
    """``last.ckpt`` if complete, else the most recently written complete checkpoint in ``folder``."""
    last = folder / "last.ckpt"
    if last.is_file() and readable(last):
        return last
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in others if readable(p)), None)


def resume_checkpoint(ckpt_path: str, run_folders: list[Path]) -> Path:
    """The checkpoint ``--ckpt_path`` names: a file, or ``last`` = the newest run folder's last checkpoint.

    ``run_folders``: candidate run folders (each with a ``checkpoints/`` folder), searched for ``last``.
    """
    if ckpt_path != "last":
        path = Path(ckpt_path).expanduser()
        read_checkpoint(path)  # one line if missing, cut short, not a checkpoint or not ours
        return path
    with_checkpoints = [f for f in run_folders if (f / "checkpoints").is_dir()]
    with_checkpoints.sort(key=lambda f: max((p.stat().st_mtime for p in (f / "checkpoints").glob("*.ckpt")),
                                            default=0.0), reverse=True)
    for folder in with_checkpoints:
        found = newest_readable(folder / "checkpoints")
        if found is not None:
            if found.name != "last.ckpt":
                print(f"resume: {folder / 'checkpoints' / 'last.ckpt'} is missing or cut short; resuming from "
                      f"{found}", flush=True)
            return found
    searched = ", ".join(str(f) for f in run_folders[:3]) or "(no run folder)"
    raise CheckpointError(f"--ckpt_path last: no readable checkpoint in the run folders of this configuration "
                          f"({searched}); pass --ckpt_path PATH")


def rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and Python random states as plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next]}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def load_weights(model: nn.Module, path: str | Path, vocab: Vocabulary | None, vocab_size: int) -> Any:
    """Copy the weights of the train.py checkpoint ``path`` into ``model`` (not its optimizer, epoch or RNG
    states); its vocabulary must equal ``vocab`` (the data's; None: only ``vocab_size`` is compared). Returns
    the checkpoint's epoch. One-line ``OptionError``/``CheckpointError``."""
    checkpoint = read_checkpoint(path)
    theirs = Vocabulary.from_dict(checkpoint["showtell_vocab"])
    size = vocab_size if vocab is None else len(vocab)
    if len(theirs) != size:
        what = f"has {len(theirs)} words, the data's has {size}"
    elif vocab is not None and theirs != vocab:
        k = next(k for k, (a, b) in enumerate(zip(theirs.itos, vocab.itos)) if a != b)
        what = (f"has as many words as the data's ({len(vocab)}) but other ones (word {k}: {theirs.itos[k]!r} "
                f"there, {vocab.itos[k]!r} here)")
    else:
        what = None
    if what is not None:
        raise OptionError(f"--model.init_from {shown_path(path)}: its vocabulary {what}; use the data options "
                          "of the run that wrote it (same --data.root, format, split and --data.min_count)")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise OptionError(f"--model.init_from {shown_path(path)}: its weights do not fit this model "
                          f"({detail[:240]}); use the --model options of the run that wrote it") from None
    return checkpoint.get("epoch", "?")
