"""showtell.evaluate: scoring a captions file, and a checkpoint on the val / test split (tiny model, CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from showtell.data.datamodule import CaptionDataModule
from showtell.evaluate import main
from showtell.metrics.scores import caption_metrics, format_metrics_table
from showtell.training.module import ShowTellModule
from showtell.training.outputs import METRIC_KEYS

RECORDS = [
    {"image_id": "a.jpg", "caption": "a dog runs on the grass",
     "references": ["a dog runs on grass", "a brown dog is running", "the dog runs"]},
    {"image_id": "b.jpg", "caption": "two people sit on a bench",
     "references": ["two people are sitting on a bench", "a couple sits on a park bench"]},
    {"image_id": "c.jpg", "caption": "a man rides a bike",
     "references": ["a man is riding a bicycle", "a cyclist rides down the street", "a man on a bike ."]},
]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


FAKE_METEOR = 0.123


@pytest.fixture(autouse=True)
def _fast_meteor(monkeypatch):
    """METEOR starts a JVM (~10 s a call on 2 busy cores) and tests/metrics/test_bleu.py covers it; here a stub
    value only has to travel through to the outputs."""
    monkeypatch.setattr("showtell.metrics.scores.meteor", lambda hypotheses, references: FAKE_METEOR)


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("captions")
    return _write_jsonl(folder / "captions.jsonl", [json.dumps(r) for r in RECORDS])


@pytest.fixture
def expected_metrics() -> dict:
    return caption_metrics([r["caption"] for r in RECORDS], [r["references"] for r in RECORDS])


# ------------------------------------------------------------------------------------------- captions files


def test_captions_file_table(captions_file, expected_metrics, capsys):
    assert main(["--captions", str(captions_file)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_metrics_table(expected_metrics, title=f"{captions_file}: 3 captions")
    assert "BLEU-4" in out and "CIDEr" in out


def test_captions_file_json(captions_file, expected_metrics, capsys):
    assert main(["--captions", str(captions_file), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == list(METRIC_KEYS) == ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"]
    assert printed == pytest.approx(expected_metrics, abs=1e-12)
    assert 0 < printed["bleu1"] <= 1 and printed["meteor"] == FAKE_METEOR and printed["cider"] > 0


GOOD = json.dumps(RECORDS[0])


@pytest.mark.parametrize(("lines", "expected"), [
    ([GOOD, "{not json"], ":2: not JSON"),
    ([GOOD, json.dumps({"caption": "a dog"})], ":2: 'references' must be a non-empty list of strings"),
    ([json.dumps({"references": ["a dog"]})], ":1: 'caption' must be a string"),
    ([json.dumps({"caption": "a dog", "references": "a dog"})], ":1: 'references' must be"),
    ([json.dumps({"caption": "a dog", "references": []})], ":1: 'references' must be"),
    ([GOOD, "", json.dumps(["a list"])], ":3: expected a JSON object"),
    ([], "holds no captions"),
])
def test_bad_captions_file(tmp_path, capsys, lines, expected):
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    assert main(["--captions", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expected in err, err


def test_missing_captions_file(tmp_path, capsys):
    assert main(["--captions", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.jsonl: no such file" in err


def test_needs_exactly_one_input(captions_file, tiny_checkpoint, capsys):
    assert main([]) == 2
    assert main(["--captions", str(captions_file), "--ckpt", str(tiny_checkpoint)]) == 2
    assert "exactly one of --captions" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- checkpoints


def _reference_captions(ckpt: Path, split: str, beam_size: int) -> dict[str, str]:
    """image_id -> caption of the module's own generate on the split, with the training data settings."""
    model = ShowTellModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = CaptionDataModule(**torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"])
    data.setup("test")
    dataset = data.datasets[split]
    batch = dataset.__getitems__(list(range(len(dataset))))
    captions = model.captions_from(model.generate(batch.images, beam_size=beam_size))
    return {name: " ".join(c) for name, c in zip(batch.image_ids, captions)}


def _read_outputs(folder: Path, split: str) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (folder / f"{split}_captions.jsonl").read_text().splitlines()]
    return records, json.loads((folder / f"{split}_metrics.json").read_text())


