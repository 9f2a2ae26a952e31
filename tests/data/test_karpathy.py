"""Karpathy's JSON for Flickr8k, Flickr30k and MS-COCO: generated files in each dataset's schema (restval,
6- and 7-caption images, COCO's two image folders, a missing and a corrupt image), dataset detection, the
image folder option, the original-files converter, and training with configs/coco.yaml and flickr30k.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _fixtures import write_karpathy, write_original
from conftest import REPO, shared_flickr8k

from showtell.data.datamodule import CaptionDataModule, Flickr8kDataModule
from showtell.data.formats import CORRUPT_IMAGE, NO_IMAGE_FILE, OTHER_THAN_FIVE, RESTVAL_LEFT_OUT, SPLIT_NAME_SKIPPED
from showtell.data.layouts import KARPATHY_FILES
from showtell.data.locate import detect_format
from showtell.data.sources import load_corpus
from showtell.data.writers import karpathy_from_original
from showtell.errors import DatasetError, OptionError
from showtell.layouts import main as layouts_main
from showtell.vocab import tokenize


def _captions(name: str, count: int) -> list[str]:
    return [f"A person number {k} walks near the {name.split('_')[-1][:-4]} object ." for k in range(count)]


def coco_fixture() -> tuple[dict, dict, list, dict, dict]:
    """(captions, splits, restval, filepaths, images) of a small COCO in Karpathy's split: train images in
    train2014/, restval, val and test images in val2014/; one train image with 6 captions and one restval image
    with 7; one train image without a file and one corrupt."""
    train = [f"COCO_train2014_{i:012d}.jpg" for i in range(1, 17)]
    rest = [f"COCO_val2014_{i:012d}.jpg" for i in range(101, 121)]
    restval, val, test = rest[:4], rest[4:8], rest[8:12]
    captions = {name: _captions(name, 5) for name in train + rest[:12]}
    captions[train[0]] = _captions(train[0], 6)
    captions[restval[0]] = _captions(restval[0], 7)
    splits = {"train": train + restval, "val": val, "test": test}
    filepaths = {name: name.split("_")[1] for name in captions}
    images = {name: "rgb" for name in captions}
    del images[train[1]]  # missing file
    images[train[2]] = "corrupt"
    return captions, splits, restval, filepaths, images


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    captions, splits, restval, filepaths, images = coco_fixture()
    return write_karpathy(tmp_path_factory.mktemp("coco"), captions, splits, images, restval=restval,
                          dataset="coco", filepaths=filepaths)


def flickr30k_fixture() -> tuple[dict, dict, dict]:
    """(captions, splits, images): Karpathy's Flickr30k split scaled down (29,000 / 1,014 / 1,000), numeric
    file names as Flickr30k's, one image with 6 captions, one missing file, one corrupt."""
    names = [f"{1000092795 + 17 * i}.jpg" for i in range(16)]
    captions = {name: _captions(name, 5) for name in names}
    captions[names[3]] = _captions(names[3], 6)
    splits = {"train": names[:10], "val": names[10:13], "test": names[13:]}
    images = {name: "rgb" for name in names}
    del images[names[4]]
    images[names[5]] = "corrupt"
    return captions, splits, images


def write_flickr30k(root: Path) -> Path:
    """The JSON in a subfolder (as unzipped from Karpathy's caption_datasets.zip), images in flickr30k-images/."""
    captions, splits, images = flickr30k_fixture()
    write_karpathy(root / "karpathy", captions, splits, images={}, dataset="flickr30k")
    shutil.rmtree(root / "karpathy" / "Images")
    write_karpathy(root / "unused", captions, splits, images, image_dir="flickr30k-images", dataset="flickr30k")
    shutil.move(root / "unused" / "flickr30k-images", root / "flickr30k-images")
    shutil.rmtree(root / "unused")
    return root


# --------------------------------------------------------------------------------------------- the schemas
def test_coco_json_schema_as_published(coco_root):
    data = json.loads((coco_root / "dataset_coco.json").read_text())
    assert data["dataset"] == "coco" and len(data["images"]) == 28
    first = data["images"][0]
    assert set(first) == {"filepath", "filename", "imgid", "split", "sentids", "sentences", "cocoid"}
    assert first["filepath"] == "train2014" and first["imgid"] == 0
    assert set(first["sentences"][0]) == {"raw", "tokens", "imgid", "sentid"}
    assert first["sentids"] == [s["sentid"] for s in first["sentences"]]
    assert {image["split"] for image in data["images"]} == {"train", "restval", "val", "test"}


