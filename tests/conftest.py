"""Shared fixtures: tiny generated datasets, the optional real Flickr8k folder, quiet CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = "configs/demo.yaml"  # the README quickstart's demo config (tests/test_packaging.py checks)


def shared_flickr8k() -> Path | None:
    """The read-only real Flickr8k captions/features (../shared/flickr8k), or None when absent."""
    root = Path(os.environ.get("SHOWTELL_SHARED", REPO.parent / "shared")) / "flickr8k"
    return root if (root / "Flickr8k.token.txt").is_file() else None


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    torch.set_num_threads(1)  # tiny models gain nothing from more; robust on a loaded 2-core machine
    os.environ.setdefault("WANDB_MODE", "disabled")  # tests that exercise wandb set their own mode
    os.environ.setdefault("WANDB_SILENT", "true")
    yield


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A tiny synthetic shapes dataset in the Kaggle layout, shared by the tests of one session."""
    from showtell.data.synthetic import generate_demo

    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, num_images=48, seed=0, image_size=64, progress=False)
    return root


@pytest.fixture
def flickr8k_shared() -> Path:
    root = shared_flickr8k()
    if root is None:
        pytest.skip("../shared/flickr8k (real Flickr8k captions) is not present")
    return root


def tiny_data_kwargs(root: Path) -> dict:
    """Data module arguments for a tiny, fast CPU run on the demo fixture."""
    return dict(root=str(root), encoder="resnet18", weights=None, image_size=64, batch_size=16, num_workers=0,
                min_count=1, progress=False)


def tiny_model_kwargs() -> dict:
    return dict(encoder="resnet18", weights=None, embed_size=32, hidden_size=32, dropout=0.0, lr=3e-3,
                test_beam_size=2, max_caption_len=12)


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_root, tmp_path_factory) -> Path:
    """A checkpoint of a tiny model trained for a few steps on the demo fixture (random frozen resnet18)."""
    import lightning as L

    from showtell.data.datamodule import Flickr8kDataModule
    from showtell.training.module import ShowTellModule

    out = tmp_path_factory.mktemp("tiny_run")
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_dir=str(out / "cache"))
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs())
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out), num_sanity_val_steps=0,
                        enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    path = out / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path