def test_checkpoint_test_split_greedy(tiny_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    assert main(["--ckpt", str(tiny_checkpoint), "--beam_size", "1", "--output_dir", str(out_dir),
                 "--trainer.accelerator", "cpu", "--json"]) == 0
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == ["test_captions.jsonl", "test_metrics.json"]
    records, metrics = _read_outputs(out_dir, "test")
    assert list(metrics) == list(METRIC_KEYS) and metrics["meteor"] == FAKE_METEOR
    assert json.loads(stdout.strip().splitlines()[-1]) == metrics
    assert "test metrics (6 images, beam 1)" in stdout and f"to {out_dir.resolve()}" in stdout

    expected = _reference_captions(tiny_checkpoint, "test", beam_size=1)
    assert len(records) == len(expected) == 6
    assert {r["image_id"]: r["caption"] for r in records} == expected
    assert all(len(r["references"]) == 5 for r in records)
    rescored = caption_metrics([r["caption"] for r in records], [r["references"] for r in records])
    assert metrics["bleu1"] == pytest.approx(rescored["bleu1"])


def test_checkpoint_val_split_default_folder_and_beam(tiny_checkpoint, capsys):
    # Default beam: the checkpoint's test_beam_size (2); default folder: next to the checkpoint.
    assert main(["--ckpt", str(tiny_checkpoint), "--split", "val"]) == 0
    out_dir = tiny_checkpoint.parent / "eval_val_beam2"
    assert "val metrics (6 images, beam 2)" in capsys.readouterr().out
    records, metrics = _read_outputs(out_dir, "val")
    assert list(metrics) == list(METRIC_KEYS)
    assert {r["image_id"]: r["caption"] for r in records} == _reference_captions(tiny_checkpoint, "val", 2)


def test_checkpoint_vocabulary_is_the_checkpoints(tiny_checkpoint, tmp_path, capsys):
    # Another min_count would build another vocabulary from the same train split: the checkpoint's is used.
    assert main(["--ckpt", str(tiny_checkpoint), "--beam_size", "1", "--output_dir", str(tmp_path),
                 "--data.min_count", "1000"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"vocabulary: the checkpoint's \(\d+ words\); 0 of the \d+ words of the test references", out)
    records, _ = _read_outputs(tmp_path, "test")
    assert {r["image_id"]: r["caption"] for r in records} == _reference_captions(tiny_checkpoint, "test", 1)


def test_checkpoint_data_override_reaches_the_data_module(tiny_checkpoint, tmp_path, capsys):
    assert main(["--ckpt", str(tiny_checkpoint), "--data.root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty" in err, err


@pytest.mark.parametrize("kind", ["missing", "text", "not_showtell"])
def test_bad_checkpoint(tmp_path, capsys, kind):
    path = tmp_path / "model.ckpt"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "not_showtell":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 1.0}}, path)
    assert main(["--ckpt", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err, err
    expected = {"missing": "does not exist", "text": "not a readable PyTorch checkpoint",
                "not_showtell": "not a showtell checkpoint"}[kind]
    assert expected in err


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--beam_size", "0", "--beam_size must be at least 1, got 0"),
    ("--collective_timeout", "0", "--collective_timeout must be a positive number of seconds, got 0.0"),
])
def test_bad_decoding_options_end_before_the_data_is_read(tiny_checkpoint, tmp_path, capsys, flag, value, expected):
    assert main(["--ckpt", str(tiny_checkpoint), "--output_dir", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"evaluate: {expected}"
    assert not any(tmp_path.iterdir())  # nothing decoded or written


def test_sigterm_during_decoding_exits_143_with_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Lightning stops a SIGTERMed test with SIGTERMException, a SystemExit: it must not pass for the parser's
    exit (code 0, as if the evaluation had finished)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stopped(*args, **kwargs):
        raise SIGTERMException

    monkeypatch.setattr("showtell.evaluate.evaluate_checkpoint", stopped)
    assert main(["--ckpt", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--json"]) == 143
    captured = capsys.readouterr()
    assert captured.err.strip() == "evaluate: stopped by SIGTERM" and captured.out == ""


def test_checkpoint_is_read_once(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """evaluate --ckpt opens and checks the checkpoint file once (the model is built from what was read)."""
    import torch

    loads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or load(*args, **kwargs))
    assert main(["--ckpt", str(tiny_checkpoint), "--beam_size", "1", "--output_dir", str(tmp_path / "eval"),
                 "--trainer.accelerator", "cpu", "--json"]) == 0
    assert len(loads) == 1 and Path(loads[0]) == tiny_checkpoint  # the model's CNN is random: nothing else loads
