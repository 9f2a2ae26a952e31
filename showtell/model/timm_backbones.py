"""Backbones from timm (``pip install -e ".[timm]"``): ``--model.encoder timm/<model name>``.

Any timm image model (``timm.list_models()``, optionally with a pretrained tag: ``timm/resnet50.a1_in1k``) is
built without its classifier (``num_classes=0``: the pooled, pre-logits features (B, D), D =
``model.num_features``). Weights:

- a local state-dict file of the timm model, with or without its classifier (offline machines; e.g.
  ``../shared/weights/tf_efficientnet_lite0.in1k.pth``), checked by names and shapes without reading tensors;
- ``DEFAULT``: timm's pretrained download (Hugging Face hub or timm's cache); when it cannot be fetched, one
  line says which file to save on a machine with internet and how to pass it;
- ``None``: random initialisation, seeded so the feature cache and the model hold the same CNN.

Preprocessing comes from the model's own pretrained configuration (input size, ``crop_pct``, interpolation,
mean, std): resize to ``floor(size / crop_pct)`` and centre-crop ``size``, as timm's eval transform does.
timm is imported only when a ``timm/`` encoder is asked for, so the base install does not need it.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

PREFIX = "timm/"
EXTRA = 'pip install -e ".[timm]"'  # or: pip install timm


class TimmUnavailableError(ImportError):
    """A ``timm/`` encoder was asked for but timm is not installed."""


def is_timm(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def model_name(name: str) -> str:
    """``timm/resnet50.a1_in1k`` -> ``resnet50.a1_in1k`` (what ``timm.create_model`` takes)."""
    return name[len(PREFIX):]


def require_timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise TimmUnavailableError(f"timm encoders need the timm package, which is not installed: {EXTRA}") from None
    return timm


def unknown_model_problem(name: str) -> str | None:
    """Why ``timm/<model>`` names no timm model (with close names), or None."""
    timm = require_timm()
    model = model_name(name)
    if model and timm.is_model(model):
        return None
    base = model.split(".")[0]
    close = timm.list_models(f"*{base[:6]}*")[:5] if base else []
    hint = f"; similar: {', '.join(close)}" if close else ""
    return f"{model!r} is not a timm model (see timm.list_models()){hint}"


def pretrained_config(name: str):
    """timm's pretrained configuration of the model (input size, crop_pct, interpolation, mean, std)."""
    cfg = require_timm().get_pretrained_cfg(model_name(name))
    if cfg is None:
        raise ValueError(f"timm has no pretrained configuration for {model_name(name)!r}; pick a model with one")
    return cfg


def preprocess_values(name: str) -> dict:
    """Keyword arguments of ``showtell.model.backbones.Preprocess`` for this timm model."""
    cfg = pretrained_config(name)
    size = int(cfg.input_size[-1])
    return {"resize": int(math.floor(size / (cfg.crop_pct or 1.0))), "crop": size, "mean": tuple(cfg.mean),
            "std": tuple(cfg.std), "interpolation": cfg.interpolation or "bicubic"}


def _create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    return require_timm().create_model(model_name(name), pretrained=pretrained, **kwargs)


def meta_model(name: str, state: dict[str, Tensor]) -> nn.Module:
    """The timm model on the meta device (no memory), without its classifier when ``state`` has none: what a
    weights file's names and shapes are compared with (``showtell.model.backbones.weights_file_problem``)."""
    with torch.device("meta"):
        model = _create(name)
    if set(state) != set(model.state_dict()):
        model.reset_classifier(0)  # maybe a state dict of the model without its classifier
    return model


def _download_help(name: str, err: Exception) -> str:
    model = model_name(name)
    cfg = require_timm().get_pretrained_cfg(model)
    where = f" (Hugging Face hub {cfg.hf_hub_id})" if cfg is not None and cfg.hf_hub_id else ""
    reason = " ".join(str(err).split())[:160]
    return (f"could not get timm's pretrained weights for {model}{where} ({type(err).__name__}: {reason}); on a "
            f"machine with internet run python -c \"import timm, torch; torch.save(timm.create_model('{model}', "
            f"pretrained=True).state_dict(), '{model}.pth')\" and pass --model.weights {model}.pth, or set "
            "weights: null (random init)")


def build_timm_backbone(name: str, weights: str | Path | None, random_seed: int) -> tuple[nn.Module, int]:
    """The timm model without classifier, (B, 3, H, W) -> (B, D); returns (module, D).

    ``weights``: ``"DEFAULT"`` (timm's pretrained download), a local state-dict path, or None (random init,
    seeded with ``random_seed``).
    """
    from showtell.errors import WeightsUnavailableError

    if weights == "DEFAULT":
        try:
            model = _create(name, pretrained=True, num_classes=0)
        except Exception as err:  # no network, hub errors: all mean the same to the user
            raise WeightsUnavailableError(_download_help(name, err)) from err
        return model, int(model.num_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        model = _create(name)
    if weights is not None:
        path = Path(weights).expanduser()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"weights file {path} holds a {type(state).__name__}, expected a state_dict")
        if set(state) != set(model.state_dict()):
            model.reset_classifier(0)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:  # checked earlier by the option checks; a direct call gets one line too
            first = " ".join(str(err).split())[:200]
            raise ValueError(f"weights file {path} does not fit timm {model_name(name)} ({first})") from None
    model.reset_classifier(0)
    return model, int(model.num_features)