def test_coco_parsed_with_restval_extra_captions_and_quirks(coco_root):
    captions, splits, restval, filepaths, _ = coco_fixture()
    train = splits["train"]
    corpus = load_corpus(coco_root)
    assert corpus.format == "karpathy" and corpus.dataset == "coco" and corpus.image_dir == coco_root
    sizes = {key: len(names) for key, names in corpus.splits.items()}
    assert sizes == {"train": 16 + 4 - 2, "val": 4, "test": 4}  # restval joins train; missing + corrupt gone
    assert set(restval) <= set(corpus.splits["train"])
    assert len(corpus.captions[train[0]]) == 6 and len(corpus.captions[restval[0]]) == 7  # all kept
    assert sorted(corpus.report.names(OTHER_THAN_FIVE)) == sorted([train[0], restval[0]])
    assert corpus.report.names(NO_IMAGE_FILE) == [train[1]] * 5
    assert corpus.report.names(CORRUPT_IMAGE) == [train[2]]
    assert sorted(corpus.report.names(SPLIT_NAME_SKIPPED)) == sorted([train[1], train[2]])
    # images are found in their own folder
    assert corpus.image_path(train[0]) == coco_root / "train2014" / train[0]
    assert corpus.image_path(splits["test"][0]) == coco_root / "val2014" / splits["test"][0]
    assert corpus.captions[splits["val"][0]] == [c.strip() for c in captions[splits["val"][0]]]
    assert all(path.parent.name == filepaths[name] for name in corpus.captions
               for path in [corpus.image_path(name)])


def test_restval_can_be_left_out_and_is_reported(coco_root):
    _, _, restval, _, _ = coco_fixture()
    corpus = load_corpus(coco_root, restval=False)
    assert {key: len(names) for key, names in corpus.splits.items()} == {"train": 14, "val": 4, "test": 4}
    assert corpus.report.names(RESTVAL_LEFT_OUT) == restval
    assert not set(restval) & set(corpus.captions)
    assert "ignored 4 restval images left out (restval: false)" in corpus.report.summary()


def test_flickr30k_parsed_with_its_image_folder_and_quirks(tmp_path):
    captions, splits, _ = flickr30k_fixture()
    root = write_flickr30k(tmp_path / "flickr30k")
    assert detect_format(root) == "karpathy"
    corpus = load_corpus(root)
    assert corpus.dataset == "flickr30k" and corpus.image_dir == root / "flickr30k-images"
    names = splits["train"]
    assert {key: len(v) for key, v in corpus.splits.items()} == {"train": 8, "val": 3, "test": 3}
    assert len(corpus.captions[names[3]]) == 6 and corpus.report.names(OTHER_THAN_FIVE) == [names[3]]
    assert corpus.report.names(NO_IMAGE_FILE) == [names[4]] * 5 and corpus.report.names(CORRUPT_IMAGE) == [names[5]]


def test_data_module_on_coco_layout(coco_root, tmp_path):
    data = CaptionDataModule(root=str(coco_root), encoder="resnet18", weights=None, image_size=32, batch_size=8,
                             num_workers=0, min_count=1, progress=False, cache_dir=str(tmp_path / "cache"))
    data.prepare_data()
    data.setup("fit")
    assert data.corpus.dataset == "coco" and data.image_folder == coco_root
    name = data.datasets["test"].names[0]
    assert data.image_path(name) == coco_root / "val2014" / name
    assert len(data.datasets["train"]) == 18 * 5 + 1 + 2  # every caption of every training image
    batch = next(iter(data.val_dataloader()))
    assert batch.images.shape == (4, 512) and all(len(refs) == 5 for refs in batch.references)
    assert "data: karpathy layout (coco)" in data.describe()
    assert Flickr8kDataModule is CaptionDataModule


# ---------------------------------------------------------------------------------------- which dataset
def test_several_datasets_in_one_folder_ask_to_choose(tmp_path, coco_root):
    root = tmp_path / "caption_datasets"
    shutil.copytree(coco_root, root)
    captions, splits, _ = flickr30k_fixture()
    write_karpathy(root, captions, splits, images={}, dataset="flickr30k")
    with pytest.raises(DatasetError, match=r"found .*dataset_flickr30k\.json and .*dataset_coco\.json: choose "
                                           r"one with --data\.dataset flickr30k\|coco$"):
        load_corpus(root, require_images=False)
    assert load_corpus(root, dataset="coco").dataset == "coco"
    assert load_corpus(root, "karpathy", dataset="flickr30k", require_images=False).dataset == "flickr30k"


def test_dataset_option_errors(tmp_path, coco_root):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"no coco caption file .*dataset_coco\.json \(karpathy layout\).*"
                                           r"train2014\.zip") as info:
        load_corpus(other, dataset="coco")
    assert "\n" not in str(info.value)
    # the file's "dataset" field names what it holds
    mislabelled = tmp_path / "mislabelled"
    mislabelled.mkdir()
    (mislabelled / KARPATHY_FILES["flickr30k"]).write_text((coco_root / "dataset_coco.json").read_text())
    with pytest.raises(DatasetError, match=r"holds dataset 'coco', not 'flickr30k'; use --data\.dataset coco"):
        load_corpus(mislabelled, dataset="flickr30k", require_images=False)
    assert load_corpus(mislabelled, require_images=False).dataset == "coco"
    with pytest.raises(OptionError, match=r"^--data\.format original is a Flickr8k layout, but --data\.dataset "
                                          r"coco comes as Karpathy's dataset_coco\.json"):
        CaptionDataModule(root=str(coco_root), format="original", dataset="coco")
    with pytest.raises(OptionError, match=r"^--data\.dataset must be one of auto, flickr8k, flickr30k, coco"):
        CaptionDataModule(root=str(coco_root), dataset="sbu")


