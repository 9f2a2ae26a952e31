"""showtell.loggers: wandb mode choice, offline fallbacks, where files go, and the sample-captions callback.

Every test runs in a sandbox: a fake $HOME and XDG folders, no wandb variables from outside, a wandb server
URL on a closed loopback port, and a guard that records (and refuses) any connection or name lookup that
is not local. wandb runs only offline or disabled here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from showtell import loggers
from showtell.loggers import SampleCaptionsTable, WandbLogger, resolve_wandb_mode

CLOSED_URL = "http://127.0.0.1:9"  # loopback "discard" port: nothing listens, connections are refused at once
FAKE_KEY = "a" * 40
SAMPLES = [{"image_id": "dog.png", "caption": "a dog runs", "references": ["a dog runs", "a brown dog"]},
           {"image_id": "missing.jpg", "caption": "a cat", "references": ["a cat sits"]}]


def _is_local(host) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Fake home, clean wandb environment, no network. Yields the fake home; checks nothing went out."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache"),
                     ("XDG_CONFIG_HOME", ".config")):
        monkeypatch.setenv(var, str(home / sub))
    # setenv first so that monkeypatch also removes what the code under test sets
    for var in {*(v for v in os.environ if v.startswith("WANDB_")), "WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                "WANDB_ARTIFACT_DIR", "WANDB_MODE", "NETRC", *loggers.PROXY_VARS}:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_URL)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.chdir(tmp_path)

    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family != socket.AF_UNIX and not _is_local(address[0]):
            attempts.append(f"connect {address}")
            raise OSError("network access in a test")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(f"lookup {host}")
            raise socket.gaierror("network access in a test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    _reset_wandb()
    yield home
    _reset_wandb()
    assert attempts == [], f"tried to use the network: {attempts}"


def _reset_wandb() -> None:
    """Finish any run and drop wandb's process-wide state (service, settings, credentials)."""
    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ----- mode resolution ------------------------------------------------------------------------------------------
def test_no_credentials_means_offline_and_one_line(sandbox, capsys):
    assert resolve_wandb_mode(False, sync_hint="runs/x/wandb/offline-run-*") == "offline"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no API key" in err[0] and "`wandb sync runs/x/wandb/offline-run-*`" in err[0]


@pytest.mark.parametrize(("env_mode", "offline", "expected"), [
    ("offline", False, "offline"), ("dryrun", False, "offline"), ("disabled", False, "disabled"),
    ("disabled", True, "disabled"), ("", True, "offline"), ("online", False, "offline")])
def test_wandb_mode_is_honoured(sandbox, monkeypatch, capsys, env_mode, offline, expected):
    if env_mode:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    assert resolve_wandb_mode(offline) == expected
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == (expected == "offline")  # offline: one line with the sync command; else silent


