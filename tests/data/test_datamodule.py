"""Flickr8kDataModule: batches, splits, vocabulary, feature cache, bring-your-own features, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_data_kwargs

from showtell.data.datamodule import Flickr8kDataModule
from showtell.data.dataset import Batch
from showtell.data.features import load_features, save_features
from showtell.errors import DatasetError
from showtell.vocab import END_ID, PAD_ID, START_ID, tokenize


def _dm(root, tmp_path, **kw) -> Flickr8kDataModule:
    kwargs = tiny_data_kwargs(root) | {"cache_dir": str(tmp_path / "cache")} | kw
    dm = Flickr8kDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("cache", [False, True])
def test_batches_shapes_and_padding(demo_root, tmp_path, cache):
    dm = _dm(demo_root, tmp_path, cache_features=cache)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch)
    B = len(batch.lengths)
    assert B == 16
    if cache:
        assert batch.images.shape == (B, 512)  # resnet18 pooled features
    else:
        assert batch.images.shape == (B, 3, 64, 64)
    assert batch.captions.shape == (B, int(batch.lengths.max()))
    assert (batch.captions[:, 0] == START_ID).all()
    for row, length in zip(batch.captions, batch.lengths.tolist()):
        assert row[length - 1] == END_ID
        assert (row[length:] == PAD_ID).all() and (row[:length] != PAD_ID).all()
    assert len(batch.references) == len(batch.image_ids) == B
    assert batch.indices.shape == (B,)


def test_train_per_caption_eval_per_image(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    train, val = dm.datasets["train"], dm.datasets["val"]
    n_train = len(dm.corpus.splits["train"])
    assert len(train) == 5 * n_train  # one sample per (image, caption)
    assert len(val) == len(dm.corpus.splits["val"])  # one sample per image
    batch = next(iter(dm.val_dataloader()))
    for name, refs in zip(batch.image_ids, batch.references):
        assert refs == [tokenize(c) for c in dm.corpus.captions[name]]
        assert len(refs) == 5
    # every train caption appears exactly once per epoch
    seen = [tuple(i) for b in dm.train_dataloader() for i in b.captions.tolist()]
    assert len(seen) == len(train)


def test_splits_disjoint_and_vocab_from_train_only(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    test_image = (root / "Flickr_8k.testImages.txt").read_text().split()[0]
    lines = (root / "captions.txt").read_text().splitlines()
    lines = [f"{line.split(',')[0]},a zebrafish juggles quietly" if line.startswith(test_image) else line
             for line in lines]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    dm = _dm(root, tmp_path, cache_features=False)
    splits = dm.corpus.splits
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["train"]) & set(splits["test"])
    assert "zebrafish" not in dm.vocab and "juggles" not in dm.vocab  # test-only words never leak
    assert "circle" in dm.vocab
    assert dm.vocab_size == len(dm.vocab)


def test_max_len_truncates_training_captions(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path, max_len=3)
    assert int(dm.datasets["train"].lengths.max()) == 3 + 2  # words + <start> + <end>
    assert dm.datasets["train"].truncated > 0


def test_feature_cache_hit_miss_and_invalidation(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    cache_file = dm.cache_file()
    assert cache_file.is_file()
    stamp = cache_file.stat().st_mtime_ns
    again = _dm(demo_root, tmp_path)  # same key: hit, no recompute
    assert again.cache_file() == cache_file and cache_file.stat().st_mtime_ns == stamp
    other = _dm(demo_root, tmp_path, image_size=48)  # transform changes -> new key -> recomputed
    assert other.cache_file() != cache_file and other.cache_file().is_file()
    assert other.datasets["train"].features.features.shape[1] == 512


def test_partial_cache_file_is_never_used(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    cache_file = dm.cache_file()
    good = load_features(cache_file).features.clone()
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # a torn write from an interrupted run
    again = _dm(demo_root, tmp_path)
    assert torch.equal(again.datasets["train"].features.features, good)
    assert not list(cache_file.parent.glob("*.tmp.npz"))  # no temporary files left behind


def test_cached_features_equal_on_the_fly(demo_root, tmp_path):
    from showtell.model.backbones import build_backbone

    dm = _dm(demo_root, tmp_path)
    images = _dm(demo_root, tmp_path, cache_features=False)
    backbone, _ = build_backbone("resnet18", None)
    backbone.eval()
    batch = images.datasets["val"].__getitems__(list(range(4)))
    with torch.no_grad():
        live = backbone(batch.images)
    cached = dm.datasets["val"].__getitems__(list(range(4))).images.float()
    torch.testing.assert_close(cached, live, atol=2e-2, rtol=1e-2)  # float16 storage


def test_same_loss_from_cached_features_and_images(demo_root, tmp_path):
    from showtell.training.module import ShowTellModule

    cached = _dm(demo_root, tmp_path)
    images = _dm(demo_root, tmp_path, cache_features=False)
    torch.manual_seed(0)
    model = ShowTellModule(vocab_size=cached.vocab_size, encoder="resnet18", weights=None, embed_size=16,
                           hidden_size=16, dropout=0.0).eval()
    idx = list(range(8))
    with torch.no_grad():
        a = model._loss(cached.datasets["train"].__getitems__(idx))
        b = model._loss(images.datasets["train"].__getitems__(idx))
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_bring_your_own_features_with_missing_images(demo_root, tmp_path, capsys):
    root = tmp_path / "captions_only"
    root.mkdir()
    for name in ["captions.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt",
                 "Flickr_8k.testImages.txt"]:
        shutil.copy(demo_root / name, root / name)  # no Images/ folder at all
    names = sorted((demo_root / "Images").iterdir())
    names = [p.name for p in names]
    dropped = names[:3]
    kept = names[3:]
    features = np.random.default_rng(0).standard_normal((len(kept), 24)).astype(np.float16)
    save_features(tmp_path / "mine.npz", kept, features)
    dm = _dm(root, tmp_path, features=str(tmp_path / "mine.npz"))
    assert dm.feature_dim == 24
    served = {n for d in dm.datasets.values() for n in d.names}
    assert served == set(kept) & served and not served & set(dropped)
    out = capsys.readouterr().out
    assert "missing from the features file" in out and dropped[0] in out
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape[1] == 24 and batch.images.dtype == torch.float16


def test_features_file_errors(demo_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        _dm(demo_root, tmp_path, features=str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "bad.npz", feats=np.zeros((2, 3)))
    with pytest.raises(DatasetError, match="'names' and 'features'"):
        _dm(demo_root, tmp_path, features=str(tmp_path / "bad.npz"))
    save_features(tmp_path / "other.npz", ["x.jpg", "y.jpg"], np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match="do the names match"):
        _dm(demo_root, tmp_path, features=str(tmp_path / "other.npz"))


@pytest.mark.parametrize("make", ["missing", "empty", "unknown"])
def test_bad_root_gives_one_clear_error(tmp_path, make):
    root = tmp_path / "flickr"
    if make != "missing":
        root.mkdir()
    if make == "unknown":
        (root / "notes.txt").write_text("hello")
    dm = Flickr8kDataModule(root=str(root), progress=False)
    with pytest.raises(DatasetError) as err:
        _ = dm.vocab_size
    message = str(err.value)
    assert "\n" not in message
    assert "python -m showtell.demo" in message and "adityajn105/flickr8k" in message


def test_demo_option_generates_into_root(tmp_path):
    dm = Flickr8kDataModule(root=str(tmp_path / "demo"), demo=True, demo_images=16, demo_image_size=32,
                            encoder="resnet18", weights=None, image_size=32, num_workers=0, min_count=1,
                            progress=False, cache_dir=str(tmp_path / "cache"))
    assert dm.vocab_size > 10
    assert (tmp_path / "demo" / "captions.txt").is_file()
    assert sum(len(v) for v in dm.corpus.splits.values()) == 16


def test_augment_and_finetune_switch_back_to_images(demo_root, tmp_path, capsys):
    dm = _dm(demo_root, tmp_path, augment=True)
    assert dm.datasets["train"].features is None
    assert "augment" in capsys.readouterr().out
    dm = _dm(demo_root, tmp_path, frozen_encoder=False)
    assert not dm.uses_cache and dm.datasets["train"].features is None
    assert "fine-tuned" in capsys.readouterr().out


def test_image_dir_option_and_image_folder(demo_root, tmp_path):
    from showtell.errors import OptionError

    root = tmp_path / "captions_only"
    root.mkdir()
    for path in demo_root.iterdir():
        if path.is_file():
            shutil.copy(path, root / path.name)
    elsewhere = tmp_path / "pictures"
    shutil.copytree(demo_root / "Images", elsewhere)
    dm = _dm(root, tmp_path, image_dir=str(elsewhere), cache_features=False)
    assert dm.image_folder == elsewhere
    name = dm.datasets["val"].names[0]
    assert dm.image_path(name) == elsewhere / name and dm.image_path(name).is_file()
    assert dm.datasets["val"].__getitems__([0]).images.shape == (1, 3, 64, 64)  # read from the given folder
    assert _dm(demo_root, tmp_path).image_folder == demo_root / "Images"  # found in root
    with pytest.raises(OptionError, match=r"^--data.image_dir .*nowhere: no such folder"):
        Flickr8kDataModule(root=str(root), image_dir=str(tmp_path / "nowhere"))
    # bring-your-own features: the image folder when there is one, else None (never an error)
    names = sorted(p.name for p in elsewhere.iterdir())
    save_features(tmp_path / "f.npz", names, np.zeros((len(names), 8), np.float16))
    assert _dm(root, tmp_path, features=str(tmp_path / "f.npz")).image_folder is None
    assert _dm(demo_root, tmp_path, features=str(tmp_path / "f.npz")).image_folder == demo_root / "Images"
    with_dir = _dm(root, tmp_path, features=str(tmp_path / "f.npz"), image_dir=str(elsewhere))
    assert with_dir.image_folder == elsewhere and with_dir.image_path(name) == elsewhere / name


def test_building_the_feature_cache_leaves_the_random_streams_as_they_were(demo_root, tmp_path):
    """A run that builds the cache must train with the random numbers of every later run, which reads it: building
    the (randomly initialised) CNN and iterating the extraction loader draw from torch's generator otherwise."""
    dm = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    dm.prepare_data()  # builds the cache
    assert list((tmp_path / "cache").glob("features_*.npz")), "the cache was not built"
    assert torch.equal(torch.get_rng_state(), before)


def test_a_resumed_fit_starts_from_its_own_epochs_batch_order(demo_root, tmp_path):
    """Lightning creates a fit's first train iterator before calling set_epoch: the sampler must already hold
    the trainer's epoch (a fit resumed at epoch 3 must not replay epoch 0's order)."""
    from types import SimpleNamespace

    dm = _dm(demo_root, tmp_path, cache_features=True)
    orders = {}
    for epoch in (0, 3):
        # Resumed from the end of epoch 2: Lightning's fit loop has processed 3 epochs and sets epoch 3 next,
        # while trainer.current_epoch still says 2.
        progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
        dm.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=max(epoch - 1, 0), overfit_batches=0,
                                     fit_loop=SimpleNamespace(epoch_progress=progress))
        orders[epoch] = [batch.indices.tolist() for batch in dm.train_dataloader()]
    reference = dm.train_sampler()
    reference.set_epoch(3)
    assert orders[3] == reference.epoch_batches() != orders[0]
