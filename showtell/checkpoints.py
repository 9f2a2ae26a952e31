"""Checkpoints: reading them safely and finding the one to resume from.

``read_checkpoint`` turns every way a file can fail to be a showtell checkpoint (missing, not a checkpoint,
cut short by a kill during writing, another model's) into one ``CheckpointError`` line. ``resume_checkpoint``
resolves ``--ckpt_path last``: the run folder's ``checkpoints/last.ckpt``, or, when that file is unreadable,
the newest readable checkpoint beside it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: one line naming the file and why."""


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
