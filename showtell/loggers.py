"""Weights & Biases logging the way researchers use it, safe on machines without credentials or network.

``WandbLogger`` is Lightning's logger with typed arguments for YAML (``class_path: showtell.loggers.WandbLogger``)
and these differences:

- Mode: ``WANDB_MODE=disabled`` turns it off; ``offline=True`` or ``WANDB_MODE=offline`` logs offline; otherwise
  it logs online when wandb has credentials (``WANDB_API_KEY``, an identity token, ``~/.netrc`` from ``wandb
  login``) and offline when it has none, with one line saying how to upload later. It never prompts.
- No network: before an online start the server gets a TCP probe (a few seconds; skipped behind a proxy), and
  ``wandb.init`` gets ``init_timeout`` (wandb's default 90 s stalls runs on machines without internet). An
  unreachable server or a failed start falls back to offline with one line, not a traceback.
- Files: each run has its own folder ``<save_dir>/<project>/<run id>`` (``save_dir``/``log_dir``; the Trainer
  writes the test outputs there, ``SampleCaptionsTable`` puts checkpoints there). wandb's run folder, its staged
  media (``WANDB_DATA_DIR``), caches and logs (``WANDB_CACHE_DIR``) and downloaded artifacts
  (``WANDB_ARTIFACT_DIR``) go inside it instead of ``$HOME`` and the working directory, unless the user set
  those variables. ``WANDB_CONFIG_DIR`` is left alone: wandb only reads it (``wandb login --host`` settings).

``SampleCaptionsTable`` logs a table of generated captions with thumbnails at each validation epoch and the
full test metrics into the run summary (wandb only), and the parameter counts as hyperparameters (any logger).

wandb is imported only when a run starts, never when this module is imported.
"""

from __future__ import annotations

