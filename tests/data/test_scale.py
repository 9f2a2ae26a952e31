"""COCO-scale data handling: memory-mapped features, captions tokenized and encoded in bulk, and the setup
benchmark (``python -m showtell.bench_setup``) at a reduced size."""

from __future__ import annotations

import json
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from showtell.bench_setup import main as bench_setup_main
from showtell.data.features import FeatureTable, load_features, save_features
from showtell.data.sources import load_corpus
from showtell.perf.setup_speed import COCO_CAPTIONS, COCO_IMAGES, coco_like_images, split_sizes
from showtell.vocab import UNK_ID, Vocabulary, normalized, tokenize, word_counts


# --------------------------------------------------------------------------------------------- features
@pytest.fixture
def features_file(tmp_path):
    names = [f"img_{i:04d}_{'x' * (i % 7)}.jpg" for i in range(300)]  # odd name lengths: odd member offsets
    array = np.random.default_rng(0).standard_normal((300, 24)).astype(np.float16)
    save_features(tmp_path / "f.npz", names, array)
    return tmp_path / "f.npz", names, array


def test_uncompressed_features_are_memory_mapped(features_file):
    path, names, array = features_file
    table = load_features(path)
    assert table.memory_mapped and isinstance(table.array, np.memmap) and table.names == names
    np.testing.assert_array_equal(table.array, array)
    rows = np.array([5, 0, 299, 5])
    gathered = table.gather(rows)
    assert gathered.dtype == torch.float16 and gathered.shape == (4, 24)
    torch.testing.assert_close(gathered, torch.from_numpy(array[rows]))
    assert torch.equal(table.features, torch.from_numpy(array))


def test_compressed_and_user_written_files_still_read(tmp_path, features_file):
    _, names, array = features_file
    np.savez_compressed(tmp_path / "c.npz", names=np.array(names), features=array)
    compressed = load_features(tmp_path / "c.npz")
    assert not compressed.memory_mapped
    np.testing.assert_array_equal(compressed.array, array)
    np.savez(tmp_path / "f64.npz", names=np.array(names), features=array.astype(np.float64))  # converted
    wide = load_features(tmp_path / "f64.npz")
    assert not wide.memory_mapped and wide.array.dtype == np.float32
    np.savez(tmp_path / "plain.npz", features=array.astype(np.float32), names=np.array(names))  # other order
    plain = load_features(tmp_path / "plain.npz")
    assert plain.memory_mapped and plain.array.dtype == np.float32
    with zipfile.ZipFile(tmp_path / "plain.npz") as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_nan_in_a_late_chunk_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr("showtell.data.features._CHECK_ROWS", 7)  # several chunks
    array = np.zeros((50, 3), np.float32)
    array[[33, 47]] = np.nan
    save_features(tmp_path / "nan.npz", [f"{i}.jpg" for i in range(50)], array)
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 50 rows, e.g. row 33 \('33\.jpg'\)"):
        load_features(tmp_path / "nan.npz")
    assert load_features(tmp_path / "nan.npz", check_values=False).memory_mapped  # the cache's way


def test_mapped_table_pickles_as_its_path(features_file):
    path, names, array = features_file
    table = load_features(path)
    data = pickle.dumps(table)
    assert len(data) < len(pickle.dumps(names)) + 500  # names and path, not the matrix
    again = pickle.loads(data)
    assert again.memory_mapped and again.names == names and again.row == table.row
    np.testing.assert_array_equal(again.array, array)
    in_memory = FeatureTable(names, np.asarray(array))
    assert len(pickle.dumps(in_memory)) > array.nbytes


# ---------------------------------------------------------------------------------------- tokens in bulk
def test_normalized_is_the_tokenizer_for_many_captions():
    rng = random.Random(0)
    alphabet = "aZ09 ,.'\u2019`\n\r\t-\u00e9\u0130\u03a3\u212a!?\""
    captions = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    captions += ["A dog's ball, red.", "", "   ", "\u00c9t\u00e9 \u00e0 Paris"]
    ascii_only = [c.encode("ascii", "ignore").decode() for c in captions]  # the str.translate path
    for texts in (captions, ascii_only):
        assert normalized(texts) == [" ".join(tokenize(c)) for c in texts]


def test_vocabulary_from_counts_and_bulk_encoding():
    captions = ["A dog runs.", "a dog sits", "The cat, the dog!", "zebra"]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab == Vocabulary.from_counts(word_counts(normalized(captions)), min_count=2)
    assert vocab.itos[4:] == ["dog", "a", "the"]
    texts = normalized(captions)
    ids, lengths = vocab.encode_many(texts)
    assert lengths.tolist() == [3, 3, 4, 1]
    assert ids.tolist() == [i for c in captions for i in vocab.encode(c, add_special=False)]
    assert ids[-1] == UNK_ID and ids.dtype == np.int32
    empty_ids, empty_lengths = vocab.encode_many(["", "dog"])
    assert empty_lengths.tolist() == [0, 1] and empty_ids.tolist() == [vocab.stoi["dog"]]


# ---------------------------------------------------------------------------------------- the benchmark
def test_coco_shaped_generator_has_cocos_proportions():
    assert sum(split_sizes(COCO_IMAGES).values()) == COCO_IMAGES
    assert split_sizes(COCO_IMAGES) == {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
    images = list(coco_like_images(2000, seed=1, vocab_types=3000))
    assert len(images) == 2000 and [i.split for i in images].count("val") == 81
    counts = [len(i.captions) for i in images]
    assert set(counts) <= {5, 6, 7} and sum(counts) == 5 * 2000 + round(2000 * (COCO_CAPTIONS - 5 * COCO_IMAGES)
                                                                             / COCO_IMAGES)
    assert {i.filepath for i in images if i.split == "train"} == {"train2014"}
    assert {i.filepath for i in images if i.split != "train"} == {"val2014"}
    assert len({i.filename for i in images}) == 2000


@pytest.mark.slow
def test_setup_benchmark_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "bench_setup.json"
    results = bench_setup_main(["--images", "400", "--dim", "16", "--processes", "2", "--train_batches", "5",
                                "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == results
    rounds = results["rounds"]
    assert list(rounds) == ["1_process", "2_processes"] and len(rounds["2_processes"]) == 2
    sizes = split_sizes(400)
    for result in rounds["1_process"] + rounds["2_processes"]:
        assert result["features_memory_mapped"]
        assert result["split_images"] == {"train": sizes["train"] + sizes["restval"], "val": sizes["val"],
                                          "test": sizes["test"]}
        assert result["val_images"] == sizes["val"] and result["train_batches_timed"] == 5
        assert result["setup_s"] >= result["captions_s"] > 0
        memory = result["memory_after_mb"]
        assert memory["VmHWM"] >= memory["VmRSS"] > 0 and memory["Pss"] > 0
    corpus = load_corpus(tmp_path / "work" / "coco_like_400_16", require_images=False)
    assert corpus.dataset == "coco" and len(corpus.captions) == 400
    assert "2_processes #1" in capsys.readouterr().out
