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

from showtell.caption import main
from showtell.data.datamodule import Flickr8kDataModule
from showtell.model import eval_transform
from showtell.training.module import ShowTellModule
from showtell.training.predict import (
    PathTable,
    ProcessBatches,
    StderrProgressBar,
    collate_images,
    merge_parts,
    read_image,
)


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
    hp = model.hparams
    transform = eval_transform(hp.encoder, hp.weights, stored["datamodule_hyper_parameters"].get("image_size"))
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


@pytest.mark.slow
def test_module_entry_point(tiny_checkpoint, images):
    result = subprocess.run(
        [sys.executable, "-m", "showtell.caption", "--ckpt", str(tiny_checkpoint), str(images["rgba"]), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["path"] == str(images["rgba"]) and isinstance(record["caption"], str)


# ------------------------------------------------------------------------- folders, the predict loop's parts
def test_folder_arguments_expand_sorted_in_place(tiny_checkpoint, images, demo_root, tmp_path, capsys):
    """A folder stands for its image files (any case of the suffixes), sorted by name, not recursive; file
    arguments keep their place; every entry is captioned once, in order."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    demo = sorted((demo_root / "Images").iterdir())
    for name, source in [("b.png", images["gray"]), ("A.JPG", demo[2]), ("c.jpeg", demo[3]), ("d.TIFF", demo[4])]:
        Image.open(source).save(folder / name)
    (folder / "notes.txt").write_text("not listed\n")
    Image.open(demo[5]).save(folder / "sub" / "e.jpg")  # a subfolder's image: not listed
    paths = [str(images["demo0"]), str(folder), str(images["rgba"])]
    assert main(["--ckpt", str(tiny_checkpoint), *paths, "--json", "--batch_size", "2"]) == 0
    listed = [json.loads(line)["path"] for line in _lines(capsys.readouterr().out)]
    assert listed == [str(images["demo0"]), *(str(folder / n) for n in ("A.JPG", "b.png", "c.jpeg", "d.TIFF")),
                      str(images["rgba"])]


def test_folder_without_images_is_reported(tiny_checkpoint, images, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--ckpt", str(tiny_checkpoint), str(empty), str(images["demo0"])]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in _lines(captured.out)] == [str(images["demo0"])]
    assert _lines(captured.err) == [f"caption: {empty}: no image files (.jpg .jpeg .png .bmp .gif .webp .tif .tiff) "
                                    "in this folder"]
    assert main(["--ckpt", str(tiny_checkpoint), str(empty)]) == 1  # nothing to caption: no Trainer at all
    assert capsys.readouterr().out == ""


def test_path_table_round_trip():
    paths = ["a.jpg", "dir/ünïcödé photo.png", "", "x" * 300, "/abs/path.JPEG"]
    table = PathTable(iter(paths))
    assert len(table) == 5 and list(table) == paths and table[-1] == paths[-1]
    assert table.digest() == PathTable(paths).digest() != PathTable(paths[:-1]).digest()
    assert len(PathTable()) == 0 and list(PathTable()) == []
    with pytest.raises(IndexError):
        table[5]


@pytest.mark.parametrize("count,size,world", [(11, 3, 2), (10, 3, 2), (1, 32, 2), (5, 2, 4), (7, 7, 3), (9, 2, 1)])
def test_process_batches_share_whole_batches(count, size, world, monkeypatch):
    """Process r gets batches r, r+W, ... of a one-process run (same batches: same captions), every process the
    same number of steps (empty batches pad), at least one, and together every image exactly once."""
    one = list(ProcessBatches(count, size))
    shares = []
    for rank in range(world):
        monkeypatch.setattr(ProcessBatches, "_rank", staticmethod(lambda r=rank: (r, world)))
        sampler = ProcessBatches(count, size)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1]) >= 1
        assert all(batch in one for batch in shares[-1] if batch)
    assert len({len(s) for s in shares}) == 1
    assert sorted(i for s in shares for batch in s for i in batch) == list(range(count))


def test_merge_parts_streams_in_index_order_once(tmp_path):
    parts = [tmp_path / "rank-00000.jsonl", tmp_path / "rank-00001.jsonl", tmp_path / "rank-00002.jsonl"]
    shares = [[0, 1, 2, 9, 10], [3, 4, 5, 10], [6, 7, 8, 10]]  # 10: padded copies; the first one is kept
    for rank, (part, share) in enumerate(zip(parts, shares)):
        part.write_text("".join(json.dumps({"index": i, "error": f"rank {rank}"}) + "\n" for i in share))
    merged = list(merge_parts(parts))
    assert [i for i, _ in merged] == list(range(11)) and merged[10][1]["error"] == "rank 0"
    parts[2].write_text("".join(json.dumps({"index": i}) + "\n" for i in (8, 7)))
    with pytest.raises(RuntimeError, match="out of order"):
        list(merge_parts(parts))


def test_predict_step_equals_generate(tiny_checkpoint, images):
    model = ShowTellModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu").eval()
    image_size = _stored(tiny_checkpoint)["datamodule_hyper_parameters"].get("image_size")
    transform = eval_transform(model.hparams.encoder, model.hparams.weights, image_size)
    pixels = torch.stack([read_image(images[k], transform) for k in ("demo0", "demo1", "gray")])
    decoded = model.generate(pixels, beam_size=3, top_k=2)
    model.predict_decoding = {"beam_size": 3, "top_k": 2, "max_len": None}
    ranked = model.predict_step(collate_images([(0, pixels[0]), (1, "bad"), (2, pixels[1]), (3, pixels[2])]))
    assert [[c for c, _ in r] for r in ranked] == [[" ".join(model.captions_from(decoded, k)[b]) for k in range(2)]
                                                   for b in range(3)]
    assert [[lp for _, lp in r] for r in ranked] == decoded.log_probs.tolist()
    assert model.predict_step(collate_images([(0, "bad")])) == []


def test_accelerator_options(tiny_checkpoint, images, capsys):
    image = str(images["demo0"])
    assert main(["--ckpt", str(tiny_checkpoint), image, "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert main(["--ckpt", str(tiny_checkpoint), image, "--device", "cpu"]) == 0  # the deprecated spelling
    assert capsys.readouterr().out == out
    assert main(["--ckpt", str(tiny_checkpoint), image, "--device", "cpu", "--accelerator", "cuda"]) == 2
    assert "contradicts --accelerator cuda" in capsys.readouterr().err
    for flag, value in [("--devices", "0"), ("--num_workers", "-1"), ("--collective_timeout", "0")]:
        assert main(["--ckpt", str(tiny_checkpoint), image, flag, value]) == 2
        assert flag in capsys.readouterr().err
    # Lightning would start the other processes with this process's command line (pytest's): refused.
    assert main(["--ckpt", str(tiny_checkpoint), image, "--accelerator", "cpu", "--devices", "2"]) == 2
    assert "from the command line only" in capsys.readouterr().err


def test_num_workers_and_progress_bar_on_stderr(tiny_checkpoint, images, capsys):
    paths = [str(images["demo0"]), str(images["gray"])]
    assert main(["--ckpt", str(tiny_checkpoint), *paths, "--beam_size", "1"]) == 0
    expected = capsys.readouterr().out
    assert main(["--ckpt", str(tiny_checkpoint), *paths, "--beam_size", "1", "--num_workers", "2"]) == 0
    assert capsys.readouterr().out == expected
    bar = StderrProgressBar().init_predict_tqdm()
    bar.update(1)
    bar.close()
    captured = capsys.readouterr()
    assert "Predicting" in captured.err and captured.out == ""
