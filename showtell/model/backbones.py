"""Backbones: torchvision (and timm) ImageNet classifiers without their heads, their weights and preprocessing."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.models import WeightsEnum, get_model, get_model_weights

import showtell.model.timm_backbones as timm_backbones
from showtell.errors import OptionError, WeightsUnavailableError
from showtell.options import Options, shown_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0  # weights=None always gives the same CNN


@dataclass(frozen=True)
class Preprocess:
    """What the pretrained weights expect: resize the short side, center-crop, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # torchvision InterpolationMode value: "bilinear" | "bicubic" | ...


def preprocess_for(name: str, weights: str | None, image_size: int | None = None) -> Preprocess:
    """Preprocessing for backbone ``name`` with ``weights`` (a torchvision weights name, None or a file path).

    timm models (``timm/...``): from the model's pretrained configuration, whatever the weights.
    ``image_size`` overrides the crop size; the resize is then ``round(image_size * 256 / 224)``.
    """
    pre = Preprocess(**timm_backbones.preprocess_values(name)) if timm_backbones.is_timm(name) \
        else _torchvision_preprocess(name, weights)
    if image_size is not None:
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        pre = Preprocess(resize=round(image_size * 256 / 224), crop=image_size, mean=pre.mean, std=pre.std,
                         interpolation=pre.interpolation)
    return pre


def _torchvision_preprocess(name: str, weights: str | None) -> Preprocess:
    _spec(name)
    resolved = _resolve_weights(name, weights)
    if isinstance(resolved, WeightsEnum):
        t = resolved.transforms()
        return Preprocess(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean),
                          std=tuple(t.std), interpolation=t.interpolation.value)
    if name == "inception_v3":
        return Preprocess(resize=342, crop=299)
    return Preprocess(resize=256, crop=224)


def _cut_fc(model: nn.Module) -> int:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return dim


def _cut_inception(model: nn.Module) -> int:
    # Without the auxiliary classifier, train mode returns a tensor instead of InceptionOutputs.
    model.aux_logits = False
    model.AuxLogits = None
    return _cut_fc(model)


def _cut_vgg_fc7(model: nn.Module) -> int:
    # classifier = fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8: keep up to fc7 + ReLU (Tanti et al.'s).
    dim = model.classifier[-1].in_features
    model.classifier = model.classifier[:-1]
    return dim


def _cut_classifier(model: nn.Module) -> int:
    # efficientnet: (Dropout, Linear); mobilenet_v3: (Linear, Hardswish, Dropout, Linear) -> pooled features.
    dim = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
    model.classifier = nn.Identity()
    return dim


def _cut_last_linear(model: nn.Module) -> int:
    # convnext: (LayerNorm2d, Flatten, Linear) -> keep the normalised, flattened pooled features.
    dim = model.classifier[-1].in_features
    model.classifier[-1] = nn.Identity()
    return dim


def _cut_vit_heads(model: nn.Module) -> int:
    dim = model.hidden_dim
    model.heads = nn.Identity()  # forward then returns the CLS token (B, hidden_dim)
    return dim


@dataclass(frozen=True)
class _Spec:
    cut_head: Callable[[nn.Module], int]  # removes the classifier in place, returns the feature size D
    kwargs: tuple[tuple[str, object], ...] = ()  # constructor arguments, identical for every kind of weights


# Built as torchvision builds it for its pretrained weights (inputs re-normalised inside the model).
_INCEPTION = _Spec(_cut_inception, (("transform_input", True), ("init_weights", False)))
_SPECS: dict[str, _Spec] = {
    **{f"resnet{n}": _Spec(_cut_fc) for n in (18, 34, 50, 101, 152)},
    "inception_v3": _INCEPTION,
    "vgg16": _Spec(_cut_vgg_fc7),
    **{f"efficientnet_b{n}": _Spec(_cut_classifier) for n in range(4)},
    "mobilenet_v3_small": _Spec(_cut_classifier),
    "mobilenet_v3_large": _Spec(_cut_classifier),
    "convnext_tiny": _Spec(_cut_last_linear),
    "vit_b_16": _Spec(_cut_vit_heads),
}


BACKBONES: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; supported: {', '.join(BACKBONES)}")
    return _SPECS[name]