def test_credentials_request_online(sandbox, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_wandb_mode(False) == "online"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode(False) == "offline"
    assert "wandb sync" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    # wandb's own stored credentials (what `wandb login` writes): found without the network
    (sandbox / ".netrc").write_text(f"machine 127.0.0.1:9\n  login user\n  password {FAKE_KEY}\n")
    (sandbox / ".netrc").chmod(0o600)
    assert resolve_wandb_mode(False) == "online"
    assert capsys.readouterr().err == ""


def test_unreachable_server_falls_back_offline(sandbox, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"))
    assert logger.experiment.settings.mode == "offline"
    err = capsys.readouterr().err
    assert f"cannot reach {CLOSED_URL}" in err and err.count("wandb sync") == 1


def test_failed_online_start_falls_back_offline(sandbox, monkeypatch, tmp_path, capsys):
    """The server answers the probe but wandb.init fails (here: refused, after init_timeout)."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(loggers, "server_reachable", lambda url, timeout=5.0: True)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), init_timeout=1)
    run = logger.experiment
    assert run.settings.mode == "offline" and run.id == logger.version
    err = capsys.readouterr().err
    assert "could not start an online run" in err and "Traceback" not in err
    assert list((logger.run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("how", ["env", "argument"])
def test_disabled_mode_is_a_no_op(sandbox, monkeypatch, tmp_path, capsys, how):
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), **({"mode": "disabled"} if how == "argument" else {}))
    logger.log_metrics({"val/bleu4": 0.5}, step=1)
    logger.log_hyperparams({"lr": 0.1})
    assert capsys.readouterr().err == ""
    assert not (logger.run_dir / "wandb").exists()


# ----- run folders ----------------------------------------------------------------------------------------------
def test_each_run_gets_its_own_folder(tmp_path):
    first, second = WandbLogger(save_dir=str(tmp_path)), WandbLogger(save_dir=str(tmp_path))
    assert first.save_dir != second.save_dir
    assert Path(first.save_dir).parent == tmp_path / "showtell" and first.log_dir == first.save_dir
    resumed = WandbLogger(save_dir=str(tmp_path), project="p", version="abc123")
    assert resumed.log_dir == str(tmp_path / "p" / "abc123") and resumed.version == "abc123"


def test_yaml_config_keeps_wandb_defaults(sandbox, tmp_path):
    """LightningCLI fills every wandb.init argument with None; the mode must still be chosen, resume allowed."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger

    parser = ArgumentParser()
    parser.add_argument("--logger", type=Logger)
    config = parser.parse_args(["--logger.class_path=showtell.loggers.WandbLogger",
                                f"--logger.init_args.save_dir={tmp_path / 'runs'}", "--logger.init_args.tags=[a]"])
    logger = parser.instantiate(config).logger
    assert logger._wandb_init["resume"] == "allow" and logger._wandb_init["tags"] == ["a"]
    assert logger.experiment.settings.mode == "offline"  # no credentials in the sandbox


def test_import_does_not_import_wandb():
    code = "import sys, showtell.loggers; assert 'wandb' not in sys.modules, 'wandb imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- a tiny training run --------------------------------------------------------------------------------------
class TinyCaptioner(L.LightningModule):
    """The attributes ShowTellModule offers the callback: val_samples, test_metrics, parameter_counts()."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 1)  # 5 trainable parameters
        self.frozen = nn.Linear(4, 3).requires_grad_(False)  # 15 frozen
        self.val_samples: list[dict] = []
        self.test_metrics: dict[str, float | None] = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.head(x + self.frozen(x).sum(1, keepdim=True)).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.training_step(batch, batch_idx))
        if batch_idx == 0:
            self.val_samples = SAMPLES

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.training_step(batch, batch_idx))

    def on_test_epoch_end(self):
        self.test_metrics = {"bleu1": 0.5, "bleu4": 0.25, "meteor": None, "cider": float("nan")}

    def parameter_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters()) - trainable

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


class TinyData(L.LightningDataModule):
    def __init__(self, image_dir: Path):
        super().__init__()
        self.corpus = SimpleNamespace(image_dir=image_dir)

    def _loader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    train_dataloader = val_dataloader = test_dataloader = _loader


def _fit_and_test(tmp_path: Path, logger) -> L.Trainer:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(images / "dog.png")
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0,
                        log_every_n_steps=1, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[SampleCaptionsTable(), ModelCheckpoint(monitor="val/loss")],
                        default_root_dir=str(tmp_path))
    model, data = TinyCaptioner(), TinyData(images)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return trainer


def test_offline_fit_logs_table_images_and_summary_inside_the_run_folder(sandbox, tmp_path, capsys):
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), offline=True, tags=["test"])
    trainer = _fit_and_test(tmp_path, logger)
    run_dir = tmp_path / "runs" / "showtell" / logger.version
    assert trainer.log_dir == str(run_dir) == logger.log_dir
    assert list((run_dir / "checkpoints").glob("*.ckpt")) and not (run_dir / "showtell").exists()
    _reset_wandb()  # finish: the summary is written at the end of the run

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list((offline_run / "files" / "media" / "table" / "val").glob("samples_*.table.json"))
    records = next(offline_run.glob("*.wandb")).read_bytes()
    for expected in (b"val/samples", b"test/bleu4", b"test/bleu1", b"trainable_params", b"frozen_params"):
        assert expected in records, expected
    assert b"test/meteor" not in records and b"test/cider" not in records  # None and NaN are skipped
    pngs = [p for p in _files_under(run_dir) if p.read_bytes()[:4] == b"\x89PNG"]
    assert pngs and all(max(Image.open(p).size) <= 224 for p in pngs)  # thumbnails, staged in the run folder

    assert _files_under(sandbox) == []  # nothing in $HOME (~/.local/share/wandb, ~/.cache/wandb, ...)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "artifacts").exists()
    assert capsys.readouterr().err.count("wandb sync") == 1


def test_with_csv_logger_only_parameter_counts_are_logged(sandbox, tmp_path, recwarn):
    logger = CSVLogger(str(tmp_path / "csv"), name="run")
    trainer = _fit_and_test(tmp_path, logger)
    hparams = yaml.safe_load((Path(trainer.log_dir) / "hparams.yaml").read_text())
    assert hparams["trainable_params"] == 5 and hparams["frozen_params"] == 15
    assert not [w for w in recwarn if "SampleCaptionsTable" in str(w.message)]
    assert not list(tmp_path.rglob("*wandb*"))


class BrokenWandb(LightningWandbLogger):
    """A wandb logger whose every call fails."""

    def __init__(self):  # no wandb.init arguments needed
        pass

    def log_table(self, *args, **kwargs):
        raise RuntimeError("wandb is down")

    @property
    def experiment(self):
        raise RuntimeError("wandb is down")


def test_wandb_failures_in_the_callback_are_one_warning_each(tmp_path):
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[BrokenWandb()], current_epoch=0,
                              global_step=2, datamodule=SimpleNamespace(corpus=SimpleNamespace(image_dir=tmp_path)))
    module = SimpleNamespace(val_samples=SAMPLES, test_metrics={"bleu4": 0.25})
    callback = SampleCaptionsTable()
    with pytest.warns(UserWarning, match="could not log the sample captions table.*wandb is down") as caught:
        callback.on_validation_epoch_end(trainer, module)
    assert len(caught) == 1
    with pytest.warns(UserWarning, match="could not put the test metrics into the run summary"):
        callback.on_test_end(trainer, module)
