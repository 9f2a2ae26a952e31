"""showtell.layouts: the seeded split, the Kaggle writer (read back by sources) and atomic dataset folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from showtell.data.layouts import SPLIT_FILES, seeded_split
from showtell.data.sources import load_corpus
from showtell.data.writers import has_marker, write_dataset_folder, write_kaggle, write_split_files


@pytest.mark.parametrize("num_images, sizes", [(8, (6, 1, 1)), (37, (29, 4, 4)), (3000, (2250, 375, 375))])
def test_default_split_is_75_12_12_by_image(num_images, sizes):
    names = [f"{i:05d}.jpg" for i in range(num_images)]
    split = seeded_split(names, seed=0)
    assert tuple(len(split[k]) for k in SPLIT_FILES) == sizes
    assert sorted(n for part in split.values() for n in part) == names
    assert all(part == sorted(part) for part in split.values())


def test_split_depends_on_seed_not_on_name_order():
    names = [f"{i}.jpg" for i in range(40)]
    assert seeded_split(names, 3) == seeded_split(reversed(names), 3) != seeded_split(names, 4)


def test_explicit_sizes_leave_the_rest_in_no_split():
    names = [f"{i}.jpg" for i in range(20)]
    split = seeded_split(names, 0, {"train": 10, "val": 3, "test": 2})
    assert [len(split[k]) for k in SPLIT_FILES] == [10, 3, 2]
    assert len({n for part in split.values() for n in part}) == 15


def test_kaggle_captions_quote_commas_and_quotes_and_read_back(tmp_path):
    captions = {f"{i}.jpg": [f"A dog, number {i} .", f'A sign says "stop {i}" .', "Plain ."] for i in range(8)}
    splits = seeded_split(captions, 0)
    write_kaggle(tmp_path, captions, splits)
    text = (tmp_path / "captions.txt").read_text(encoding="utf-8")
    assert text.startswith("image,caption\n") and '0.jpg,"A dog, number 0 ."\n' in text
    with open(tmp_path / "captions.txt", newline="", encoding="utf-8") as f:
        assert [(r["image"], r["caption"]) for r in csv.DictReader(f)] == [
            (name, c) for name, caps in captions.items() for c in caps]
    corpus = load_corpus(tmp_path, require_images=False)
    assert corpus.format == "kaggle" and corpus.captions == captions and corpus.splits == splits


def test_split_files_missing_keys_are_empty(tmp_path):
    write_split_files(tmp_path, {"train": ["b.jpg", "a.jpg"]})
    assert (tmp_path / SPLIT_FILES["train"]).read_text() == "b.jpg\na.jpg\n"
    assert (tmp_path / SPLIT_FILES["val"]).read_text() == (tmp_path / SPLIT_FILES["test"]).read_text() == ""


def _fill(folder: Path) -> None:
    (folder / "data.txt").write_text("new")


def test_dataset_folder_replaces_root_with_marker_last(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    assert write_dataset_folder(root, _fill, ".marker.json", {"n": 1}) is True
    assert sorted(p.name for p in root.iterdir()) == [".marker.json", "data.txt"]
    assert has_marker(root, ".marker.json", {"n": 1}) and not has_marker(root, ".marker.json", {"n": 2})
    assert json.loads((root / ".marker.json").read_text()) == {"n": 1}
    assert list(tmp_path.iterdir()) == [root]  # no partial folder left


def test_dataset_folder_keeps_one_finished_meanwhile(tmp_path):
    root = tmp_path / "data"

    def finished_by_another_process(folder: Path) -> None:
        _fill(folder)
        root.mkdir()
        (root / ".marker.json").write_text(json.dumps({"n": 1}))

    assert write_dataset_folder(root, finished_by_another_process, ".marker.json", {"n": 1},
                                keep_if=lambda r: has_marker(r, ".marker.json", {"n": 1})) is False
    assert sorted(p.name for p in root.iterdir()) == [".marker.json"] and list(tmp_path.iterdir()) == [root]


def test_interrupted_dataset_folder_leaves_nothing(tmp_path):
    def interrupted(folder: Path) -> None:
        _fill(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset_folder(tmp_path / "data", interrupted, ".marker.json", {"n": 1})
    assert list(tmp_path.iterdir()) == []