def _resolve_weights(name: str, weights: str | Path | None) -> WeightsEnum | Path | None:
    """A weights name -> its torchvision enum member; a path -> Path; None -> None (random init)."""
    if weights is None:
        return None
    enum = get_model_weights(name)
    if isinstance(weights, str) and weights in enum.__members__:
        return enum[weights]
    if is_weights_path(weights):
        return Path(weights).expanduser()
    raise ValueError(f"unknown weights {weights!r} for {name}; valid: {', '.join(enum.__members__)}, "
                     "a .pth/.pt file path, or null for random init")


def is_weights_path(weights: str | os.PathLike) -> bool:
    """Whether a ``weights`` value means a local file: a path object, a value with a folder separator or a
    .pth/.pt suffix, or an existing file (anything else must be a torchvision weights name)."""
    text = os.fspath(weights)
    return (isinstance(weights, os.PathLike) or "/" in text or os.sep in text or text.endswith((".pth", ".pt"))
            or Path(text).expanduser().exists())


def weights_file_problem(name: str, path: Path) -> str | None:
    """What makes ``path`` unusable as weights of backbone ``name`` (torchvision or ``timm/...``), or None.
    Cheap: the file is memory-mapped (no tensor data is read) and its names and shapes are compared with the
    model built on the meta device."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same one-line message
        first = str(err).strip().split(". ")[0].splitlines()[0][:160] if str(err).strip() else ""
        return f"cannot be read as a PyTorch state_dict ({type(err).__name__}: {first})"
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        return f"holds a {type(state).__name__}, expected a state_dict (parameter name -> tensor)"
    if timm_backbones.is_timm(name):
        model = timm_backbones.meta_model(name, state)
        label = f"timm {timm_backbones.model_name(name)}"
        constructor = f"timm.create_model({timm_backbones.model_name(name)!r})"
    else:
        spec = _spec(name)
        with torch.device("meta"):
            model = get_model(name, weights=None, **dict(spec.kwargs))
        if set(state) != set(model.state_dict()):
            spec.cut_head(model)  # maybe a state_dict of the backbone without its head
        label, constructor = f"torchvision {name}", f"torchvision.models.{name}()"
    expected = model.state_dict()
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return (f"does not match {label}: {len(missing)} missing keys {missing[:2]}, {len(unexpected)} "
                f"unexpected keys {unexpected[:2]}; expected the state_dict of {constructor}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            return (f"does not fit {label}: {key} has shape {tuple(tensor.shape)}, expected "
                    f"{tuple(expected[key].shape)}")
    return None


def check_encoder_options(opts: Options) -> None:
    """``encoder`` is one of ``BACKBONES`` or ``timm/<model>`` (timm installed, a known model); ``weights`` is
    null, a weights name of that backbone (timm: ``DEFAULT``), or a readable local state_dict that fits it
    (checked without reading its tensors)."""
    name = opts.values.get("encoder", "resnet50")
    if timm_backbones.is_timm(name):
        try:
            problem = timm_backbones.unknown_model_problem(name)
        except timm_backbones.TimmUnavailableError as err:
            raise OptionError(f"{opts.name('encoder')} {name}: {err}") from None
        if problem:
            raise OptionError(f"{opts.name('encoder')} {name}: {problem}")
        names = ("DEFAULT",)
        allowed = f"DEFAULT (timm's pretrained download), a .pth/.pt state_dict of timm {name[5:]}"
    else:
        opts.one_of("encoder", BACKBONES)
        names = tuple(get_model_weights(name).__members__)
        allowed = f"a torchvision weights name for {name} ({', '.join(names)}), a .pth/.pt file"
    weights = opts.values.get("weights")
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        opts.fail("weights", allowed, optional=True)
    if isinstance(weights, str) and weights in names:
        return
    if not is_weights_path(weights):
        opts.fail("weights", allowed, optional=True)
    problem = weights_file_problem(name, opts.readable_file("weights"))
    if problem:
        raise OptionError(f"{opts.name('weights')} {shown_path(weights)}: {problem}")


def _fetch(name: str, weights: WeightsEnum) -> None:
    """Make sure torchvision's cache holds the weights file; a clear error when it cannot be downloaded."""
    file = weights.url.rsplit("/", 1)[-1]
    folder = (Path(torch.hub.get_dir()) / "checkpoints").resolve()
    if (folder / file).is_file():
        return  # torchvision loads a cached file without network
    match = torch.hub.HASH_REGEX.search(file)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(folder / file),
                                       hash_prefix=match.group(1) if match else None, progress=True)
    except (URLError, OSError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise WeightsUnavailableError(
            f"could not download {name} weights {weights.name} ({type(err).__name__}: {reason}); "
            f"put {file} into {folder} (download it from {weights.url}), or set `weights: /path/to/file.pth` "
            "(a torchvision state_dict) or `weights: null` (random init)") from err


def _load_file(model: nn.Module, path: Path, name: str, cut_head: Callable[[nn.Module], int]) -> int:
    """Load a state_dict of the full torchvision model (or of the already cut backbone); return D."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (or give a torchvision weights name)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same one-line message
        raise ValueError(f"could not read weights file {path} as a state_dict: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, expected a state_dict")
    dim = None
    if set(state) != set(model.state_dict()):
        dim = cut_head(model)  # maybe a checkpoint of the backbone without its head
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"weights file {path} does not match torchvision {name}: {len(missing)} missing "
                         f"keys {missing[:2]}, {len(unexpected)} unexpected keys {unexpected[:2]}; expected "
                         f"the state_dict of torchvision.models.{name}()")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise ValueError(f"weights file {path} does not fit torchvision {name}: "
                         f"{shapes[0] if shapes else str(err).splitlines()[0]}") from err
    return cut_head(model) if dim is None else dim


def build_backbone(name: str, weights: str | Path | None = "DEFAULT") -> tuple[nn.Module, int]:
    """Torchvision ``name`` without its classifier, mapping (B, 3, H, W) -> (B, D); returns (module, D).

    ``weights``: a torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...), a local ``.pth``/``.pt``
    state_dict of the full torchvision model (or of the cut backbone), or None for random initialisation.
    ``timm/<model>``: see ``showtell.model.timm_backbones.build_timm_backbone``.
    """
    if timm_backbones.is_timm(name):
        return timm_backbones.build_timm_backbone(name, weights, RANDOM_INIT_SEED)
    spec = _spec(name)
    resolved = _resolve_weights(name, weights)
    kwargs = dict(spec.kwargs)
    if isinstance(resolved, WeightsEnum):
        _fetch(name, resolved)
        model = get_model(name, weights=resolved, progress=False, **kwargs)
        dim = spec.cut_head(model)
    else:
        # Random init is seeded on its own: the feature cache (built by the data module) and the model's
        # encoder must hold the *same* random CNN, or cached-feature training and image captioning disagree.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = get_model(name, weights=None, **kwargs)
        dim = spec.cut_head(model) if resolved is None else _load_file(model, resolved, name, spec.cut_head)
    if resolved is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError(f"weights {weights} for {name} contain NaN/inf in the layers the encoder keeps "
                         "(e.g. vgg16 IMAGENET1K_FEATURES has no classifier weights); use other weights")
    return model, dim


def image_transform(preprocess, image_size: int | None, augment: bool) -> T.Compose:
    """The transform the encoder's weights expect (resize, centre crop, mean/std).

    ``image_size`` given: the whole image is resized to a square of that size (no crop), as for the small
    synthetic demo images. ``augment``: a mild random resized crop only; no flips or colour jitter, which
    would contradict captions that say "on the left" or "a red ball".
    """
    crop = image_size or preprocess.crop
    mode = T.InterpolationMode(preprocess.interpolation)
    if augment:
        geometry = [T.RandomResizedCrop(crop, scale=(0.7, 1.0), interpolation=mode, antialias=True)]
    elif image_size:
        geometry = [T.Resize((image_size, image_size), interpolation=mode, antialias=True)]
    else:
        geometry = [T.Resize(preprocess.resize, interpolation=mode, antialias=True), T.CenterCrop(preprocess.crop)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(preprocess.mean, preprocess.std)])



def eval_transform(encoder: str, weights: str | None, image_size: int | None) -> T.Compose:
    """The one evaluation transform of an encoder: PIL RGB image -> (3, H, W), as its weights expect (or the
    whole image resized to ``image_size``). Feature extraction, evaluation, captioning and the attached
    encoder's check all use it, so a model sees the same pixels everywhere."""
    return image_transform(preprocess_for(encoder, weights, None), image_size, augment=False)
