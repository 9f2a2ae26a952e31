"""showtell.loggers: wandb mode choice, offline fallbacks, where files go, and the sample-captions callback.

Every test that starts wandb runs in a sandbox: a fake $HOME and XDG folders, no wandb variables from outside, a
wandb server URL on a closed loopback port, and a guard that records (and refuses) any connection or name lookup
that is not local. wandb runs only offline or disabled here. Tests use public APIs only: the logger's
constructor and properties, wandb's run object, the files on disk and the process environment.
"""

from __future__ import annotations

import ipaddress
import os
import pty
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from showtell.training import loggers
from showtell.training.loggers import SampleCaptionsTable, WandbLogger, has_wandb_credentials, resolve_wandb_mode
from showtell.training.outputs import TestOutputWriter

REPO = Path(__file__).resolve().parents[2]
CLOSED_URL = "http://127.0.0.1:9"  # loopback "discard" port: nothing listens, connections are refused at once
FAKE_KEY = "a" * 40
SAMPLES = [{"image_id": "dog.png", "caption": "a dog runs", "references": ["a dog runs", "a brown dog"]},
           {"image_id": "missing.jpg", "caption": "a cat", "references": ["a cat sits"]}]
# wandb >= 0.23 warns once per process because Lightning's WandbLogger always passes `anonymous` to wandb.init;
# only a private attribute of Lightning's logger could avoid it, so the tests allow that one line.
ANONYMOUS_WARNING = "The anonymous setting has no effect"


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
    # setenv first so that monkeypatch also removes whatever the code under test might set
    for var in {*(v for v in os.environ if v.startswith("WANDB_")), "WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                "WANDB_ARTIFACT_DIR", "WANDB_MODE", "WANDB_SILENT", "NETRC", *loggers.PROXY_VARS}:
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
    """Finish any run and stop wandb's service (public wandb calls)."""
    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


def _lines(err: str) -> list[str]:
    """What was printed to stderr, less wandb's one-per-process warning about Lightning's `anonymous`."""
    return [line for line in err.strip().splitlines() if ANONYMOUS_WARNING not in line]


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _environment() -> dict[str, str]:
    """The process environment, less WANDB_SERVICE: wandb's own pointer to its service process, which wandb sets
    while the service runs (so that child processes find it) and removes in `wandb.teardown()`."""
    return {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}


# ----- credentials and mode ---------------------------------------------------------------------------------------
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
    # what `wandb login` stores: a ~/.netrc entry for the server's host:port, found without the network
    (sandbox / ".netrc").write_text(f"machine 127.0.0.1:9\n  login user\n  password {FAKE_KEY}\n")
    (sandbox / ".netrc").chmod(0o600)
    assert resolve_wandb_mode(False) == "online"
    assert capsys.readouterr().err == ""


def test_credential_lookup_follows_the_server(sandbox, monkeypatch, tmp_path):
    netrc_file = tmp_path / "elsewhere.netrc"
    netrc_file.write_text(f"machine api.example.org\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert not has_wandb_credentials()  # an entry for another server
    assert has_wandb_credentials(settings={"base_url": "https://api.example.org"})
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.example.org/")
    assert has_wandb_credentials()
    # the server `wandb login --host` saved in wandb's settings file
    monkeypatch.delenv("WANDB_BASE_URL")
    (sandbox / ".config" / "wandb").mkdir(parents=True)
    (sandbox / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = https://api.example.org\n")
    assert has_wandb_credentials()
    netrc_file.write_text("machine api.example.org\n  login user\n  password\n")  # entry without a key
    assert not has_wandb_credentials()
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    assert has_wandb_credentials()


def test_unreachable_server_falls_back_offline(sandbox, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"))
    assert logger.experiment.settings.mode == "offline"
    err = capsys.readouterr().err
    assert f"cannot reach {CLOSED_URL}" in err and err.count("wandb sync") == 1
    assert len(_lines(err)) == 1


def test_failed_online_start_falls_back_offline(sandbox, monkeypatch, tmp_path, capsys):
    """The server answers the probe but wandb.init fails (here: refused, after init_timeout)."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(loggers, "server_reachable", lambda url, timeout=5.0: True)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), init_timeout=1)
    run = logger.experiment
    assert run.settings.mode == "offline" and run.id == logger.run_id
    err = capsys.readouterr().err
    assert "could not start an online run" in err and "Traceback" not in err and err.count("wandb sync") == 1
    assert list((logger.run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("how", ["env", "argument", "settings"])
def test_disabled_mode_is_a_no_op(sandbox, monkeypatch, tmp_path, capsys, how):
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    extra = {"env": {}, "argument": {"mode": "disabled"}, "settings": {"settings": {"mode": "disabled"}}}[how]
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), **extra)
    logger.log_metrics({"val/bleu4": 0.5}, step=1)
    logger.log_hyperparams({"lr": 0.1})
    assert _lines(capsys.readouterr().err) == []
    assert not (logger.run_dir / "wandb").exists()
    assert not _files_under(sandbox)


@pytest.mark.parametrize("how", ["env", "argument", "offline"])
def test_offline_mode_is_honoured_without_touching_the_environment(sandbox, monkeypatch, tmp_path, capsys, how):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # credentials, but offline was asked for
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "offline")
    before = _environment()
    extra = {"env": {}, "argument": {"mode": "offline"}, "offline": {"offline": True}}[how]
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), **extra)
    assert logger.experiment.settings.mode == "offline"
    assert _environment() == before  # Lightning's own offline=True would set WANDB_MODE for the whole process
    assert capsys.readouterr().err.count("wandb sync") == 1


def test_offline_with_log_model_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="log_model"):
        WandbLogger(save_dir=str(tmp_path), offline=True, log_model=True)


def test_user_settings_object_is_copied_and_wins(sandbox, tmp_path):
    import wandb

    user = wandb.Settings(init_timeout=7, console="off")
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), settings=user, init_timeout=60)
    run = logger.experiment
    assert run.settings.mode == "offline" and run.settings.init_timeout == 7 and run.settings.console == "off"
    assert user.mode != "offline"  # the user's object is left as it was


@pytest.mark.slow
def test_never_prompts_in_a_terminal(sandbox, tmp_path):
    """With a terminal on stdin and stderr (where wandb would ask for a key), no credentials and no network,
    the logger starts offline at once; with a key and an unreachable server too."""
    script = textwrap.dedent(f"""
        import wandb
        from showtell.loggers import WandbLogger
        print("MODE", WandbLogger(save_dir={str(tmp_path / 'runs')!r}).experiment.settings.mode, flush=True)
        wandb.finish()
        import os
        os.environ["WANDB_API_KEY"] = {FAKE_KEY!r}
        print("MODE", WandbLogger(save_dir={str(tmp_path / 'runs')!r}).experiment.settings.mode, flush=True)
        wandb.finish()
    """)
    controller, terminal = pty.openpty()
    shown: list[bytes] = []

    def read_terminal() -> None:  # keep the terminal drained, as a person at it would
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-c", script], stdin=terminal, stderr=terminal,
                              stdout=subprocess.PIPE, text=True, timeout=240, cwd=REPO,
                              env={**os.environ, "TERM": "xterm", "PYTHONPATH": str(REPO)})
    finally:
        os.close(terminal)
        reader.join(5)
        os.close(controller)
    terminal_text = b"".join(shown).decode(errors="replace")
    assert done.returncode == 0, terminal_text
    assert done.stdout.split() == ["MODE", "offline", "MODE", "offline"], terminal_text
    assert terminal_text.count("wandb sync") == 2 and "API key" in terminal_text


# ----- run folders, run ids -------------------------------------------------------------------------------------
def test_each_run_gets_its_own_folder(tmp_path):
    first, second = WandbLogger(save_dir=str(tmp_path)), WandbLogger(save_dir=str(tmp_path))
    assert first.save_dir != second.save_dir and first.run_id != second.run_id
    assert Path(first.save_dir).parent == tmp_path / "showtell" and first.log_dir == first.save_dir
    assert Path(first.log_dir).name == first.run_id == first.version
    for resumed in (WandbLogger(save_dir=str(tmp_path), project="p", id="abc123"),
                    WandbLogger(save_dir=str(tmp_path), project="p", version="abc123")):
        assert resumed.log_dir == str(tmp_path / "p" / "abc123") and resumed.run_id == "abc123"


def test_a_run_id_resumes_the_run(sandbox, tmp_path):
    first = WandbLogger(save_dir=str(tmp_path / "runs"))
    run = first.experiment
    run_id = first.run_id
    assert run.id == run_id and run.settings.resume == "allow"
    first.log_metrics({"val/bleu4": 0.5}, step=1)
    _reset_wandb()
    again = WandbLogger(save_dir=str(tmp_path / "runs"), id=run_id)
    assert again.experiment.id == run_id and again.run_id == run_id
    assert again.log_dir == first.log_dir
    assert len(list((Path(first.log_dir) / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def test_yaml_config_keeps_wandb_defaults(sandbox, tmp_path):
    """LightningCLI fills every wandb.init argument with None; the mode must still be chosen, resume allowed."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger

    parser = ArgumentParser()
    parser.add_argument("--logger", type=Logger)
    config = parser.parse_args(["--logger.class_path=showtell.loggers.WandbLogger",
                                f"--logger.init_args.save_dir={tmp_path / 'runs'}", "--logger.init_args.tags=[a]",
                                "--logger.init_args.id=run0001"])
    logger = parser.instantiate(config).logger
    run = logger.experiment
    assert run.settings.mode == "offline"  # no credentials in the sandbox
    assert run.settings.resume == "allow" and tuple(run.tags) == ("a",) and run.id == "run0001"
    assert logger.log_dir == str(tmp_path / "runs" / "showtell" / "run0001")


def test_the_flickr8k_config_builds_the_logger(tmp_path):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger

    logger_config = yaml.safe_load((REPO / "configs" / "flickr8k.yaml").read_text())["trainer"]["logger"]
    logger_config["init_args"]["save_dir"] = str(tmp_path)
    parser = ArgumentParser()
    parser.add_argument("--logger", type=Logger)
    logger = parser.instantiate(parser.parse_object({"logger": logger_config})).logger
    assert isinstance(logger, WandbLogger) and logger.name == "showtell"
    assert Path(logger.log_dir).parent == tmp_path / "showtell"


@pytest.mark.slow
def test_import_does_not_import_wandb():
    code = "import sys, showtell.loggers; assert 'wandb' not in sys.modules, 'wandb imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_setup_fills_only_checkpoint_folders_nobody_set(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path))
    chosen, unset = ModelCheckpoint(dirpath=str(tmp_path / "mine")), ModelCheckpoint()
    trainer = SimpleNamespace(loggers=[logger], log_dir=logger.log_dir, checkpoint_callbacks=[chosen, unset])
    SampleCaptionsTable().setup(trainer, None, "fit")
    assert Path(chosen.dirpath) == (tmp_path / "mine").resolve()
    assert unset.dirpath == str(Path(logger.log_dir) / "checkpoints")
    other = ModelCheckpoint()
    csv = SimpleNamespace(loggers=[CSVLogger(str(tmp_path))], log_dir=str(tmp_path), checkpoint_callbacks=[other])
    SampleCaptionsTable().setup(csv, None, "fit")
    assert other.dirpath is None  # not our logger: Lightning decides


# ----- a tiny training run --------------------------------------------------------------------------------------
class TinyCaptioner(L.LightningModule):
    """What ShowTellModule offers the callback: val_samples, parameter_counts(), a TestOutputWriter."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 1)  # 5 trainable parameters
        self.frozen = nn.Linear(4, 3).requires_grad_(False)  # 15 frozen
        self.val_samples: list[dict] = []
        self.writer = TestOutputWriter()

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
        self.writer.metrics = {"bleu1": 0.5, "bleu4": 0.25, "meteor": None, "cider": float("nan")}

    def configure_callbacks(self):
        return [self.writer]

    def parameter_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters()) - trainable

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


class TinyData(L.LightningDataModule):
    def __init__(self, image_dir: Path):
        super().__init__()
        self.image_dir = image_dir

    def image_path(self, name: str) -> Path:  # as CaptionDataModule.image_path (COCO: a subfolder per split)
        return self.image_dir / name

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


def test_offline_fit_keeps_everything_in_the_run_folder_and_the_environment_as_it_was(sandbox, tmp_path, capsys):
    before = _environment()
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), tags=["test"])  # offline: no credentials
    trainer = _fit_and_test(tmp_path, logger)
    run_dir = tmp_path / "runs" / "showtell" / logger.run_id
    assert trainer.log_dir == str(run_dir) == logger.log_dir
    assert list((run_dir / "checkpoints").glob("*.ckpt")) and not (run_dir / "showtell").exists()
    assert _environment() == before  # between the logger's calls nothing of wandb's places is left set
    _reset_wandb()  # finish: the summary is written at the end of the run
    assert dict(os.environ) == before

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list((offline_run / "files" / "media" / "table" / "val").glob("samples_*.table.json"))
    records = next(offline_run.glob("*.wandb")).read_bytes()
    for expected in (b"val/samples", b"test/bleu4", b"test/bleu1", b"trainable_params", b"frozen_params"):
        assert expected in records, expected
    assert b"test/meteor" not in records and b"test/cider" not in records  # None and NaN are skipped
    assert _files_under(run_dir / "wandb" / "data")  # the table artifact, staged for `wandb sync`
    assert _files_under(run_dir / "wandb" / "cache")  # wandb's service logs
    pngs = [p for p in _files_under(run_dir) if p.read_bytes()[:4] == b"\x89PNG"]
    assert pngs and all(max(Image.open(p).size) <= 224 for p in pngs)  # thumbnails, staged in the run folder

    assert _files_under(sandbox) == []  # nothing in $HOME (~/.local/share/wandb, ~/.cache/wandb, ...)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "artifacts").exists()
    err = capsys.readouterr().err
    assert err.count("wandb sync") == 1 and "Traceback" not in err


def test_with_csv_logger_only_parameter_counts_are_logged(sandbox, tmp_path, recwarn):
    logger = CSVLogger(str(tmp_path / "csv"), name="run")
    trainer = _fit_and_test(tmp_path, logger)
    hparams = yaml.safe_load((Path(trainer.log_dir) / "hparams.yaml").read_text())
    assert hparams["trainable_params"] == 5 and hparams["frozen_params"] == 15
    assert not [w for w in recwarn if "SampleCaptionsTable" in str(w.message)]
    assert not list(tmp_path.rglob("*wandb*"))


# ----- the callback with fake wandb loggers ----------------------------------------------------------------------
class RecordingWandb(LightningWandbLogger):
    """A wandb logger that records what it is given instead of starting a run."""

    def __init__(self):  # no wandb.init arguments needed
        self.tables: list[dict] = []
        self.summary: dict[str, float] = {}

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append({"key": key, "columns": columns, "data": data, "step": step})

    @property
    def experiment(self):
        return SimpleNamespace(summary=self.summary)


class BrokenWandb(LightningWandbLogger):
    """A wandb logger whose every call fails."""

    def __init__(self):  # no wandb.init arguments needed
        pass

    def log_table(self, *args, **kwargs):
        raise RuntimeError("wandb is down")

    @property
    def experiment(self):
        raise RuntimeError("wandb is down")


def _trainer(image_dir: Path, logger, **overrides) -> SimpleNamespace:
    fields = {"sanity_checking": False, "is_global_zero": True, "loggers": [logger], "current_epoch": 3,
              "global_step": 12, "datamodule": SimpleNamespace(image_path=lambda name: image_dir / name)}
    return SimpleNamespace(**{**fields, **overrides})


def test_sample_table_rows_and_test_summary(tmp_path):
    import wandb

    Image.new("RGB", (640, 320), (10, 200, 30)).save(tmp_path / "dog.png")
    logger = RecordingWandb()
    module = SimpleNamespace(val_samples=SAMPLES)
    writer = TestOutputWriter()
    writer.metrics = {"bleu4": 0.25, "meteor": None, "cider": float("nan")}
    callback = SampleCaptionsTable(key="val/samples", thumbnail_size=64)
    callback.on_validation_epoch_end(_trainer(tmp_path, logger, sanity_checking=True), module)
    callback.on_validation_epoch_end(_trainer(tmp_path, logger, is_global_zero=False), module)
    assert logger.tables == []  # not during the sanity check, only on rank 0
    callback.on_validation_epoch_end(_trainer(tmp_path, logger), module)
    (table,) = logger.tables
    assert table["key"] == "val/samples" and table["step"] == 12
    assert table["columns"] == ["epoch", "image", "image_id", "caption", "references"]
    dog, missing = table["data"]
    assert isinstance(dog[1], wandb.Image) and max(dog[1].image.size) == 64
    assert dog[0] == 3 and dog[2:] == ["dog.png", "a dog runs", "a dog runs | a brown dog"]
    assert missing[1] is None and missing[2:] == ["missing.jpg", "a cat", "a cat sits"]
    callback.on_test_end(_trainer(tmp_path, logger, callbacks=[writer]), module)
    assert logger.summary == {"test/bleu4": 0.25}


def test_wandb_failures_in_the_callback_are_one_warning_each(tmp_path):
    writer = TestOutputWriter()
    writer.metrics = {"bleu4": 0.25}
    trainer = _trainer(tmp_path, BrokenWandb(), callbacks=[writer])
    module = SimpleNamespace(val_samples=SAMPLES)
    callback = SampleCaptionsTable()
    with pytest.warns(UserWarning, match="could not log the sample captions table.*wandb is down") as caught:
        callback.on_validation_epoch_end(trainer, module)
    assert len(caught) == 1
    with pytest.warns(UserWarning, match="could not put the test metrics into the run summary"):
        callback.on_test_end(trainer, module)
