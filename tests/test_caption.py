"""showtell.caption: captions for image files from a checkpoint (tiny model on the demo data, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO
from PIL import Image

from showtell.caption import eval_transform, main, read_image
from showtell.data import Flickr8kDataModule
from showtell.module import ShowTellModule


def _stored(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def images(demo_root, tmp_path_factory) -> dict[str, Path]:
    """Two demo JPEGs, a grayscale PNG and an RGBA PNG (other sizes than the demo's)."""
    folder = tmp_path_factory.mktemp("caption_images")
    demo = sorted((demo_root / "Images").iterdir())
    gray, rgba = folder / "gray.png", folder / "rgba.png"
    Image.open(demo[0]).convert("L").resize((50, 40)).save(gray)
    rgba_image = Image.open(demo[1]).convert("RGBA").resize((30, 70))
    rgba_image.putalpha(128)
    rgba_image.save(rgba)
    return {"demo0": demo[0], "demo1": demo[1], "gray": gray, "rgba": rgba}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_captions_every_image_in_order(tiny_checkpoint, images, capsys):
    paths = [str(p) for p in images.values()]
    assert main(["--ckpt", str(tiny_checkpoint), *paths, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert [line.split("\t")[0] for line in lines] == paths
    assert all(len(line.split("\t")) == 2 for line in lines)
    assert captured.err == ""


def test_top_k_json(tiny_checkpoint, images, capsys):
    paths = [str(images["demo0"]), str(images["gray"])]
    assert main(["--ckpt", str(tiny_checkpoint), *paths, "--top_k", "2", "--json"]) == 0
    records = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert [r["path"] for r in records] == paths
    for record in records:
        assert set(record) == {"path", "caption", "captions"}
        ranked = record["captions"]
        assert len(ranked) == 2 and all(set(r) == {"caption", "log_prob"} for r in ranked)
        assert ranked[0]["caption"] == record["caption"] and ranked[0]["caption"] != ranked[1]["caption"]
        scores = [r["log_prob"] for r in ranked]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


def test_top_k_text_and_single_json(tiny_checkpoint, images, capsys):
    assert main(["--ckpt", str(tiny_checkpoint), str(images["demo0"]), "--top_k", "3"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert lines[0] == str(images["demo0"]) and [line.split(".")[0].strip() for line in lines[1:]] == ["1", "2", "3"]
    assert all("(log p -" in line for line in lines[1:])
    assert main(["--ckpt", str(tiny_checkpoint), str(images["demo0"]), "--json", "--beam_size", "1"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"path", "caption"}


def test_bad_files_are_reported_and_the_rest_captioned(tiny_checkpoint, images, tmp_path, capsys):
    missing, text = tmp_path / "missing.jpg", tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images["demo1"].read_bytes()[:300])
    paths = [str(missing), str(images["demo0"]), str(text), str(truncated)]
    assert main(["--ckpt", str(tiny_checkpoint), *paths]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in _lines(captured.out)] == [str(images["demo0"])]
    errors = _lines(captured.err)
    assert len(errors) == 3
    assert errors[0] == f"caption: {missing}: no such file"
    assert errors[1].startswith(f"caption: {text}: not an image file")
    assert errors[2].startswith(f"caption: {truncated}: ")


def test_captions_equal_the_modules_own_on_the_training_eval_transform(tiny_checkpoint, capsys):
    """Round trip: pixels the data module feeds at test time -> same tensors and captions from the command."""
    stored = _stored(tiny_checkpoint)
    data = Flickr8kDataModule(**{**stored["datamodule_hyper_parameters"], "cache_features": False})
    data.setup("test")
    dataset = data.datasets["test"]
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert batch.images.dim() == 4  # pixels, not cached features
    model = ShowTellModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu").eval()
    expected = [" ".join(c) for c in model.captions_from(model.generate(batch.images, beam_size=3))]

    paths = [dataset.image_dir / name for name in batch.image_ids]
    transform = eval_transform(model, stored["datamodule_hyper_parameters"])
    for path, pixels in zip(paths, batch.images):
        assert torch.equal(read_image(path, transform), pixels)
    capsys.readouterr()
    assert main(["--ckpt", str(tiny_checkpoint), *map(str, paths), "--batch_size", "4"]) == 0
    assert [line.split("\t")[1] for line in _lines(capsys.readouterr().out)] == expected


def test_checkpoint_without_cnn(tiny_checkpoint, images, tmp_path, capsys):
    """A model trained on bring-your-own features cannot read image files: one line, exit 2."""
    vocab = _stored(tiny_checkpoint)["showtell_vocab"]
    model = ShowTellModule(vocab_size=len(vocab["itos"]), feature_dim=16, encoder="resnet18", weights=None,
                           embed_size=8, hidden_size=8)
    path = tmp_path / "features.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "showtell_vocab": vocab, "pytorch-lightning_version": L.__version__}, path)
    assert main(["--ckpt", str(path), str(images["demo0"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(_lines(captured.err)) == 1
    assert "precomputed features" in captured.err and "no CNN" in captured.err


def test_bad_checkpoint_and_options(tmp_path, tiny_checkpoint, images, capsys):
    assert main(["--ckpt", str(tmp_path / "none.ckpt"), str(images["demo0"])]) == 2
    assert _lines(capsys.readouterr().err) == [f"caption: checkpoint {tmp_path / 'none.ckpt'} does not exist"]
    assert main(["--ckpt", str(tiny_checkpoint), str(images["demo0"]), "--beam_size", "0"]) == 2
    assert "--beam_size must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--ckpt", str(tiny_checkpoint), str(images["demo0"]), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_module_entry_point(tiny_checkpoint, images):
    result = subprocess.run(
        [sys.executable, "-m", "showtell.caption", "--ckpt", str(tiny_checkpoint), str(images["rgba"]), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["path"] == str(images["rgba"]) and isinstance(record["caption"], str)