import os
import secrets
import socket
import string
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning_utilities.core.imports import RequirementCache

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def has_wandb_credentials() -> bool:
    """Whether wandb would find credentials for its server, looked up locally (never over the network)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # older wandb: its own local lookup (environment, ~/.netrc, settings file)
        import wandb

        try:
            return bool(wandb.api.api_key)
        except Exception:
            return True
    try:
        host = wandb_setup.singleton().settings.base_url
        auth = wbauth.authenticate_session(host=host, source="showtell", prompt=False, update_session=False)
    except Exception:  # a malformed key or netrc entry: wandb's own start reports it, then we go offline
        return True
    return auth is not None


def resolve_wandb_mode(offline: bool, *, requested: str | None = None,
                       sync_hint: str = "<run folder>/wandb/offline-run-*") -> str:
    """The wandb mode to start in: ``disabled``, ``offline``, ``online`` (or ``shared`` when asked for).

    ``requested`` (a ``mode`` argument) or else ``WANDB_MODE``: ``disabled`` wins, then ``offline``; an online
    start without credentials becomes offline. Offline starts print one line with the ``wandb sync`` command
    (``sync_hint`` = the offline run's path).
    """
    env_mode = (requested or os.environ.get("WANDB_MODE", "")).strip().lower()
    sync = f"upload later with `wandb sync {sync_hint}`"
    if env_mode == "disabled":
        return "disabled"
    if offline or env_mode in ("offline", "dryrun"):
        _say(f"wandb: logging offline; {sync}")
        return "offline"
    if not has_wandb_credentials():
        _say(f"wandb: no API key configured (set WANDB_API_KEY or run `wandb login`): logging offline; {sync}")
        return "offline"
    return "shared" if env_mode == "shared" else "online"


def server_reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the server at ``url`` opens within ``timeout`` s (name lookup included).

    True when a proxy is configured: then only the proxy knows, and ``init_timeout`` bounds the wait.
    """
    if any(os.environ.get(var) for var in PROXY_VARS):
        return True
    parts = urlsplit(url)
    if not parts.hostname:
        return True
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    # A thread, because a name lookup does not honour the socket timeout.
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def new_run_id() -> str:
    """An 8-character wandb-style run id; from ``secrets`` so that ``seed_everything`` cannot repeat it."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def keep_wandb_files_in(folder: Path) -> None:
    """Point wandb's media staging, caches/logs and artifact downloads into ``folder``.

    Values already set (by the user, or by an earlier run in this process: wandb's service keeps them) stay.
    """
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        os.environ.setdefault(var, str((folder / sub).resolve()))


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` with a run folder per run, offline fallbacks and wandb files kept local.

    Args:
        project: wandb project; also the middle part of the run folder.
        name: run display name (wandb picks one when null).
        save_dir: root of the run folders: each run lives in ``<save_dir>/<project>/<run id>``.
        tags, group, notes: passed to ``wandb.init``.
        log_model: upload checkpoints as artifacts (``True``: at the end, ``"all"``: as they are saved).
        offline: log offline (upload later with ``wandb sync``); also chosen automatically without credentials.
        init_timeout: seconds ``wandb.init`` may wait for the server before falling back to offline.
        **kwargs: passed to Lightning's ``WandbLogger`` and ``wandb.init`` (``entity``, ``version``/``id`` to
            resume a run, ``settings``, ``job_type``, ...).
    """

    def __init__(self, project: str = "showtell", name: str | None = None, save_dir: str = "runs",
                 tags: list[str] | None = None, group: str | None = None, notes: str | None = None,
                 log_model: bool | Literal["all"] = False, offline: bool = False, init_timeout: float = 60.0,
                 **kwargs: Any):
        if not RequirementCache("wandb"):
            raise ModuleNotFoundError("WandbLogger needs the wandb package: `pip install wandb`, or log elsewhere, "
                                      "e.g. --trainer.logger=lightning.pytorch.loggers.CSVLogger")
        save_dir = str(kwargs.pop("dir", None) or save_dir)
        version, run_id = kwargs.pop("version", None), kwargs.pop("id", None)
        run_id = version or run_id or os.environ.get("WANDB_RUN_ID") or new_run_id()  # resume, sweep, new
        settings, self._requested_mode = kwargs.pop("settings", None), kwargs.pop("mode", None)
        # LightningCLI passes every wandb.init argument, unset ones as None: keep wandb's (and Lightning's) defaults
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        self.run_dir = Path(save_dir) / project / run_id
        super().__init__(name=name, save_dir=str(self.run_dir), version=run_id, offline=offline, project=project,
                         log_model=log_model, tags=tags, group=group, notes=notes, **kwargs)
        self._offline_requested = offline
        self._announce = False  # print the run's URL once it is online
        # Lightning's offline path sets WANDB_MODE for the whole process; the mode goes to wandb.init instead.
        self._offline = False
        self._wandb_init["settings"] = self._settings(settings, init_timeout)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # wandb >= 0.2x warns about the setting even when unset

    @staticmethod
    def _settings(user: Any, init_timeout: float) -> Any:
        """wandb.init settings: silent (this logger prints the lines that matter; wandb's warnings still show),
        a bounded start, the user's settings on top."""
        if user is not None and not isinstance(user, Mapping):
            return user  # a wandb.Settings object: the user's choice as it is
        settings: dict[str, Any] = {"init_timeout": init_timeout}
        if not (os.environ.get("WANDB_SILENT") or os.environ.get("WANDB_QUIET")):
            settings["silent"] = True
        return {**settings, **(user or {})}

    @property
    def log_dir(self) -> str:
        """This run's folder (same as ``save_dir``): test outputs, checkpoints and wandb files."""
        return str(self.run_dir)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The wandb run, started on first use: see the module docstring for the mode and fallbacks."""
        if self._experiment is None and self._wandb_init.get("mode") is None:
            self._wandb_init["mode"] = self._choose_mode()
        try:
            run = super().experiment
        except Exception as err:
            if self._experiment is not None or self._wandb_init["mode"] in ("offline", "disabled"):
                raise
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            _say(f"wandb: could not start an online run ({reason}); logging offline; {self._sync_hint()}")
            self._wandb_init["mode"] = "offline"
            self._announce = False
            import wandb

            wandb.teardown()  # the failed start keeps the run id reserved in wandb's service process
            run = super().experiment
        if self._announce and getattr(run, "url", None):
            self._announce = False
            _say(f"wandb: run {run.name} ({run.id}): {run.url}")
        return run

    def _sync_hint(self) -> str:
        return f"upload later with `wandb sync {self.run_dir / 'wandb' / 'offline-run-*'}`"

    def _choose_mode(self) -> str:
        """Prepare the run folder and wandb's file locations, then pick the mode (printing at most one line)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self._requested_mode or os.environ.get("WANDB_MODE", "")).strip().lower() != "disabled":
            keep_wandb_files_in(self.run_dir / "wandb")  # before wandb reads its environment
        mode = resolve_wandb_mode(self._offline_requested, requested=self._requested_mode,
                                  sync_hint=str(self.run_dir / "wandb" / "offline-run-*"))
        if mode in ("online", "shared"):
            from wandb.sdk import wandb_setup

            base_url = wandb_setup.singleton().settings.base_url or DEFAULT_BASE_URL
            if not server_reachable(base_url):
                _say(f"wandb: cannot reach {base_url}: logging offline; {self._sync_hint()}")
                return "offline"
            self._announce = True
        return mode


def _wandb_loggers(trainer: pl.Trainer) -> list[LightningWandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, LightningWandbLogger)]


def _thumbnail(path: Path, size: int) -> Any:
    """The image at ``path`` as an RGB PIL image at most ``size`` px on a side."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    image.thumbnail((size, size))
    return image


class SampleCaptionsTable(Callback):
    """Captions to look at in wandb, and run facts for every logger.

    - Each validation epoch (not the sanity check): a wandb table ``key`` with epoch, thumbnail, image id,
      generated caption and references of ``pl_module.val_samples``.
    - Test end: ``pl_module.test_metrics`` into the wandb run summary as ``test/<metric>``.
    - Fit start: trainable/frozen parameter counts as hyperparameters of every logger (CSV, TensorBoard too).
    - With this run's ``WandbLogger`` first: checkpoints without a ``dirpath`` go to ``<run folder>/checkpoints``
      (Lightning would nest them as ``<run folder>/<project>/<run id>/checkpoints``).

    wandb failures become one warning each; training goes on.

    Args:
        key: name of the table in wandb.
        thumbnail_size: longest side of the logged images, in pixels.
    """

    def __init__(self, key: str = "val/samples", thumbnail_size: int = 224):
        self.key = key
        self.thumbnail_size = thumbnail_size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.loggers or not isinstance(trainer.loggers[0], WandbLogger):
            return
        run_dir = trainer.log_dir  # broadcast from rank 0: other ranks made up their own run ids
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(run_dir) / "checkpoints")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if hasattr(pl_module, "parameter_counts"):
            trainable, frozen = pl_module.parameter_counts()
        else:
            trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            frozen = sum(p.numel() for p in pl_module.parameters()) - trainable
        for logger in trainer.loggers:
            self._safely(f"log parameter counts to {type(logger).__name__}", lambda lg=logger: lg.log_hyperparams(
                {"trainable_params": int(trainable), "frozen_params": int(frozen)}))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        samples = getattr(pl_module, "val_samples", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not samples:
            return
        for logger in _wandb_loggers(trainer):
            self._safely("log the sample captions table", lambda lg=logger: self._log_table(lg, trainer, samples))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = getattr(pl_module, "test_metrics", None) or {}
        if not trainer.is_global_zero or not metrics:
            return
        for logger in _wandb_loggers(trainer):
            self._safely("put the test metrics into the run summary", lambda lg=logger: self._summarise(lg, metrics))

    def _log_table(self, logger: LightningWandbLogger, trainer: pl.Trainer, samples: list[dict]) -> None:
        import wandb

        image_dir = getattr(getattr(trainer.datamodule, "corpus", None), "image_dir", None)
        rows = []
        for sample in samples:
            path = Path(image_dir) / sample["image_id"] if image_dir is not None else None
            image = None
            if path is not None and path.is_file():
                try:
                    image = wandb.Image(_thumbnail(path, self.thumbnail_size))
                except Exception:  # unreadable image file: the row keeps its text
                    image = None
            rows.append([trainer.current_epoch, image, sample["image_id"], sample["caption"],
                         " | ".join(sample["references"])])
        columns = ["epoch", "image", "image_id", "caption", "references"]
        logger.log_table(self.key, columns=columns, data=rows, step=trainer.global_step)

    @staticmethod
    def _summarise(logger: LightningWandbLogger, metrics: Mapping[str, float | None]) -> None:
        summary = logger.experiment.summary
        for name, value in metrics.items():
            if value is not None and value == value:  # skip missing and NaN metrics
                summary[f"test/{name}"] = float(value)

    @staticmethod
    def _safely(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as err:
            warnings.warn(f"SampleCaptionsTable could not {what} ({type(err).__name__}: {err}); "
                          "training continues", stacklevel=2)