def test_coco_image_folders_missing_or_given(tmp_path, coco_root):
    _, splits, _, _, _ = coco_fixture()
    captions_only = tmp_path / "annotations"
    captions_only.mkdir()
    shutil.copy(coco_root / "dataset_coco.json", captions_only)
    with pytest.raises(DatasetError, match=r"not the image folders its entries name \(train2014/, val2014/\).*"
                                           r"--data\.image_dir"):
        load_corpus(captions_only)
    # the folder holding train2014/ and val2014/, given
    corpus = load_corpus(captions_only, image_dir=coco_root)
    assert corpus.image_path(splits["val"][0]) == coco_root / "val2014" / splits["val"][0]
    assert len(corpus.splits["train"]) == 18
    # all images in one folder, given
    flat = tmp_path / "flat"
    flat.mkdir()
    for folder in ("train2014", "val2014"):
        for path in (coco_root / folder).iterdir():
            shutil.copy(path, flat / path.name)
    corpus = load_corpus(captions_only, image_dir=flat)
    assert corpus.image_path(splits["val"][0]) == flat / splits["val"][0] and len(corpus.splits["train"]) == 18
    # precomputed features: no image folder needed, none found
    assert load_corpus(captions_only, require_images=False).image_dir is None
    assert load_corpus(coco_root, require_images=False).image_path(splits["test"][0]).is_file()


# -------------------------------------------------------------------------- Karpathy from the original files
def _quirky_original(root: Path) -> Path:
    from _fixtures import quirky_dataset

    captions, splits, images = quirky_dataset()
    return write_original(root, captions, splits, images)


def test_karpathy_json_from_original_files_gives_the_same_corpus(tmp_path):
    original = _quirky_original(tmp_path / "original")
    out = karpathy_from_original(original, tmp_path / "karpathy" / "dataset_flickr8k.json")
    data = json.loads(out.read_text())
    assert data["dataset"] == "flickr8k"
    assert all(s["tokens"] == [t for t in s["tokens"] if t] for image in data["images"] for s in image["sentences"])
    a = load_corpus(original, require_images=False)
    b = load_corpus(tmp_path / "karpathy", require_images=False)
    assert (a.format, b.format) == ("original", "karpathy")
    assert a.splits == b.splits and a.captions == b.captions
    assert [tokenize(c) for c in b.captions["quoted.jpg"]] == [tokenize(c) for c in a.captions["quoted.jpg"]]


def test_converter_command_and_its_errors(tmp_path, capsys):
    original = _quirky_original(tmp_path / "original")
    assert layouts_main(["karpathy", "--root", str(original), "--out", str(tmp_path / "k.json")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "k.json").is_file()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert layouts_main(["karpathy", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Flickr8k.token.txt" in err


@pytest.mark.skipif(shared_flickr8k() is None, reason="../shared/flickr8k (real Flickr8k captions) absent")
def test_real_flickr8k_original_files_and_their_karpathy_json_agree(tmp_path):
    shared = shared_flickr8k()
    karpathy_from_original(shared, tmp_path / "dataset_flickr8k.json")
    a = load_corpus(shared, require_images=False)
    b = load_corpus(tmp_path, require_images=False)
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert a.splits == b.splits and a.captions == b.captions


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.slow
@pytest.mark.parametrize("config, writer", [("coco.yaml", "coco"), ("flickr30k.yaml", "flickr30k")])
def test_dataset_configs_train_on_their_layout(config, writer, coco_root, tmp_path, capsys, monkeypatch):
    """``python train.py --config configs/<dataset>.yaml --data.root DIR`` on generated data (tiny model)."""
    from showtell.train import main

    monkeypatch.setattr("showtell.metrics.scores.meteor", lambda hypotheses, references: None)  # no JVM start
    root = coco_root if writer == "coco" else write_flickr30k(tmp_path / "flickr30k")
    args = ["--config", str(REPO / "configs" / config), "--data.root", str(root),
            "--model.encoder", "resnet18", "--model.weights", "null", "--data.image_size", "32",
            "--model.embed_size", "16", "--model.hidden_size", "16", "--data.batch_size", "16",
            "--data.num_workers", "0", "--data.progress", "false", "--data.min_count", "1",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.accelerator", "cpu",
            "--trainer.precision", "32-true", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs")]
    metrics = main(args)
    out = capsys.readouterr().out
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    sizes = "18/4/4" if writer == "coco" else "8/3/3"
    assert f"showtell: karpathy data, {sizes} train/val/test images" in out
    assert "run folder:" in out
