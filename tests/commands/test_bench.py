"""Throughput benchmark: dataset reuse, arguments, targets, and a tiny end-to-end run checked for behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _fixtures import write_original

from showtell import bench
from showtell.bench import parse_args
from showtell.data.sources import load_corpus
from showtell.perf.training_speed import REQUIRED_KEYS, check_targets, ensure_dataset
from showtell.vocab import tokenize

WORDS = [f"word{i}" for i in range(30)]


def _token_file(folder: Path) -> Path:
    """A real-layout caption file whose captions have 2, 5, 10, 20 or 30 words."""
    captions = {f"{i}.jpg": [" ".join(WORDS[:n]) + " ." for n in (2, 5, 10, 20, 30)] for i in range(4)}
    write_original(folder, captions, images={})
    return folder / "Flickr8k_text" / "Flickr8k.token.txt"


def test_dataset_is_reused_and_named_by_its_length_source(tmp_path):
    root, seconds = ensure_dataset(tmp_path, 16, 40, 30, seed=0)
    assert seconds is not None and "synthetic_lengths" in root.name
    assert load_corpus(root).format == "kaggle"
    again, seconds = ensure_dataset(tmp_path, 16, 40, 30, seed=0)
    assert again == root and seconds is None  # same parameters: reused, not regenerated
    real, seconds = ensure_dataset(tmp_path, 16, 40, 30, seed=0, lengths_from=_token_file(tmp_path / "real"))
    assert real != root and "real_lengths" in real.name and seconds is not None
    lengths = {len(tokenize(c)) for caps in load_corpus(real).captions.values() for c in caps}
    assert lengths <= {2, 5, 10, 20, 30} and len(lengths) > 1


def test_lengths_come_from_the_shared_real_captions_when_present(tmp_path, monkeypatch):
    token_file = _token_file(tmp_path)
    monkeypatch.setattr(bench, "REAL_CAPTIONS", token_file)
    assert parse_args([]).lengths_from == token_file
    assert parse_args(["--lengths_from", "synthetic"]).lengths_from is None
    monkeypatch.setattr(bench, "REAL_CAPTIONS", tmp_path / "absent" / "Flickr8k.token.txt")
    assert parse_args([]).lengths_from is None
    assert parse_args(["--lengths_from", str(token_file)]).lengths_from == token_file.resolve()


@pytest.mark.parametrize("argv, message", [(["--images", "0"], "--images must be at least 1"),
                                           (["--images", "4"], "--images must be at least 8"),
                                           (["--lengths_from", "/no/such/file.txt"], "no such file")])
def test_bad_arguments_fail_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_targets_apply_per_device_and_paper_run_only_at_30_epochs():
    results = {"device": "cuda", "extract_images_per_s": 6000.0, "train_captions_per_s": 40000.0,
               "paper_run_s": 50.0, "paper_run_epochs": 2}
    targets = check_targets(results)
    assert targets["extract_images_per_s"]["pass"] is True
    assert targets["train_captions_per_s"]["pass"] is False
    assert targets["paper_run_s"]["pass"] is None  # 2 epochs is not the paper run
    assert check_targets({**results, "paper_run_epochs": 30})["paper_run_s"]["pass"] is True
    cpu = check_targets({"device": "cpu", "bucketed_ratio": 0.7, "lightning_overhead": 1.1})
    assert cpu == {"bucketed_ratio": {"target": "<= 0.65", "pass": False},
                   "lightning_overhead": {"target": "<= 1.2", "pass": True},
                   "cached_speedup": {"target": ">= 10", "pass": None}}  # not measured: no verdict


@pytest.mark.slow
def test_tiny_benchmark(tmp_path, capsys):
    out = tmp_path / "bench.json"
    token_file = _token_file(tmp_path / "real")
    returned = bench.main([
        "--images", "24", "--image_width", "64", "--image_height", "48", "--encoder", "resnet18",
        "--image_size", "32", "--batch_size", "16", "--epochs", "1", "--image_batches", "1", "--repeats", "1",
        "--num_workers", "0", "--decode_min_s", "0", "--threads", "1", "--device", "cpu",
        "--lengths_from", str(token_file), "--workdir", str(tmp_path / "work"), "--out", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    assert returned == results and set(REQUIRED_KEYS) <= set(results)
    assert results["device"] == "cpu" and results["peak_gpu_mem_mb"] is None and results["paper_run_epochs"] == 1
    assert 0 <= results["paper_run_test_metrics"]["bleu4"] <= 1
    assert results["caption_lengths"] == "real" and results["caption_lengths_from"] == str(token_file.resolve())
    timed = [*REQUIRED_KEYS, "image_epoch_s", "cached_speedup", "plain_train_captions_per_s",
             "unbucketed_train_captions_per_s"]
    for key in (k for k in timed if k not in ("device", "peak_gpu_mem_mb", "caption_lengths")):
        assert isinstance(results[key], float) and math.isfinite(results[key]) and results[key] > 0, key
    for key in ("epoch_s", "unbucketed_epoch_s", "plain_epoch_s"):  # one timed epoch per variant and repeat
        assert results[f"{key}_all"] == [results[key]]
    # Same captions, two batch orders: sorting pools by length must cut the padding.
    assert 1.0 <= results["padding_ratio"] < results["unbucketed_padding_ratio"]
    assert results["bucketed_ratio"] == pytest.approx(results["epoch_s"] / results["unbucketed_epoch_s"])
    assert set(results["targets"]) == {"bucketed_ratio", "lightning_overhead", "cached_speedup"}
    assert all(t["pass"] in (True, False) for t in results["targets"].values())
    table = capsys.readouterr().out
    for label in ("not bucketed (s)", "bucketed / unbucketed epoch time", "positions per real token, bucketed",
                  "Lightning / plain epoch time", "paper-config run (1 epochs)", "real caption lengths"):
        assert label in table, label
    assert not list((tmp_path / "work").glob("scratch_*"))  # caches and checkpoints are cleaned up
