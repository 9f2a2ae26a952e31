"""The offline shapes demo: Kaggle layout, determinism, splits, safe (re)generation, CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _fixtures import write_original
from PIL import Image

from showtell.data import synthetic
from showtell.data.layouts import SPLIT_FILES
from showtell.data.lookalike import caption_lengths, flickr8k_split_sizes, generate_flickr8k_like, synthetic_captions
from showtell.data.sources import load_corpus
from showtell.data.synthetic import captions_for, draw_scene, generate_demo, random_scene
from showtell.demo import main
from showtell.vocab import tokenize

NUM_IMAGES, IMAGE_SIZE = 40, 64


def _generate(root: Path, seed: int = 0, **kwargs) -> Path:
    return generate_demo(root, num_images=NUM_IMAGES, seed=seed, image_size=IMAGE_SIZE, progress=False, **kwargs)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo") / "demo")


def test_kaggle_layout_and_captions(demo_root):
    assert (demo_root / "captions.txt").read_text().splitlines()[0] == "image,caption"
    rows = _rows(demo_root)
    assert len(rows) == 5 * NUM_IMAGES
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row["caption"])
    assert sorted(by_image) == sorted(p.name for p in (demo_root / "Images").iterdir())
    for caps in by_image.values():
        assert len(caps) == 5 and len(set(caps)) == 5  # five different captions per image
        assert len({tokenize(c)[0] for c in caps}) == 5  # one template each: five different first words


def test_commas_are_quoted(demo_root):
    text = (demo_root / "captions.txt").read_text()
    with_comma = [row["caption"] for row in _rows(demo_root) if "," in row["caption"]]
    assert with_comma, "some captions must contain commas to exercise the CSV parser"
    assert f'"{with_comma[0]}"' in text


def test_images_are_rgb_jpegs_of_the_requested_size(demo_root):
    paths = sorted((demo_root / "Images").iterdir())
    assert len(paths) == NUM_IMAGES
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))


def test_splits_are_disjoint_cover_all_images_75_12_12(demo_root):
    splits = {key: (demo_root / name).read_text().split() for key, name in SPLIT_FILES.items()}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [30, 5, 5]
    everything = [n for names in splits.values() for n in names]
    assert len(set(everything)) == len(everything)
    assert set(everything) == {row["image"] for row in _rows(demo_root)}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, demo_root):
    again = _generate(tmp_path / "again")
    assert _files(again) == _files(demo_root)
    other = _generate(tmp_path / "other", seed=1)
    assert (other / "captions.txt").read_bytes() != (demo_root / "captions.txt").read_bytes()
    assert (other / "Flickr_8k.testImages.txt").read_text() != (demo_root / "Flickr_8k.testImages.txt").read_text()


def test_captions_are_a_function_of_the_drawn_scene(demo_root):
    rows = _rows(demo_root)
    for i in (0, 7, 39):
        scene = random_scene(np.random.default_rng([0, 0, i]))  # the per-image stream generate_demo uses
        assert [r["caption"] for r in rows[5 * i:5 * i + 5]] == captions_for(scene)


@pytest.mark.parametrize("kind", synthetic.KINDS)
@pytest.mark.parametrize("image_size", [64, 128])
def test_shapes_never_overlap_or_leave_the_image(kind, image_size):
    for layout in [("left", "middle", "right"), ("top", "bottom")]:
        masks = []  # pixels at least half covered by each shape, drawn alone
        for position in layout:
            pixels = np.asarray(draw_scene([synthetic.Shape(kind, "red", "large", position)], image_size)).astype(int)
            difference = np.abs(pixels - np.array(synthetic.BACKGROUND)).sum(-1)  # (H, W)
            masks.append(difference > 0.5 * np.abs(np.array(synthetic.COLOURS["red"]) - synthetic.BACKGROUND).sum())
        for mask in masks:
            assert mask.any() and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert (np.sum(masks, axis=0) <= 1).all(), f"large {kind}s overlap in layout {layout}"


def test_rerun_returns_without_regenerating(tmp_path, monkeypatch):
    root = _generate(tmp_path / "demo")
    stamps = {p: p.stat().st_mtime_ns for p in [root / "captions.txt", root / synthetic.MARKER]}
    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "_write", lambda *args: pytest.fail("a complete demo was generated again"))
        assert _generate(root) == root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert _generate(root, overwrite=True) == root
    assert (root / synthetic.MARKER).stat().st_mtime_ns != stamps[root / synthetic.MARKER]


def test_other_parameters_regenerate(tmp_path):
    root = _generate(tmp_path / "demo")
    _generate(root, seed=3)
    assert json.loads((root / synthetic.MARKER).read_text())["seed"] == 3
    assert _rows(root) != _rows(_generate(tmp_path / "seed0"))


def test_incomplete_folder_is_regenerated(tmp_path):
    root = _generate(tmp_path / "demo")
    expected = _files(root)
    (root / synthetic.MARKER).unlink()  # as if the run had died before finishing
    next(iter((root / "Images").iterdir())).unlink()
    (root / "captions.txt").write_text("image,caption\n")
    assert synthetic.is_complete(root, NUM_IMAGES, 0, IMAGE_SIZE) is False
    _generate(root)
    assert _files(root) == expected


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(folder: Path, *args) -> None:
        (folder / "Images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert synthetic.is_complete(_generate(tmp_path / "demo"), NUM_IMAGES, 0, IMAGE_SIZE)


def test_empty_folder_is_used(tmp_path):
    (tmp_path / "demo").mkdir()
    assert synthetic.is_complete(_generate(tmp_path / "demo"), NUM_IMAGES, 0, IMAGE_SIZE)


@pytest.mark.parametrize("content", ["notes.txt", "Images/1000268201_693b08cb0e.jpg"])
def test_refuses_to_clobber_a_folder_that_is_not_a_demo(tmp_path, content):
    root = tmp_path / "flickr8k"
    (root / content).parent.mkdir(parents=True, exist_ok=True)
    (root / content).write_text("precious")
    (root / "captions.txt").write_text("image,caption\n")
    with pytest.raises(FileExistsError, match="not a showtell demo folder"):
        _generate(root, overwrite=True)
    assert (root / content).read_text() == "precious"


def test_bad_arguments_raise_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        generate_demo(tmp_path / "d", num_images=3, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        generate_demo(tmp_path / "d", num_images=8, image_size=8, progress=False)


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    main(["--root", str(root), "--num_images", "16", "--image_size", "48", "--seed", "2", "--no_progress"])
    out = capsys.readouterr().out
    assert str(root) in out and "16 images" in out and "80 captions" in out and "12/2/2" in out
    main(["--root", str(root), "--num_images", "16", "--image_size", "48", "--seed", "2", "--no_progress"])
    assert "reused" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path / "mine"), "--num_images", "16", "--no_progress"])
    assert exit_info.value.code == 2
    assert "not a showtell demo folder" in capsys.readouterr().err


def test_sources_reads_the_demo_as_kaggle_with_its_split_files(demo_root):
    from showtell.data.locate import detect_format
    from showtell.data.sources import load_corpus

    assert detect_format(demo_root) == "kaggle"
    corpus = load_corpus(demo_root, format="kaggle")
    assert corpus.format == "kaggle"
    for key, name in SPLIT_FILES.items():
        assert corpus.splits[key] == sorted((demo_root / name).read_text().split())
    rows = _rows(demo_root)
    assert sum(len(c) for c in corpus.captions.values()) == len(rows) == 5 * NUM_IMAGES
    assert corpus.captions[rows[0]["image"]][0] == rows[0]["caption"]


# ------------------------------------------------------------------------------------ Flickr8k-shaped data
def test_synthetic_captions_are_flickr8k_shaped():
    captions = synthetic_captions(8091, seed=0)
    assert len(captions) == 8091 and all(len(c) == 5 for c in captions)
    lengths = [len(tokenize(c)) for per_image in captions for c in per_image]
    assert abs(sum(lengths) / len(lengths) - 11.8) < 0.3
    assert max(lengths) == 38 and 1 <= lengths.count(1) <= 100
    counts = Counter(w for per_image in captions[:6000] for c in per_image for w in tokenize(c))
    assert 2700 <= sum(n >= 5 for n in counts.values()) <= 3300
    assert synthetic_captions(50, seed=0) == synthetic_captions(50, seed=0) != synthetic_captions(50, seed=1)


def test_caption_lengths_are_copied_from_a_real_caption_file(tmp_path):
    real = {f"{i}.jpg": ["A dog runs .", "A dog , brown and white , runs on the grass ."] for i in range(10)}
    write_original(tmp_path, real, images={})
    real_lengths = caption_lengths(tmp_path / "Flickr8k_text" / "Flickr8k.token.txt")
    assert sorted(real_lengths) == [3] * 10 + [9] * 10  # tokenize: punctuation is no word
    lengths = Counter(len(tokenize(c)) for per_image in synthetic_captions(400, 0, real_lengths) for c in per_image)
    assert set(lengths) == {3, 9} and 0.4 < lengths[3] / 2000 < 0.6


def test_flickr8k_split_sizes():
    assert flickr8k_split_sizes(8091) == {"train": 6000, "val": 1000, "test": 1000}
    for n in (8, 9, 33, 1000):
        sizes = flickr8k_split_sizes(n)
        assert min(sizes.values()) >= 1 and sum(sizes.values()) <= n


def test_flickr8k_like_parses_as_kaggle_is_reused_and_follows_its_lengths(tmp_path):
    root = tmp_path / "synth"
    assert generate_flickr8k_like(root, 16, 40, 30, seed=0) is True
    corpus = load_corpus(root)
    assert corpus.format == "kaggle" and len(corpus.captions) == 16
    assert {k: len(v) for k, v in corpus.splits.items()} == flickr8k_split_sizes(16)
    assert all(len(c) == 5 for c in corpus.captions.values())
    with Image.open(next((root / "Images").iterdir())) as image:
        assert (image.format, image.size) == ("JPEG", (40, 30))
    assert generate_flickr8k_like(root, 16, 40, 30, seed=0) is False  # same parameters: reused
    write_original(tmp_path / "real", {"a.jpg": ["One two three four five six seven ."]}, images={})
    token_file = tmp_path / "real" / "Flickr8k_text" / "Flickr8k.token.txt"
    assert generate_flickr8k_like(root, 16, 40, 30, seed=0, lengths_from=token_file) is True  # other lengths
    assert {len(tokenize(c)) for caps in load_corpus(root).captions.values() for c in caps} == {7}
    with pytest.raises(ValueError, match="at least 8"):
        generate_flickr8k_like(tmp_path / "small", 4, 40, 30)
