"""showtell.sources: the three Flickr8k layouts, their quirks, splits and the errors on bad input."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from _fixtures import (
    make_corrupt,
    make_jpeg,
    make_truncated_jpeg,
    quirky_dataset,
    simple_captions,
    write_kaggle,
    write_karpathy,
    write_original,
)

from showtell.data import formats, sources
from showtell.data.formats import (
    CORRUPT_IMAGE,
    DUPLICATE_CAPTION,
    EMPTY_CAPTION,
    MALFORMED_LINE,
    NO_IMAGE_FILE,
    NO_SPLIT,
    ONE_WORD_CAPTION,
    OTHER_THAN_FIVE,
    REPEATED_SPLIT_NAME,
    SPLIT_NAME_SKIPPED,
    SPLIT_NAME_WITHOUT_CAPTIONS,
    UNCAPTIONED_IMAGE,
    SkipReport,
    read_caption_file,
)
from showtell.data.layouts import seeded_split
from showtell.data.locate import detect_format
from showtell.data.sources import load_corpus
from showtell.errors import DatasetError
from showtell.files import image_is_readable

SHARED = Path(os.environ.get("SHOWTELL_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "flickr8k"
JPG1 = "2258277193_586949ec62.jpg.1"
USABLE = {*simple_captions(10), "quoted.jpg", "gray.jpg", "cmyk.jpg", "rgba.jpg", "four.jpg", "dup.jpg",
          "oneword.jpg", "empty.jpg"}


def write_quirky(root: Path, layout: str) -> Path:
    captions, splits, images = quirky_dataset()
    writers = {"kaggle": write_kaggle, "original": write_original, "karpathy": write_karpathy}
    return writers[layout](root, captions, splits, images)


@pytest.fixture(scope="module")
def quirky_corpora(tmp_path_factory) -> dict[str, sources.CaptionCorpus]:
    """The quirky dataset written in each layout and loaded back."""
    root = tmp_path_factory.mktemp("quirky")
    return {layout: load_corpus(write_quirky(root / layout, layout))
            for layout in ("kaggle", "original", "karpathy")}


# ---------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", ["kaggle", "original", "karpathy"])
def test_each_layout_parsed_with_its_quirks(quirky_corpora, layout):
    corpus = quirky_corpora[layout]
    report = corpus.report
    assert corpus.format == layout
    assert set(corpus.captions) == USABLE
    assert {name for names in corpus.splits.values() for name in names} == USABLE
    assert corpus.image_dir is not None and (corpus.image_dir / "img_000.jpg").is_file()
    # quoted commas and embedded quotes survive intact
    assert "A dog, brown and white, runs ." in corpus.captions["quoted.jpg"]
    assert 'A man says "hi, there" .' in corpus.captions["quoted.jpg"]
    # grayscale, CMYK and PNG-inside-.jpg images are valid; corrupt and truncated ones are not
    assert {"gray.jpg", "cmyk.jpg", "rgba.jpg"} <= set(corpus.captions)
    assert sorted(report.names(CORRUPT_IMAGE)) == ["corrupt.jpg", "truncated.jpg"]
    assert report.names(NO_IMAGE_FILE).count("missing.jpg") == 5
    assert "nocaps.jpg" in report.names(UNCAPTIONED_IMAGE)
    # 4 captions kept and noted; duplicate dropped; one-word kept; empty dropped
    assert len(corpus.captions["four.jpg"]) == 4
    assert report.names(DUPLICATE_CAPTION) == ["dup.jpg"] and len(corpus.captions["dup.jpg"]) == 5
    assert report.names(ONE_WORD_CAPTION) == ["oneword.jpg"] and "Dog." in corpus.captions["oneword.jpg"]
    assert report.names(EMPTY_CAPTION) == ["empty.jpg"] and len(corpus.captions["empty.jpg"]) == 4
    assert sorted(report.names(OTHER_THAN_FIVE)) == ["empty.jpg", "four.jpg"]
    assert report.names(SPLIT_NAME_WITHOUT_CAPTIONS) == ["unknown.jpg"]
    assert sorted(report.names(SPLIT_NAME_SKIPPED)) == ["corrupt.jpg", "missing.jpg", "truncated.jpg"]
    if layout != "karpathy":  # the json format cannot express these two quirks
        assert report.names(NO_IMAGE_FILE).count(JPG1) == 5
        assert report.names(NO_SPLIT) == ["nosplit.jpg"]


def test_kaggle_csv_quoting_written_by_hand(tmp_path):
    (tmp_path / "captions.txt").write_text(
        'image,caption\n'
        'a.jpg,A dog runs .\n'
        'a.jpg,"A dog, brown, runs ."\n'
        'a.jpg,"A sign says ""stop"" ."\n'
        'a.jpg,"He said ""hi, you"" , then left ."\n'
        'a.jpg,A dog, unquoted comma\n'          # 3 columns: malformed, line 6
        '\n'
        'a.jpg,Last one .\n')
    captions = formats._parse_kaggle(tmp_path / "captions.txt", report := SkipReport()).entries
    assert [c for _, c in captions] == ["A dog runs .", "A dog, brown, runs .", 'A sign says "stop" .',
                                        'He said "hi, you" , then left .', "Last one ."]
    assert report.names(MALFORMED_LINE) == ["captions.txt line 6"]


def test_kaggle_unclosed_quote_is_reported_not_swallowed(tmp_path):
    (tmp_path / "captions.txt").write_text('image,caption\na.jpg,"Open quote .\nb.jpg,Fine .\nc.jpg,Ok .\n')
    entries = formats._parse_kaggle(tmp_path / "captions.txt", report := SkipReport()).entries
    assert entries == [] and report.names(MALFORMED_LINE) == ["captions.txt line 2-4"]


def test_token_file_malformed_lines_reported_with_line_numbers(tmp_path):
    captions = simple_captions(8)
    write_original(tmp_path, captions, images={})
    token = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    with token.open("a") as f:
        f.write("img_000.jpg#5 no tab here\n\nimg_001.jpg\tno hash\nimg_002.jpg#5\t\n")
    corpus = load_corpus(tmp_path, require_images=False)
    assert corpus.report.names(MALFORMED_LINE) == ["Flickr8k.token.txt line 41", "Flickr8k.token.txt line 43"]
    assert corpus.report.names(EMPTY_CAPTION) == ["img_002.jpg"]  # "#5<TAB>" with nothing after it
    assert corpus.captions == captions


def test_karpathy_restval_is_train_and_bad_entries_reported(tmp_path):
    captions = simple_captions(8)
    names = sorted(captions)
    splits = {"train": names[:5], "val": names[5:6], "test": names[6:]}
    write_karpathy(tmp_path, captions, splits, restval=names[:2])
    path = tmp_path / "dataset_flickr8k.json"
    data = json.loads(path.read_text())
    data["images"].append({"filename": "x.jpg", "split": "holdout", "sentences": []})
    data["images"][0]["sentences"].append({"tokens": ["a", "tokens", "only", "caption"]})
    data["images"][0]["sentences"].append({"nothing": 1})
    path.write_text(json.dumps(data))
    corpus = load_corpus(tmp_path)
    assert corpus.splits == splits
    assert corpus.captions[names[0]][-1] == "a tokens only caption"
    assert corpus.report.names(MALFORMED_LINE) == ["dataset_flickr8k.json images[0].sentences[6]",
                                                  "dataset_flickr8k.json images[8]"]


def test_same_data_in_all_layouts_gives_same_corpus(quirky_corpora):
    kaggle, original, karpathy = (quirky_corpora[k] for k in ("kaggle", "original", "karpathy"))
    assert kaggle.captions == original.captions == karpathy.captions
    assert kaggle.splits == original.splits == karpathy.splits
    assert kaggle.report.entries == original.report.entries


def test_kaggle_writer_really_quotes(quirky_corpora):
    text = (quirky_corpora["kaggle"].image_dir.parent / "captions.txt").read_text()
    assert 'quoted.jpg,"A dog, brown and white, runs ."' in text
    assert 'quoted.jpg,"A sign reads ""stop"" ."' in text


@pytest.mark.parametrize("layout, caption_file", [("kaggle", "captions.txt"),
                                                  ("original", "Flickr8k_text/Flickr8k.token.txt"),
                                                  ("karpathy", "dataset_flickr8k.json")])
def test_one_caption_file_read_on_its_own(tmp_path, layout, caption_file):
    captions = simple_captions(3)
    writers = {"kaggle": write_kaggle, "original": write_original, "karpathy": write_karpathy}
    writers[layout](tmp_path, captions, {"train": sorted(captions)}, images={})
    assert read_caption_file(tmp_path / caption_file) == [(n, c) for n, caps in captions.items() for c in caps]


def test_read_caption_file_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a caption file"):
        read_caption_file(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="does not exist"):
        read_caption_file(tmp_path / "captions.txt")


def test_nested_and_alternative_folders(tmp_path):
    captions = simple_captions(8)
    # images directly in Flicker8k_Dataset/, text files at root
    write_original(tmp_path / "a", captions, text_dir=".", image_dir="Flicker8k_Dataset")
    assert load_corpus(tmp_path / "a").image_dir == tmp_path / "a" / "Flicker8k_Dataset"
    # a Kaggle download unzipped into a subfolder of root
    write_kaggle(tmp_path / "b" / "flickr8k", captions)
    corpus = load_corpus(tmp_path / "b")
    assert corpus.format == "kaggle" and corpus.image_dir == tmp_path / "b" / "flickr8k" / "Images"


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "RGBA"])
def test_valid_image_modes_are_readable(tmp_path, mode):
    assert image_is_readable(make_jpeg(tmp_path / "x.jpg", mode=mode))


def test_unreadable_images(tmp_path):
    assert not image_is_readable(make_corrupt(tmp_path / "random.jpg"))
    assert not image_is_readable(make_truncated_jpeg(tmp_path / "truncated.jpg"))
    assert not image_is_readable(tmp_path / "does_not_exist.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert not image_is_readable(tmp_path / "empty.jpg")
    png = make_jpeg(tmp_path / "cut.png", mode="RGBA", size=(32, 32))
    png.write_bytes(png.read_bytes()[:-30])
    assert not image_is_readable(png)


def test_trailing_padding_after_jpeg_end_is_fine(tmp_path):
    path = make_jpeg(tmp_path / "padded.jpg")
    path.write_bytes(path.read_bytes() + b"\x00" * 100 + b"\r\n")
    assert image_is_readable(path)


@pytest.mark.skipif(not (SHARED / "sample_images").is_dir(), reason="shared Flickr8k samples absent")
def test_real_sample_images_pass_and_their_truncations_fail(tmp_path):
    samples = sorted((SHARED / "sample_images").glob("*.jpg"))
    assert samples and all(image_is_readable(p) for p in samples)
    for p in samples[:5]:
        cut = tmp_path / p.name
        cut.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
        assert not image_is_readable(cut)


def test_progress_bar_shown_for_image_scan(tmp_path, monkeypatch, capsys):
    write_kaggle(tmp_path, simple_captions(8))
    monkeypatch.setattr(sources, "_PROGRESS_MIN_FILES", 1)
    load_corpus(tmp_path, progress=True)
    assert "checking images" in capsys.readouterr().err
    load_corpus(tmp_path, progress=False)
    assert "checking images" not in capsys.readouterr().err


def test_require_images_false_needs_no_images(tmp_path):
    captions = simple_captions(8)
    write_kaggle(tmp_path, captions, images={})
    (tmp_path / "Images").rmdir()
    corpus = load_corpus(tmp_path, require_images=False)
    assert corpus.image_dir is None and corpus.captions == captions
    assert not corpus.report.entries


# ------------------------------------------------------------------------------------------------ splits
def test_official_split_files_are_honoured_for_kaggle(tmp_path):
    captions = simple_captions(16)
    names = sorted(captions)
    splits = {"train": names[:10], "val": names[10:13], "test": names[13:]}
    write_kaggle(tmp_path, captions, splits, images={})
    corpus = load_corpus(tmp_path, require_images=False, split_seed=123)
    assert corpus.splits == splits


def test_repeated_split_names_kept_in_first_split(tmp_path):
    captions = simple_captions(8)
    names = sorted(captions)
    write_kaggle(tmp_path, captions, {"train": names[:6], "val": [names[6], names[0]], "test": names[7:]},
                 images={})
    corpus = load_corpus(tmp_path, require_images=False)
    assert names[0] in corpus.splits["train"] and names[0] not in corpus.splits["val"]
    assert corpus.report.names(REPEATED_SPLIT_NAME) == [names[0]]


@pytest.mark.parametrize("num_images, sizes",
                         [(80, (60, 10, 10)), (8000, (6000, 1000, 1000)), (8, (6, 1, 1))])
def test_seeded_split_proportions(num_images, sizes):
    split = seeded_split([f"{i}.jpg" for i in range(num_images)], seed=0)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes


def test_seeded_split_by_image_deterministic_disjoint(tmp_path):
    captions = simple_captions(40)
    write_kaggle(tmp_path, captions, images={})
    a = load_corpus(tmp_path, require_images=False, split_seed=7)
    b = load_corpus(tmp_path, require_images=False, split_seed=7)
    c = load_corpus(tmp_path, require_images=False, split_seed=8)
    assert a.splits == b.splits and a.splits != c.splits
    assert [len(a.splits[k]) for k in ("train", "val", "test")] == [30, 5, 5]
    parts = [set(v) for v in a.splits.values()]
    assert set.union(*parts) == set(captions) and sum(map(len, parts)) == len(captions)
    assert all(v == sorted(v) for v in a.splits.values())
    # the split is of images: order of caption lines does not matter
    shuffled = dict(reversed(list(captions.items())))
    write_kaggle(tmp_path / "shuffled", shuffled, images={})
    assert load_corpus(tmp_path / "shuffled", require_images=False, split_seed=7).splits == a.splits


# ------------------------------------------------------------------------------------------ format choice
def test_detection_priority_and_override(tmp_path):
    captions = simple_captions(8)
    names = sorted(captions)
    splits = {"train": names[:6], "val": names[6:7], "test": names[7:]}
    write_kaggle(tmp_path, captions)
    assert detect_format(tmp_path) == "kaggle"
    write_original(tmp_path, captions, splits, images={})
    assert detect_format(tmp_path) == "original"
    write_karpathy(tmp_path / "karpathy", captions, splits, images={})
    assert detect_format(tmp_path) == "karpathy"
    assert load_corpus(tmp_path, "kaggle").format == "kaggle"
    assert load_corpus(tmp_path, "original").format == "original"


def test_wrong_explicit_format(tmp_path):
    write_kaggle(tmp_path, simple_captions(8))
    with pytest.raises(DatasetError, match=r"format='original' expects Flickr8k\.token\.txt.*captions\.txt"):
        load_corpus(tmp_path, "original")
    with pytest.raises(DatasetError, match=r"expects dataset_flickr8k\.json"):
        load_corpus(tmp_path, "karpathy")
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'"):
        load_corpus(tmp_path, "coco")


# --------------------------------------------------------------------------------------------- bad input
def _assert_helpful(message: str) -> None:
    for words in ("captions.txt", "Flickr8k.token.txt", "dataset_flickr8k.json",
                  "https://www.kaggle.com/datasets/adityajn105/flickr8k", "python -m showtell.demo --root"):
        assert words in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["missing", "empty", "unrecognised", "file"])
def test_no_dataset_gives_one_helpful_error(tmp_path, case):
    root = tmp_path / "data"
    if case != "missing":
        root.mkdir()
    if case == "unrecognised":
        (root / "notes.txt").write_text("hello")
        (root / "sub").mkdir()
        (root / "sub" / "sub2").mkdir()
        (root / "sub" / "sub2" / "captions.txt").write_text("too deep")
    if case == "file":
        root.rmdir()
        root.write_text("not a folder")
    with pytest.raises(DatasetError, match={"missing": "does not exist", "empty": "is empty",
                                            "unrecognised": "no caption file",
                                            "file": "not a folder"}[case]) as info:
        load_corpus(root)
    _assert_helpful(str(info.value))
    with pytest.raises(DatasetError):
        detect_format(root)


def test_missing_image_folder(tmp_path):
    write_kaggle(tmp_path, simple_captions(8), images={})
    shutil.rmtree(tmp_path / "Images")
    with pytest.raises(DatasetError, match=r"no image folder.*Images/.*Flickr8k_Dataset/.*Flicker8k_Dataset/"
                                           r".*--data\.features"):
        load_corpus(tmp_path)


def test_image_folder_without_images(tmp_path):
    write_kaggle(tmp_path, simple_captions(8), images={})
    with pytest.raises(DatasetError, match="contains no .jpg"):
        load_corpus(tmp_path)


def test_empty_split_after_filtering(tmp_path):
    captions = simple_captions(8)
    names = sorted(captions)
    images = {name: "rgb" for name in names[:7]}
    images[names[7]] = "corrupt"
    write_original(tmp_path, captions, {"train": names[:6], "val": names[6:7], "test": names[7:]}, images)
    with pytest.raises(DatasetError, match=r"the test split has no usable images.*corrupt image files"):
        load_corpus(tmp_path)


def test_no_usable_images_at_all(tmp_path):
    write_kaggle(tmp_path, simple_captions(4), images={"other.jpg": "rgb"})
    with pytest.raises(DatasetError, match=r"none of the 4 images named in .*captions\.txt is usable"):
        load_corpus(tmp_path)


def test_too_few_images_for_a_seeded_split(tmp_path):
    write_kaggle(tmp_path, simple_captions(2), images={})
    with pytest.raises(DatasetError, match="the train split has no usable images"):
        load_corpus(tmp_path, require_images=False)


def test_partial_split_files(tmp_path):
    captions = simple_captions(8)
    write_kaggle(tmp_path, captions, {"train": sorted(captions)}, images={})
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DatasetError, match=r"not Flickr_8k\.devImages\.txt"):
        load_corpus(tmp_path, require_images=False)


def test_empty_caption_file_and_bad_json(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "captions.txt").write_text("image,caption\n")
    with pytest.raises(DatasetError, match="contains no captions"):
        load_corpus(tmp_path / "k", require_images=False)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "dataset_flickr8k.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_corpus(tmp_path / "j", require_images=False)
    (tmp_path / "j" / "dataset_flickr8k.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="no 'images' list"):
        load_corpus(tmp_path / "j", require_images=False)


# ------------------------------------------------------------------------------------------------ report
def test_skip_report_summary():
    report = SkipReport()
    assert str(report) == "nothing was skipped" and report.counts() == {}
    report.add(ONE_WORD_CAPTION, "x.jpg")
    for _ in range(5):
        report.add(NO_IMAGE_FILE, JPG1)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        report.add(CORRUPT_IMAGE, name)
    report.add("custom reason", "z")
    assert report.counts() == {ONE_WORD_CAPTION: 1, NO_IMAGE_FILE: 5, CORRUPT_IMAGE: 4, "custom reason": 1}
    assert report.summary().splitlines() == [
        f"skipped 5 caption lines naming no image file: {JPG1}",
        "skipped 4 unreadable or corrupt image files: a.jpg, b.jpg, c.jpg, ...",
        "kept 1 one-word captions: x.jpg",
        "1 custom reason: z",
    ]
    assert report.summary(max_names=4).splitlines()[1].endswith("c.jpg, d.jpg")


# --------------------------------------------------------------------------------------- real Flickr8k
@pytest.mark.skipif(not (SHARED / "Flickr8k.token.txt").is_file(), reason="shared Flickr8k captions absent")
def test_real_flickr8k_token_file():
    start = time.perf_counter()
    corpus = load_corpus(SHARED, require_images=False)
    seconds = time.perf_counter() - start
    counts = corpus.report.counts()
    assert corpus.format == "original"
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert len(corpus.captions) + counts[NO_SPLIT] == 8091 and counts[NO_SPLIT] == 91
    assert corpus.report.names(NO_IMAGE_FILE) == [JPG1] * 5
    assert counts[DUPLICATE_CAPTION] == 19  # 10 exact duplicates + 9 differing only in case or final " ."
    assert counts[ONE_WORD_CAPTION] >= 1
    assert seconds < 2.0  # about 0.4 s alone; generous because other tests may share the 2 cores
