"""train.py / LightningCLI end to end on tiny data, --help and --print_config, and every config in the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DEMO_CONFIG, REPO

from showtell.data.features import save_features
from showtell.train import main
from showtell.training.cli import ShowTellCLI

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# experiments/overlays/ holds train.py overlays; experiments/studies/ the ablation specs (tests/studies/test_ablate.py)
EXPERIMENTS = sorted((REPO / "experiments" / "overlays").glob("*.yaml"))
TINY = ["--model.embed_size", "16", "--model.hidden_size", "16", "--data.batch_size", "16",
        "--data.num_workers", "0", "--data.progress", "false", "--trainer.enable_progress_bar", "false"]


def _demo_args(tmp_path: Path) -> list[str]:
    return ["--config", str(REPO / DEMO_CONFIG), "--data.root", str(tmp_path / "demo"),
            "--data.demo_images", "32", "--data.demo_image_size", "48", "--data.image_size", "48",
            "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY]


@pytest.mark.slow
def test_demo_config_end_to_end_and_rerun_into_same_folder(tmp_path, capsys):
    metrics = main(_demo_args(tmp_path))
    out = capsys.readouterr().out
    assert "showtell: kaggle data" in out and "trainable" in out and "precision" in out  # one-line summary
    assert "BLEU-4" in out  # results table
    run_dir = Path(out.strip().splitlines()[-1].split("run folder: ", 1)[1])
    assert run_dir.parent == tmp_path / "runs" / "demo"
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(saved) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    assert saved["bleu4"] == pytest.approx(metrics["bleu4"])
    assert (run_dir / "test_captions.jsonl").read_text().count("\n") == 4  # 32 images -> 4 test images
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    # a second run into the same folders works (config overwrite, demo and feature cache reused)
    main(_demo_args(tmp_path))
    second = capsys.readouterr().out
    assert "run folder:" in second


def test_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        ShowTellCLI(args=["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--model.conditioning" in text and "--data.root" in text
    with pytest.raises(SystemExit):
        main(["--config", str(REPO / "configs" / "demo.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["encoder"] == "resnet18" and config["data"]["root"] == "data/demo"
    assert "encoder" not in config["data"]  # linked from the model, never typed twice
    assert "vocab_size" not in config["model"]  # linked from the data at instantiation, never typed


@pytest.mark.slow
def test_train_py_default_config_names_the_demo_when_no_dataset(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--data.root", str(tmp_path / "nothing"),
                          "--model.weights", "null"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "disabled"})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "python -m showtell.demo" in last and "Traceback" not in out.stderr, out.stderr[-3000:]


def _set_in_yaml(path: Path, section: str, key: str) -> bool:
    return key in ((yaml.safe_load(path.read_text()) or {}).get(section) or {})


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS + EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads_and_instantiates(config, demo_root, tmp_path):
    # overlays go on top of the config they are written for: the demo (debug, overfit) or the baseline
    base = [] if config.name in ("flickr8k.yaml", "demo.yaml") else ["--config", str(REPO / "configs" / "demo.yaml")]
    if config.parent.name == "overlays":
        base = ["--config", str(REPO / "configs" / "flickr8k.yaml")]
    args = [*base, "--config", str(config), "--data.root", str(demo_root), "--data.demo", "false",
            "--model.weights", "null",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path)]
    if _set_in_yaml(config, "data", "features"):
        names = sorted(p.name for p in (demo_root / "Images").iterdir())
        save_features(tmp_path / "f.npz", names, np.zeros((len(names), 8), np.float16))
        args += ["--data.features", str(tmp_path / "f.npz")]
    cli = ShowTellCLI(args=args)
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size > 4
    assert cli.trainer.max_epochs >= 1
    if _set_in_yaml(config, "data", "features"):
        assert cli.model.encoder.backbone is None and cli.model.hparams.feature_dim == 8
    # every value the overlay sets reaches the object it configures (unless this test overrides it)
    overridden = {a.removeprefix("--") for a in args if a.startswith(("--model.", "--data."))}
    written = yaml.safe_load(config.read_text()) or {}
    for section, target in (("model", cli.model.hparams), ("data", cli.datamodule.hparams)):
        for key, value in (written.get(section) or {}).items():
            if f"{section}.{key}" not in overridden:
                assert target[key] == value, f"{section}.{key}"
    for key, value in (written.get("trainer") or {}).items():
        if key in ("max_epochs", "gradient_clip_val", "check_val_every_n_epoch"):
            assert getattr(cli.trainer, key) == value, f"trainer.{key}"


LOGGER_CHOICES = {"own": [], "none": ["--trainer.logger", "false"],
                  "csv": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]}


@pytest.mark.slow
@pytest.mark.parametrize("logger", list(LOGGER_CHOICES))
@pytest.mark.parametrize("config", CONFIGS + EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_runs_with_every_logger(config, logger, demo_root, tmp_path, capsys, monkeypatch):
    """fast_dev_run of each config with its own logger, without one, and with CSV: fit and test complete."""
    monkeypatch.setattr("showtell.metrics.scores.meteor", lambda hypotheses, references: None)  # no JVM start per run
    base = [] if config.name in ("flickr8k.yaml", "demo.yaml") else ["--config", str(REPO / "configs" / "demo.yaml")]
    if config.parent.name == "overlays":
        base = ["--config", str(REPO / "configs" / "flickr8k.yaml")]
    args = [*base, "--config", str(config), "--data.root", str(demo_root), "--data.demo", "false",
            "--model.weights", "null", "--model.encoder", "resnet18", "--data.image_size", "64",
            "--data.cache_dir", str(tmp_path.parent / "cache"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            *TINY, *LOGGER_CHOICES[logger]]
    if logger != "none":
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    if _set_in_yaml(config, "data", "features"):
        names = sorted(p.name for p in (demo_root / "Images").iterdir())
        save_features(tmp_path / "f.npz", names, np.zeros((len(names), 8), np.float16))
        args += ["--data.features", str(tmp_path / "f.npz")]
    metrics = main(args)
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    out = capsys.readouterr().out
    if logger == "none" and "LearningRateMonitor" in (REPO / "configs" / "flickr8k.yaml").read_text() \
            and (config.parent.name == "experiments" or config.name == "flickr8k.yaml"):
        assert "LearningRateMonitor is left out" in out


def test_train_py_checks_the_options_once_and_reads_a_features_file_once(demo_root, tmp_path, monkeypatch):
    """The CLI's options check hands its results to the constructors: the features file is read and scanned
    once, and the encoder options are checked once (not again in each constructor)."""
    import showtell.data.datamodule as datamodule_file
    import showtell.data.feature_source as feature_source_file
    import showtell.training.cli as cli_file
    import showtell.training.module as module_file

    names = sorted(p.name for p in (demo_root / "Images").iterdir())
    save_features(tmp_path / "f.npz", names, np.ones((len(names), 8), np.float16))
    reads, encoder_checks = [], []

    def counted(load):
        return lambda *args, **kwargs: reads.append(args[0]) or load(*args, **kwargs)

    for file in (datamodule_file, feature_source_file):
        monkeypatch.setattr(file, "load_features", counted(file.load_features))
    for file in (datamodule_file, module_file):
        check = file.check_encoder_options
        monkeypatch.setattr(file, "check_encoder_options",
                            lambda opts, check=check: encoder_checks.append(1) or check(opts))
    cli = cli_file.ShowTellCLI(args=["--config", str(REPO / DEMO_CONFIG), "--data.root", str(demo_root),
                                     "--data.demo", "false", "--data.features", str(tmp_path / "f.npz"),
                                     "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.hparams.feature_dim == 8 and cli.datamodule.features_table.dim == 8
    assert len(reads) == 1 and len(encoder_checks) == 1
    # built directly (Python, evaluate), each constructor checks its own options
    datamodule_file.CaptionDataModule(root=str(demo_root), features=str(tmp_path / "f.npz"), encoder="resnet18",
                                      weights=None)
    assert len(reads) == 2 and len(encoder_checks) == 2
