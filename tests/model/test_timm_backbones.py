"""timm encoders (``--model.encoder timm/<model>``), ``--model.attach_encoder`` and the caption gallery.

A tiny timm model with random weights (``test_efficientnet``, 0.1M parameters) stands in for real ones: cache,
train, caption end to end; the attach check passes for features made by the same encoder and preprocessing and
fails, with one line, for another preprocessing. Skipped when timm is not installed (``pip install -e ".[timm]"``),
except the test that the missing package gives one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO
from PIL import Image

from showtell.caption import main as caption_main
from showtell.data.datamodule import CaptionDataModule
from showtell.data.features import extract_features, save_features
from showtell.errors import OptionError, WeightsUnavailableError
from showtell.evaluate import main as evaluate_main
from showtell.model.backbones import build_backbone, image_transform, preprocess_for
from showtell.model.encoder import ImageEncoder
from showtell.train import main as train_main
from showtell.training.module import ShowTellModule

ENCODER = "timm/test_efficientnet"


def _timm():
    return pytest.importorskip("timm")


def _one_line_error(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------- options
def test_without_timm_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(OptionError) as err:
        ShowTellModule.check_options({"encoder": ENCODER, "weights": None})
    assert '--model.encoder timm/test_efficientnet: timm encoders need the timm package' in _one_line_error(err.value)
    assert 'pip install -e ".[timm]"' in str(err.value)


def test_unknown_timm_model_and_bad_weights_fail_when_built(tmp_path):
    _timm()
    with pytest.raises(OptionError, match=r"--model.encoder timm/resnet_nonsense: 'resnet_nonsense' is not a timm "
                                          r"model .*similar: "):
        ShowTellModule.check_options({"encoder": "timm/resnet_nonsense", "weights": None})
    with pytest.raises(OptionError, match=r"--model.weights must be DEFAULT \(timm's pretrained download\), a "
                                          r"\.pth/\.pt state_dict of timm test_efficientnet or null, "
                                          r"got 'IMAGENET1K_V1'"):
        ShowTellModule.check_options({"encoder": ENCODER, "weights": "IMAGENET1K_V1"})
    import timm
    wrong = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), wrong)
    with pytest.raises(OptionError) as err:
        ShowTellModule.check_options({"encoder": ENCODER, "weights": str(wrong)})
    assert f"--model.weights {wrong}: does not match timm test_efficientnet" in _one_line_error(err.value)


def test_preprocessing_from_the_pretrained_config():
    timm = _timm()
    cfg = timm.get_pretrained_cfg("test_efficientnet")
    pre = preprocess_for(ENCODER, None)
    assert pre.crop == cfg.input_size[-1] and pre.resize == int(cfg.input_size[-1] / cfg.crop_pct)
    assert pre.mean == tuple(cfg.mean) and pre.std == tuple(cfg.std) and pre.interpolation == cfg.interpolation
    assert preprocess_for(ENCODER, None, image_size=64).crop == 64  # --data.image_size: whole image resized


# ---------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("head", [True, False], ids=["with classifier", "without classifier"])
def test_local_weights_file_loads_exactly(tmp_path, head):
    timm = _timm()
    torch.manual_seed(3)
    reference = timm.create_model("test_efficientnet").eval()
    state = reference.state_dict()
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    ShowTellModule.check_options({"encoder": ENCODER, "weights": str(path)})  # passes
    backbone, dim = build_backbone(ENCODER, str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert dim == reference.num_features
        torch.testing.assert_close(backbone.eval()(x), expected)


def test_random_init_is_the_same_cnn_every_time():
    _timm()
    a, _ = build_backbone(ENCODER, None)
    torch.manual_seed(123)  # the global seed does not matter: the feature cache and the model must agree
    b, _ = build_backbone(ENCODER, None)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_default_weights_offline_say_what_to_download(monkeypatch):
    _timm()
    import showtell.model.timm_backbones as tb

    real = tb._create

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("[Errno -2] Name or service not known")
        return real(name, pretrained, **kwargs)

    monkeypatch.setattr(tb, "_create", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("timm/resnet18.a1_in1k", "DEFAULT")
    text = _one_line_error(err.value)
    assert "could not get timm's pretrained weights for resnet18.a1_in1k" in text
    assert "timm/resnet18.a1_in1k" in text and "--model.weights resnet18.a1_in1k.pth" in text


# ------------------------------------------------------------------------------------------ end to end
def _data(demo_root: Path, tmp_path: Path, **kwargs) -> CaptionDataModule:
    options = dict(root=str(demo_root), encoder=ENCODER, weights=None, image_size=64, batch_size=16,
                   num_workers=0, min_count=1, progress=False, cache_dir=str(tmp_path / "cache"))
    return CaptionDataModule(**{**options, **kwargs})


def _fit(model: ShowTellModule, data: CaptionDataModule, tmp_path: Path) -> Path:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _model(data: CaptionDataModule, **kwargs) -> ShowTellModule:
    return ShowTellModule(vocab_size=data.vocab_size, encoder=ENCODER, weights=None, embed_size=16, hidden_size=16,
                          dropout=0.0, max_caption_len=8, test_beam_size=2, **kwargs)


def test_timm_encoder_caches_trains_and_captions(demo_root, tmp_path, capsys):
    _timm()
    data = _data(demo_root, tmp_path)
    assert data.uses_cache
    ckpt = _fit(_model(data), data, tmp_path)
    cache = [p for p in (tmp_path / "cache").rglob("*.npz")]
    assert len(cache) == 1 and cache[0].name.startswith("features_timm-test_efficientnet_")  # one file
    images = sorted((demo_root / "Images").iterdir())[:2]
    capsys.readouterr()
    assert caption_main(["--ckpt", str(ckpt), *map(str, images), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in images]


def _features_file(demo_root: Path, tmp_path: Path, image_size: int | None) -> Path:
    """The demo's images through the random timm encoder with the given preprocessing, as a features file."""
    backbone, _ = build_backbone(ENCODER, None)
    names = sorted(p.name for p in (demo_root / "Images").iterdir())
    transform = image_transform(preprocess_for(ENCODER, None), image_size, augment=False)
    features = extract_features(backbone.eval(), [demo_root / "Images" / n for n in names], transform,
                                num_workers=0, progress=False)
    path = tmp_path / "features.npz"
    save_features(path, names, features)
    return path


