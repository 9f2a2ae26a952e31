"""Loading a trained model from a checkpoint: the file is read (and checked) once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from showtell.errors import EvaluationError
from showtell.training.checkpoints import read_checkpoint
from showtell.training.module import ShowTellModule, restoring


def describe(value: Any) -> str:
    return "nothing (field missing)" if value is None else repr(value)[:60]


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path, **overrides: Any) -> ShowTellModule:
    """The model of an already read checkpoint (``read_checkpoint``), on the CPU in eval mode, as Lightning's
    ``load_from_checkpoint`` builds it: the stored hyperparameters (``overrides`` replace some, e.g.
    ``test_beam_size``), then ``on_load_checkpoint`` (the vocabulary) and the weights."""
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    try:
        with restoring():
            model = ShowTellModule(**{**hparams, **overrides})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise EvaluationError(f"checkpoint {path} does not fit ShowTellModule: {reason}") from None
    return model.eval()


def load_model(path: str | Path, **overrides: Any) -> tuple[ShowTellModule, dict[str, Any]]:
    """The model on the CPU in eval mode and the data module arguments it was trained with ({} if none)."""
    checkpoint = read_checkpoint(path)
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    return model_from_checkpoint(checkpoint, path, **overrides), data_hparams
