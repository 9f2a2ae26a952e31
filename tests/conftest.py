"""Shared fixtures: tiny generated datasets, the optional real Flickr8k folder, quiet CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_flickr8k() -> Path | None:
    """The read-only real Flickr8k captions/features (../shared/flickr8k), or None when absent."""
    root = Path(os.environ.get("SHOWTELL_SHARED", REPO.parent / "shared")) / "flickr8k"
    return root if (root / "Flickr8k.token.txt").is_file() else None


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    torch.set_num_threads(2)
    os.environ.setdefault("WANDB_MODE", "disabled")  # tests that exercise wandb set their own mode
    os.environ.setdefault("WANDB_SILENT", "true")
    yield


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A tiny synthetic shapes dataset in the Kaggle layout, shared by the tests of one session."""
    from showtell.demo import generate_demo

    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, num_images=48, seed=0, image_size=64, progress=False)
    return root


@pytest.fixture
def flickr8k_shared() -> Path:
    root = shared_flickr8k()
    if root is None:
        pytest.skip("../shared/flickr8k (real Flickr8k captions) is not present")
    return root
