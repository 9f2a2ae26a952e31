"""Never lose a run: exact resume after SIGKILL, clean SIGTERM, determinism, bad checkpoints, non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from showtell.errors import CheckpointError
from showtell.training.checkpoints import readable, resume_checkpoint

EPOCHS = 4


def _run_args(demo_root: Path, out: Path, *extra: str) -> list[str]:
    """A tiny demo run (4 epochs, CSV logger) writing into ``out``."""
    return ["--config", "configs/demo.yaml", "--data.root", str(demo_root), "--data.demo", "false",
            "--data.image_size", "64", "--data.cache_dir", str(out.parent / "cache"),
            "--model.embed_size", "16", "--model.hidden_size", "16", "--model.dropout", "0.2",
            "--data.batch_size", "16", "--data.num_workers", "0", "--data.progress", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(EPOCHS),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _outputs(out: Path) -> tuple[dict, dict, str, dict]:
    """Test metrics, best checkpoint's weights, test captions, last checkpoint's weights (the best epoch of these
    tiny runs can come before the kill: only the last weights show that every epoch after it was redone alike)."""
    run = out / "demo" / "version_0"
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))[-1]
    weights = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return (json.loads((run / "test_metrics.json").read_text()), weights, (run / "test_captions.jsonl").read_text(),
            last)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for_checkpoint(path: Path, epoch: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if path.is_file() and readable(path):
            try:
                if torch.load(path, map_location="cpu", weights_only=False)["epoch"] >= epoch:
                    return
            except Exception:  # written right now: try again
                pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} at {path}")


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory) -> tuple[dict, dict, str, dict]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _train(_run_args(demo_root, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return _outputs(out)


@pytest.mark.slow
def test_same_command_and_seed_twice_is_identical(demo_root, tmp_path, uninterrupted):
    done = _train(_run_args(demo_root, tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics, weights, captions, last = _outputs(tmp_path / "run")
    assert metrics == uninterrupted[0] and captions == uninterrupted[2]
    assert _same_weights(weights, uninterrupted[1]) and _same_weights(last, uninterrupted[3])


@pytest.mark.slow
def test_sigkill_then_resume_last_equals_the_uninterrupted_run(demo_root, tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *_run_args(demo_root, out)], cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(out / "demo" / "version_0" / "checkpoints" / "last.ckpt", 1, process)
    finally:
        process.kill()
        process.wait()
    assert not (out / "demo" / "version_0" / "test_metrics.json").exists()
    resumed = _train(_run_args(demo_root, out, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (out / "demo" / "version_1").exists()  # the same run folder, the CSV log appended
    metrics, weights, captions, last = _outputs(out)
    assert metrics == uninterrupted[0] and captions == uninterrupted[2]
    assert _same_weights(weights, uninterrupted[1])
    assert _same_weights(last, uninterrupted[3]), "the epochs after the kill were not redone exactly"
    epochs = {line.split(",")[0] for line in (out / "demo" / "version_0" / "metrics.csv").read_text().splitlines()[1:]}
    assert {str(e) for e in range(EPOCHS)} <= epochs


@pytest.mark.slow
def test_sigterm_stops_within_seconds_with_the_resume_command(demo_root, tmp_path):
    out = tmp_path / "run"
    long_run = [*_run_args(demo_root, out), "--trainer.max_epochs", "12"]  # still training when the signal comes
    process = subprocess.Popen([sys.executable, "train.py", *long_run], cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        _wait_for_checkpoint(last, 0, process)
        sent = time.time()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert time.time() - sent < 30
    assert process.returncode == 143, stderr[-3000:]
    resume_lines = [line for line in stderr.splitlines() if "resume with:" in line]
    assert len(resume_lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    command = resume_lines[0].split("resume with: ", 1)[1]
    assert command.startswith("python train.py") and command.endswith(f"--ckpt_path {last}")
    resumed = _train([*long_run, "--ckpt_path", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "demo" / "version_0" / "test_metrics.json").is_file()


def test_last_falls_back_to_the_newest_readable_checkpoint(tmp_path, tiny_checkpoint):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    good = folder / "best-epoch01.ckpt"
    good.write_bytes(tiny_checkpoint.read_bytes())
    (folder / "last.ckpt").write_bytes(tiny_checkpoint.read_bytes()[:5000])  # a kill while writing
    assert resume_checkpoint("last", [tmp_path / "run"]) == good
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        resume_checkpoint("last", [tmp_path / "nothing"])


def _bad_checkpoints(folder: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.ckpt").write_text("not a checkpoint\n")
    (folder / "cut.ckpt").write_bytes(tiny_checkpoint.read_bytes()[:20000])
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 1.0}}, folder / "other.ckpt")
    return {"missing": folder / "missing.ckpt", "not a checkpoint": folder / "text.ckpt",
            "truncated": folder / "cut.ckpt", "another model": folder / "other.ckpt"}


@pytest.mark.parametrize("kind", ["missing", "not a checkpoint", "truncated", "another model"])
def test_bad_checkpoints_give_one_line_in_every_command(kind, demo_root, tmp_path, tiny_checkpoint, capsys):
    """train.py --ckpt_path, showtell.evaluate --ckpt and showtell.caption --ckpt, in this process (their
    main functions; the subprocess test below checks the real train.py command)."""
    from showtell import caption, evaluate, train

    path = _bad_checkpoints(tmp_path / "ckpts", tiny_checkpoint)[kind]
    image = sorted((demo_root / "Images").iterdir())[0]

    def train_py(args: list[str]) -> int:
        try:
            train.main(args)
        except SystemExit as exit_:
            return int(exit_.code)
        return 0

    commands = {
        "train.py": lambda: train_py([*_run_args(demo_root, tmp_path / "run"), "--ckpt_path", str(path)]),
        "evaluate": lambda: evaluate.main(["--ckpt", str(path)]),
        "caption": lambda: caption.main(["--ckpt", str(path), str(image)]),
    }
    for name, command in commands.items():
        start = time.time()
        code = command()
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, err[-2000:])
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err, (name, err)
        assert time.time() - start < 30, name
    assert not list((tmp_path / "run").glob("**/checkpoints/*.ckpt"))  # nothing trained


@pytest.mark.slow
def test_train_py_command_with_a_truncated_checkpoint(demo_root, tmp_path, tiny_checkpoint):
    path = _bad_checkpoints(tmp_path / "ckpts", tiny_checkpoint)["truncated"]
    done = _train([*_run_args(demo_root, tmp_path / "run"), "--ckpt_path", str(path)], timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and str(path) in lines[0], done.stderr[-2000:]


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_keeps_the_checkpoints(demo_root, tmp_path):
    out = tmp_path / "run"
    done = _train(_run_args(demo_root, out, "--model.lr", "1e30", "--trainer.gradient_clip_val", "null"))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training loss is" in errors[0] and "epoch" in errors[0] and "--model.lr" in errors[0]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (out / "demo" / "version_0" / "test_metrics.json").exists()


@pytest.mark.slow
def test_last_ckpt_is_the_newest_epoch_even_when_the_metric_does_not_improve(demo_root, tmp_path):
    """ModelCheckpoint(save_last=True) rewrites last.ckpt only with a new best; the configs' own "last"
    checkpoint is rewritten every epoch, so --ckpt_path last never goes back to the best epoch."""
    out = tmp_path / "run"
    done = _train(_run_args(demo_root, out, "--model.lr", "1e-12", "--trainer.max_epochs", "3"))  # never improves
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "demo" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch00.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    assert "testing the best checkpoint" in done.stdout and "best-epoch00.ckpt" in done.stdout


@pytest.mark.parametrize("config", ["configs/flickr8k.yaml", "configs/demo.yaml", "configs/coco.yaml",
                                    "experiments/overlays/scst.yaml"])
def test_every_config_rewrites_last_ckpt_every_epoch(config):
    import yaml

    callbacks = yaml.safe_load((REPO / config).read_text())["trainer"]["callbacks"]
    checkpoints = [c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints[0].get("monitor") and not checkpoints[0].get("save_last")  # the best: first, for test
    assert {"filename": "last", "enable_version_counter": False} in checkpoints