def test_attach_encoder_passes_check_and_captions_images(demo_root, tmp_path, capsys):
    _timm()
    features = _features_file(demo_root, tmp_path, image_size=64)
    data = _data(demo_root, tmp_path, features=str(features), image_dir=str(demo_root / "Images"))
    model = _model(data, feature_dim=data.feature_dim, attach_encoder=True)
    ckpt = _fit(model, data, tmp_path)
    out = capsys.readouterr().out
    assert f"attach_encoder: {ENCODER} reproduces {features} on 16 images of {demo_root / 'Images'}" in out
    image = sorted((demo_root / "Images").iterdir())[0]
    assert caption_main(["--ckpt", str(ckpt), str(image), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}\t")
    # The checkpoint's CNN computes the file's features: image and feature captions agree.
    loaded = ShowTellModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    transform = image_transform(preprocess_for(ENCODER, None), 64, augment=False)
    pixels = transform(Image.open(image).convert("RGB")).unsqueeze(0)
    row = data.features_table.features[data.features_table.row[image.name]].float().unsqueeze(0)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(loaded.encoder.features(pixels), row).item() > 0.999


def test_attach_encoder_other_preprocessing_fails_with_one_line(demo_root, tmp_path):
    _timm()
    features = _features_file(demo_root, tmp_path, image_size=None)  # the encoder's own resize + crop
    data = _data(demo_root, tmp_path, features=str(features), image_dir=str(demo_root / "Images"))  # 64 x 64
    model = _model(data, feature_dim=data.feature_dim, attach_encoder=True)
    with pytest.raises(OptionError) as err:
        _fit(model, data, tmp_path)
    text = _one_line_error(err.value)
    assert f"--model.attach_encoder: {ENCODER} (weights None, preprocessing 64x64 whole image" in text
    assert "does not reproduce" in text and "likely another preprocessing" in text


def test_attach_encoder_without_images_says_check_skipped(demo_root, tmp_path, capsys):
    _timm()
    features = _features_file(demo_root, tmp_path, image_size=64)
    data = _data(demo_root, tmp_path, features=str(features))
    model = _model(data, feature_dim=data.feature_dim, attach_encoder=True)
    data.image_folder  # noqa: B018 (loads the corpus)
    if data.image_folder is not None:  # the demo's Images folder is found by itself: hide it from the check
        data.corpus.image_dir = None
    _fit(model, data, tmp_path)
    assert "so it was NOT checked" in capsys.readouterr().out


def test_attach_encoder_feature_size_must_match():
    _timm()
    with pytest.raises(OptionError, match=r"--model.attach_encoder: timm/test_efficientnet gives 256-d features "
                                          r"but --data.features holds 7-d ones"):
        ImageEncoder(ENCODER, None, 16, feature_dim=7, attach=True)


def test_train_py_attach_encoder_without_features_one_line(demo_root, tmp_path, capsys):
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--data.root", str(demo_root), "--data.demo", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--model.attach_encoder", "true"]
    with pytest.raises(SystemExit) as exit_:
        train_main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "--model.attach_encoder true declares the encoder behind --data.features, which is not set" in err[0]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------- references, gallery
@pytest.mark.slow
def test_references_json_scores_with_evaluate(tiny_checkpoint, demo_root, tmp_path, capsys):
    images = sorted((demo_root / "Images").iterdir())[:3]
    assert caption_main(["--ckpt", str(tiny_checkpoint), *map(str, images), "--json",
                         "--references", str(demo_root / "captions.txt")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert all(len(r["references"]) == 5 for r in records)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert evaluate_main(["--captions", str(captions), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"bleu4", "rougeL", "cider"}


def test_gallery_is_a_valid_image(tiny_checkpoint, demo_root, tmp_path, capsys):
    images = sorted((demo_root / "Images").iterdir())[:5]
    out = tmp_path / "gallery.png"
    assert caption_main(["--ckpt", str(tiny_checkpoint), *map(str, images), "--gallery", str(out), "--top_k", "2",
                         "--columns", "3", "--references", str(demo_root / "captions.txt")]) == 0
    assert f"gallery: {out} (5 images)" in capsys.readouterr().err
    with Image.open(out) as sheet:
        sheet.verify()
    with Image.open(out) as sheet:
        width, height = sheet.size
        assert width > 600 and height > 400  # 3 columns x 2 rows of photos with text


@pytest.mark.parametrize(("gallery", "says"), [("out.gif", "--gallery {d}/out.gif: name a .png, .jpg, .jpeg, "
                                                            ".pdf, .svg file"),
                                               ("missing/out.png", "--gallery {d}/missing/out.png: folder "
                                                                   "{d}/missing does not exist")])
def test_gallery_bad_path_one_line(tiny_checkpoint, demo_root, tmp_path, capsys, gallery, says):
    image = sorted((demo_root / "Images").iterdir())[0]
    assert caption_main(["--ckpt", str(tiny_checkpoint), str(image), "--gallery", str(tmp_path / gallery)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"caption: {says.format(d=tmp_path)}"]
