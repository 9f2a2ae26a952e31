"""Image encoder: backbones without heads, freezing, precomputed features, weights files and errors."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from showtell.errors import WeightsUnavailableError
from showtell.model.backbones import BACKBONES, build_backbone, preprocess_for
from showtell.model.encoder import ImageEncoder

# Feature size after removing the head, per backbone (torchvision architectures).
EXPECTED_DIM = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "inception_v3": 2048, "vgg16": 4096, "efficientnet_b0": 1280, "efficientnet_b1": 1280,
    "efficientnet_b2": 1408, "efficientnet_b3": 1536, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960,
    "convnext_tiny": 768, "vit_b_16": 768,
}


@functools.cache
def random_backbone(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    return build_backbone(name, None)


@pytest.mark.slow
def test_all_backbones_listed_and_build():
    assert set(EXPECTED_DIM) <= set(BACKBONES)
    for name in BACKBONES:
        _, dim = random_backbone(name)
        assert dim == EXPECTED_DIM[name], name


@pytest.mark.parametrize(("name", "size"), [
    ("resnet18", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("inception_v3", 75),
    ("vgg16", 32), ("convnext_tiny", 32), ("vit_b_16", 224),
])
def test_backbone_maps_images_to_pooled_features(name, size):
    model, dim = random_backbone(name)
    model.train()  # inception's aux head is gone, so train mode returns a plain tensor too
    with torch.no_grad():
        out = model(torch.randn(2 if name != "vit_b_16" else 1, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape[1:] == (dim,)


def test_encoder_output_shape_and_embedding():
    enc = ImageEncoder("resnet18", weights=None, embed_size=16)
    assert enc.num_features == 512 and enc.embed.in_features == 512 and enc.embed.out_features == 16
    assert enc(torch.randn(3, 3, 64, 64)).shape == (3, 16)
    assert enc(torch.randn(3, 512)).shape == (3, 16)  # already extracted features


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval_mode():
    torch.manual_seed(0)
    enc = ImageEncoder("resnet18", weights=None, embed_size=8)
    parent = nn.Sequential(enc)
    parent.train()
    assert enc.frozen and enc.training and not enc.backbone.training
    assert all(not m.training for m in enc.backbone.modules())
    bn = enc.backbone.bn1
    stats = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    enc(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in enc.backbone.parameters())
    assert all(not p.requires_grad for p in enc.backbone.parameters())
    assert enc.embed.weight.grad is not None and enc.embed.weight.grad.abs().sum() > 0
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    # No autograd graph through the frozen CNN, even for inputs that require grad.
    assert not enc.features(torch.randn(1, 3, 64, 64, requires_grad=True)).requires_grad


def test_unfreeze_trains_the_backbone():
    enc = ImageEncoder("mobilenet_v3_small", weights=None, embed_size=8).train()
    enc.unfreeze()
    assert not enc.frozen and enc.backbone.training
    enc(torch.randn(2, 3, 64, 64)).sum().backward()
    grads = [p.grad for p in enc.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    enc.eval()
    assert not enc.backbone.training
    enc.freeze()
    enc.train()
    assert enc.frozen and not enc.backbone.training


def test_precomputed_features_path_matches_features_then_embed():
    torch.manual_seed(0)
    full = ImageEncoder("resnet18", weights=None, embed_size=8).eval()
    cached = ImageEncoder(feature_dim=512, embed_size=8)
    assert cached.backbone is None and cached.num_features == 512
    cached.embed.load_state_dict(full.embed.state_dict())
    images = torch.randn(2, 3, 64, 64)
    feats = full.features(images)
    assert torch.allclose(cached(feats), full(images), atol=1e-6)
    assert torch.allclose(full.embed(feats), full(images), atol=1e-6)
    with pytest.raises(RuntimeError, match="no backbone"):
        cached(images)
    with pytest.raises(ValueError, match=r"features \(B, 512\)"):
        cached(torch.randn(2, 100))


def test_local_weights_file_loads_full_or_cut_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "my-resnet18.pth"
    torch.save(reference.state_dict(), path)
    model, dim = build_backbone("resnet18", str(path))
    assert dim == 512 and isinstance(model.fc, nn.Identity)
    ref_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref_state.items())

    cut_path = tmp_path / "cut.pt"  # a checkpoint of the backbone without its head
    torch.save(model.state_dict(), cut_path)
    again, _ = build_backbone("resnet18", cut_path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref_state.items())


def test_bad_weights_files_give_one_line_errors(tmp_path):
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match torchvision resnet18") as err:
        build_backbone("resnet18", wrong)
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights file") as err:
        build_backbone("resnet18", garbage)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", tmp_path / "missing.pth")


def test_unknown_backbone_and_weights_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*resnet50.*vit_b_16"):
        build_backbone("resnet9", None)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET_V9' for resnet50.*IMAGENET1K_V1.*IMAGENET1K_V2"):
        build_backbone("resnet50", "IMAGENET_V9")
    with pytest.raises(ValueError, match="unknown backbone"):
        preprocess_for("alexnet", None)


def _no_network(monkeypatch):
    """Make every connection attempt fail as it does offline (DNS failure), so nothing can hang."""
    def fail(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr(socket, "create_connection", fail)


def test_download_failure_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("resnet18", "IMAGENET1K_V1")
    message = str(err.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message
    assert str((tmp_path / "hub" / "checkpoints").resolve()) in message
    assert "weights: /path/to/file.pth" in message and "weights: null" in message
    assert isinstance(err.value, RuntimeError)


def test_download_failure_from_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def fail(*args, **kwargs):
        raise URLError("no internet")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(WeightsUnavailableError, match=r"put resnet50-11ad3fa6\.pth into"):
        ImageEncoder("resnet50", weights="IMAGENET1K_V2")


def test_weights_name_loads_a_cached_file_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    torch.manual_seed(2)
    reference = torchvision.models.resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    model, _ = build_backbone("resnet18", "IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_preprocess_follows_the_weights():
    assert preprocess_for("resnet50", "IMAGENET1K_V2") == preprocess_for("resnet50", "DEFAULT")
    v2 = preprocess_for("resnet50", "DEFAULT")
    assert (v2.resize, v2.crop, v2.interpolation) == (232, 224, "bilinear")
    assert v2.mean == (0.485, 0.456, 0.406) and v2.std == (0.229, 0.224, 0.225)
    assert (preprocess_for("resnet50", "IMAGENET1K_V1").resize, preprocess_for("resnet50", None).resize) == (256, 256)
    assert preprocess_for("efficientnet_b3", "DEFAULT").interpolation == "bicubic"
    inception = preprocess_for("inception_v3", None)
    assert (inception.resize, inception.crop) == (342, 299)
    assert preprocess_for("inception_v3", "/some/where/inception.pth") == inception
    small = preprocess_for("resnet18", "DEFAULT", image_size=64)
    assert (small.resize, small.crop) == (73, 64)
    from showtell.model.backbones import image_transform

    transform = image_transform(small, None, augment=False)  # the one transform training and captioning use
    from PIL import Image
    out = transform(Image.new("RGB", (120, 90), (255, 0, 0)))
    assert out.shape == (3, 64, 64)
    assert out[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)
    with pytest.raises(ValueError, match="unknown weights"):
        preprocess_for("resnet18", "IMAGENET1K_V2")  # resnet18 has only V1


def test_weights_path_argument_types(tmp_path):
    # A Path object is a file path; a bare unknown name is an error, not a file.
    assert preprocess_for("resnet18", Path(tmp_path / "x")) == preprocess_for("resnet18", None)
    with pytest.raises(ValueError, match="unknown weights 'imagenet'"):
        build_backbone("resnet18", "imagenet")


def test_backbone_kept_in_eval_mode_after_state_dict_round_trip():
    enc = ImageEncoder("resnet18", weights=None, embed_size=4)
    clone = ImageEncoder("resnet18", weights=None, embed_size=4)
    clone.load_state_dict(enc.state_dict())
    clone.train()
    assert not clone.backbone.training
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(clone(x), enc.eval()(x), atol=1e-6)
