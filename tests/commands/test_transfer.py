"""Cross-dataset evaluation (the paper's transfer experiment): a checkpoint trained on the demo, evaluated on a
COCO-layout dataset whose captions hold words the model has never seen."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _fixtures import write_karpathy

from showtell.evaluate import TRAINING_DATA_OPTIONS, _data_defaults, main
from showtell.metrics.scores import caption_metrics
from showtell.training.module import ShowTellModule
from showtell.vocab import tokenize

UNSEEN = ("zebra", "giraffe", "umbrella", "skateboard")


@pytest.fixture(autouse=True)
def _fast_meteor(monkeypatch):
    monkeypatch.setattr("showtell.metrics.scores.meteor", lambda hypotheses, references: 0.1)  # no JVM start


def write_other_dataset(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A COCO-layout dataset (train2014/ and val2014/ folders): demo words ("a red circle") mixed with
    words the demo model does not know."""
    names = [f"COCO_{'train' if i < 8 else 'val'}2014_{i:012d}.jpg" for i in range(12)]
    captions = {name: [f"a red circle next to a {UNSEEN[(i + k) % len(UNSEEN)]}" if k % 2 else
                       f"a small blue square number {k} on the left" for k in range(5)] for i, name in enumerate(names)}
    splits = {"train": names[:8], "val": names[8:10], "test": names[10:]}
    filepaths = {name: name.split("_")[1] for name in names}
    write_karpathy(root, captions, splits, dataset="coco", filepaths=filepaths)
    return captions, splits


def test_checkpoint_evaluated_on_another_dataset(tiny_checkpoint, tmp_path, capsys):
    captions, splits = write_other_dataset(tmp_path / "coco")
    out = tmp_path / "eval"
    assert main(["--ckpt", str(tiny_checkpoint), "--data.root", str(tmp_path / "coco"), "--beam_size", "1",
                 "--output_dir", str(out), "--trainer.accelerator", "cpu", "--json"]) == 0
    stdout = capsys.readouterr().out
    assert f"transfer: evaluating on {tmp_path / 'coco'}" in stdout
    assert "data: karpathy layout (coco)" in stdout  # the other folder's layout, detected anew

    records = [json.loads(line) for line in (out / "test_captions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "test_metrics.json").read_text())
    vocab = ShowTellModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu").vocab
    assert not any(word in vocab for word in UNSEEN)
    # the other dataset's test images, scored against its own references, captioned in the model's words
    assert sorted(r["image_id"] for r in records) == splits["test"]
    for record in records:
        assert record["references"] == [" ".join(tokenize(c)) for c in captions[record["image_id"]]]
        assert all(word in vocab for word in record["caption"].split())
    rescored = caption_metrics([r["caption"] for r in records], [r["references"] for r in records])
    assert metrics["bleu1"] == pytest.approx(rescored["bleu1"]) and metrics["bleu1"] > 0
    assert json.loads(stdout.strip().splitlines()[-1]) == metrics

    # the unknown reference words are counted and said
    found = re.search(r"; (\d+) of the (\d+) words of the test references \(([\d.]+)%\) are not in it", stdout)
    words = [w for name in splits["test"] for c in captions[name] for w in tokenize(c)]
    assert found and int(found[1]) == sum(w not in vocab for w in words) > 0 and int(found[2]) == len(words)


def test_training_data_options_stay_with_the_training_data():
    stored = {"root": "data/a", "format": "original", "dataset": "flickr8k", "features": "a.npz", "image_dir": "x",
              "demo": True, "batch_size": 8, "image_size": 64, "min_count": 3}
    same = _data_defaults(stored)
    other = _data_defaults(stored, other_root=True)
    assert same["data.features"] == "a.npz" and same["data.format"] == "original"
    assert not any(f"data.{key}" in other for key in TRAINING_DATA_OPTIONS)
    assert other == {"data.root": "data/a", "data.batch_size": 8, "data.image_size": 64, "data.min_count": 3}


def test_features_trained_checkpoint_needs_the_other_datasets_features(demo_root, tmp_path, capsys):
    """A model trained on a features file has no CNN: on another dataset it needs that dataset's features."""
    import lightning as L
    import numpy as np
    from conftest import tiny_data_kwargs, tiny_model_kwargs

    from showtell.data.datamodule import CaptionDataModule
    from showtell.data.features import save_features

    names = sorted(p.name for p in (demo_root / "Images").iterdir())
    rng = np.random.default_rng(0)
    save_features(tmp_path / "demo.npz", names, rng.standard_normal((len(names), 8)).astype(np.float16))
    data = CaptionDataModule(**tiny_data_kwargs(demo_root) | {"features": str(tmp_path / "demo.npz")})
    model = ShowTellModule(vocab_size=data.vocab_size, feature_dim=8, **tiny_model_kwargs())
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    ckpt = tmp_path / "features.ckpt"
    trainer.save_checkpoint(ckpt)
    captions, splits = write_other_dataset(tmp_path / "coco")
    common = ["--ckpt", str(ckpt), "--data.root", str(tmp_path / "coco"), "--beam_size", "1",
              "--output_dir", str(tmp_path / "eval"), "--trainer.accelerator", "cpu"]
    capsys.readouterr()
    assert main(common) == 2  # the demo's features file is not carried over to the other dataset
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained on precomputed features" in err and "--data.features" in err
    other = sorted(captions)
    save_features(tmp_path / "coco.npz", other, rng.standard_normal((len(other), 8)).astype(np.float16))
    assert main([*common, "--data.features", str(tmp_path / "coco.npz")]) == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "test_captions.jsonl").read_text().splitlines()]
    assert sorted(r["image_id"] for r in records) == splits["test"]
