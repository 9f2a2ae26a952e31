"""Weights & Biases logging the way researchers use it, safe on machines without credentials or network.

``WandbLogger`` is Lightning's ``WandbLogger`` with typed arguments for YAML (``class_path:
showtell.loggers.WandbLogger``), set up only through public means (its constructor, whose extra keyword arguments
go to ``wandb.init``, and the ``settings`` it hands to ``wandb.init``: a mapping, or a copy of the user's
``wandb.Settings``), with these differences:

- Mode: ``WANDB_MODE=disabled`` (or ``mode: disabled``) turns it off; ``offline=True``, ``WANDB_MODE=offline`` or
  ``mode: offline`` logs offline; otherwise it logs online when wandb has credentials (``WANDB_API_KEY``,
  ``WANDB_IDENTITY_TOKEN_FILE``, or a ``.netrc`` entry for the server, which ``wandb login`` writes; looked up
  locally) and offline when it has none, with one line saying how to upload later with ``wandb sync``. It never
  prompts. The mode goes to ``wandb.init`` in its settings; the process environment is not touched.
- No network: before an online start the server gets a TCP probe (a few seconds; skipped behind a proxy), and
  ``wandb.init`` gets the ``init_timeout`` setting (wandb's default 90 s stalls runs on machines without
  internet). An unreachable server or a failed start falls back to offline with one line, not a traceback.
- Files: each run has its own folder ``<save_dir>/<project>/<run id>`` (``save_dir`` = ``log_dir``; the Trainer
  writes the test outputs there, ``SampleCaptionsTable`` puts checkpoints without a ``dirpath`` in its
  ``checkpoints`` folder). wandb's own run folder is ``<run folder>/wandb`` (``wandb.init(dir=...)``). wandb takes
  the places for staged media and artifacts (``WANDB_DATA_DIR``), caches and its service's logs
  (``WANDB_CACHE_DIR``) and artifact downloads (``WANDB_ARTIFACT_DIR``) only from environment variables, read
  when it writes; so while the logger's own wandb calls run (the start, logging, checkpoint artifacts) they are
  set to ``<run folder>/wandb/{data,cache,artifacts}``, and restored as they were when each call returns.
  Variables the user set are left alone. ``WANDB_CONFIG_DIR`` is not touched: wandb only reads it (``wandb
  login --host`` settings).
- Resume: ``id`` (or Lightning's ``version``, or ``WANDB_RUN_ID`` from a sweep) names the run, and
  ``resume="allow"`` (Lightning's default) continues an existing run of that id; ``run_id`` reads it back.

Limits of doing this with public means only: wandb calls made directly on ``logger.experiment`` (say
``experiment.log_artifact``), ``Artifact.download()`` and the static ``WandbLogger.download_artifact`` run outside
the logger's calls and use wandb's default places (``~/.local/share/wandb``, ``~/.cache/wandb``, ``./artifacts``)
unless the user sets the variables. wandb's service process is shared by all runs of a Python process and keeps
the environment it started with: after the first run, its own logs stay in that run's ``wandb/cache``. Lightning's
logger always hands ``anonymous`` to ``wandb.init``, so recent wandb (0.31 here) prints one warning about it
per process.

``SampleCaptionsTable`` logs a table of generated captions with thumbnails at each validation epoch and the
full test metrics into the run summary (wandb only), and the parameter counts as hyperparameters (any logger).

wandb is imported only when a run starts, never when this module is imported.
"""

from __future__ import annotations

import configparser
import contextlib
import netrc
import os
import secrets
import socket
import string
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core.imports import RequirementCache

from showtell.files import say
from showtell.training.outputs import collected_test_metrics

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
FILE_VARS = (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_ARTIFACT_DIR", "artifacts"))


def note(line: str) -> None:
    say(line, stderr=True)  # beside the run's own output, never in it


def _setting(settings: Any, key: str) -> Any:
    """The value the user gave ``key`` in ``settings`` (a mapping or a ``wandb.Settings``), else None."""
    if settings is None:
        return None
    if isinstance(settings, Mapping):
        return settings.get(key)
    return getattr(settings, key) if key in getattr(settings, "model_fields_set", ()) else None


def wandb_base_url(settings: Any = None) -> str:
    """The wandb server URL, resolved locally in wandb's order: a ``base_url`` setting, ``WANDB_BASE_URL``, the
    ``base_url`` that ``wandb login --host`` saved in wandb's settings file (``$WANDB_CONFIG_DIR/settings``, by
    default ``~/.config/wandb/settings``), else wandb's cloud server."""
    url = _setting(settings, "base_url") or os.environ.get("WANDB_BASE_URL")
    if not url:
        config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join("~", ".config", "wandb")
        parser = configparser.ConfigParser()
        try:
            parser.read(os.path.join(os.path.expanduser(config_dir), "settings"))
            url = parser.get("default", "base_url", fallback=None)
        except (configparser.Error, OSError, UnicodeDecodeError):
            url = None
    return (url or DEFAULT_BASE_URL).strip().rstrip("/")


def _netrc_path() -> Path:
    """The ``.netrc`` file wandb reads and ``wandb login`` writes: ``$NETRC``, else ``~/.netrc`` or ``~/_netrc``."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in (".netrc", "_netrc"):
        if (path := Path("~", name).expanduser()).exists():
            return path
    return Path("~", ".netrc").expanduser()


def has_wandb_credentials(base_url: str | None = None, settings: Any = None) -> bool:
    """Whether wandb would find credentials for the server at ``base_url``, looked up locally (never over the
    network, never a prompt), in the places wandb looks: an ``api_key`` or ``identity_token_file`` setting,
    ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or a ``.netrc`` entry for the server's ``host[:port]``."""
    if _setting(settings, "api_key") or _setting(settings, "identity_token_file"):
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(base_url or wandb_base_url(settings)).netloc
    if not host:
        return False
    try:
        entry = netrc.netrc(str(_netrc_path())).authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no file, or one wandb would not read either
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(offline: bool, *, requested: str | None = None, settings: Any = None,
                       sync_hint: str = "<run folder>/wandb/offline-run-*") -> str:
    """The wandb mode to start in: ``disabled``, ``offline``, ``online`` (or ``shared`` when asked for).

    ``requested`` (a ``mode`` argument) or else ``WANDB_MODE``: ``disabled`` wins, then ``offline``; an online
    start without credentials (``settings``: the run's wandb settings, which may name the server or hold a key)
    becomes offline. Offline starts print one line with the ``wandb sync`` command (``sync_hint`` = the offline
    run's path).
    """
    env_mode = (requested or os.environ.get("WANDB_MODE", "")).strip().lower()
    sync = f"upload later with `wandb sync {sync_hint}`"
    if env_mode == "disabled":
        return "disabled"
    if offline or env_mode in ("offline", "dryrun"):
        note(f"wandb: logging offline; {sync}")
        return "offline"
    if not has_wandb_credentials(settings=settings):
        note(f"wandb: no API key configured (set WANDB_API_KEY or run `wandb login`): logging offline; {sync}")
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


@contextlib.contextmanager
def wandb_files_in(folder: Path) -> Iterator[None]:
    """While the block runs, point wandb's staging (``WANDB_DATA_DIR``), caches and logs (``WANDB_CACHE_DIR``)
    and artifact downloads (``WANDB_ARTIFACT_DIR``) into ``folder``; afterwards the environment is as before.

    wandb has no setting for these places, only the variables, which it reads each time it writes. Variables
    already set (by the user, or by an enclosing block) are left as they are.
    """
    added = {var: os.environ.get(var) for var, _ in FILE_VARS if not os.environ.get(var)}
    for var, sub in FILE_VARS:
        if var in added:
            os.environ[var] = str((folder / sub).resolve())
    try:
        yield
    finally:
        for var, before in added.items():
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` with a run folder per run, offline fallbacks and wandb files kept local.

    Args:
        project: wandb project; also the middle part of the run folder.
        name: run display name (wandb picks one when null).
        save_dir: root of the run folders: each run lives in ``<save_dir>/<project>/<run id>``.
        tags, group, notes: passed to ``wandb.init``.
        log_model: upload checkpoints as artifacts (``True``: at the end, ``"all"``: as they are saved).
        offline: log offline (upload later with ``wandb sync``); also chosen automatically without credentials.
        init_timeout: seconds ``wandb.init`` may wait for the server before falling back to offline (the
            ``init_timeout`` setting; one given in ``settings`` wins).
        id: run id, to resume a run (``resume="allow"``: the run continues if it exists); also the last part of
            the run folder. Default: Lightning's ``version`` if given, else ``WANDB_RUN_ID``, else a new id.
        **kwargs: passed to Lightning's ``WandbLogger`` and ``wandb.init`` (``entity``, ``version``, ``resume``,
            ``mode``, ``settings`` (a mapping or a ``wandb.Settings``), ``job_type``, ...).
    """

    def __init__(self, project: str = "showtell", name: str | None = None, save_dir: str = "runs",
                 tags: list[str] | None = None, group: str | None = None, notes: str | None = None,
                 log_model: bool | Literal["all"] = False, offline: bool = False, init_timeout: float = 60.0,
                 id: str | None = None, **kwargs: Any):
        if not RequirementCache("wandb"):
            raise ModuleNotFoundError("WandbLogger needs the wandb package: `pip install wandb`, or log elsewhere, "
                                      "e.g. --trainer.logger=lightning.pytorch.loggers.CSVLogger")
        if offline and log_model:  # Lightning's check: its `offline` is not used (it would set WANDB_MODE)
            raise MisconfigurationException(f"Providing log_model={log_model} and offline={offline} is an invalid "
                                            "configuration since model checkpoints cannot be uploaded in offline "
                                            "mode.\nHint: Set `offline=False` to log your model.")
        save_dir = str(kwargs.pop("dir", None) or save_dir)
        run_id = kwargs.pop("version", None) or id or os.environ.get("WANDB_RUN_ID") or new_run_id()
        requested_mode = kwargs.pop("mode", None)
        # LightningCLI passes every wandb.init argument, unset ones as None: keep wandb's (and Lightning's) defaults
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        self.run_dir = Path(save_dir) / project / run_id
        # The settings handed to wandb.init: this object is the one Lightning passes on, so the mode chosen at the
        # start (see `experiment`) is written into it then.
        self.wandb_settings = self._build_settings(kwargs.pop("settings", None), init_timeout)
        self._requested_mode = requested_mode or _setting(self.wandb_settings, "mode")
        self._offline_requested = offline
        self._chosen_mode: str | None = None
        self._run_started = False
        self._announce_url = False  # print the run's URL once it is online
        super().__init__(name=name, save_dir=str(self.run_dir), version=run_id, offline=False, project=project,
                         log_model=log_model, tags=tags, group=group, notes=notes, settings=self.wandb_settings,
                         **kwargs)

    @staticmethod
    def _build_settings(user: Any, init_timeout: float) -> Any:
        """wandb.init settings: silent (this logger prints the lines that matter; wandb's warnings still show),
        a bounded start, the user's settings on top. A ``wandb.Settings`` is copied, not changed."""
        quiet_env = bool(os.environ.get("WANDB_SILENT") or os.environ.get("WANDB_QUIET"))
        if user is not None and not isinstance(user, Mapping):
            settings = user.model_copy()  # a wandb.Settings (pydantic): the user's fields stay as given
            if "init_timeout" not in user.model_fields_set:
                settings.init_timeout = init_timeout
            if "silent" not in user.model_fields_set and not quiet_env:
                settings.silent = True
            return settings
        defaults: dict[str, Any] = {"init_timeout": init_timeout}
        if not quiet_env:
            defaults["silent"] = True
        return {**defaults, **(user or {})}

    def _set_mode(self, mode: str) -> None:
        self._chosen_mode = mode
        if isinstance(self.wandb_settings, Mapping):
            self.wandb_settings["mode"] = mode
        else:
            self.wandb_settings.mode = mode

    @property
    def log_dir(self) -> str:
        """This run's folder (same as ``save_dir``): test outputs, checkpoints and wandb files."""
        return str(self.run_dir)

    @property
    def run_id(self) -> str:
        """The wandb run id (also the last part of the run folder): pass it as ``id`` to resume this run."""
        return str(self.version)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The wandb run, started on first use: see the module docstring for the mode and fallbacks."""
        if self._run_started:
            with self._wandb_files_here():  # a run attached to again (after pickling) starts here too
                return super().experiment
        mode = self._choose_mode()
        with self._wandb_files_here():
            try:
                run = super().experiment
            except Exception as err:
                if mode in ("offline", "disabled"):
                    raise
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                note(f"wandb: could not start an online run ({reason}); logging offline; {self._sync_hint()}")
                self._set_mode("offline")
                self._announce_url = False
                import wandb

                wandb.teardown()  # the failed start keeps the run id reserved in wandb's service process
                run = super().experiment
        self._run_started = True
        if self._announce_url and getattr(run, "url", None):
            self._announce_url = False
            note(f"wandb: run {run.name} ({run.id}): {run.url}")
        return run

    def _sync_hint(self) -> str:
        return f"upload later with `wandb sync {self.run_dir / 'wandb' / 'offline-run-*'}`"

    def _choose_mode(self) -> str:
        """Make the run folder and pick the mode (printing at most one line); the mode goes into the settings."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mode = resolve_wandb_mode(self._offline_requested, requested=self._requested_mode,
                                  settings=self.wandb_settings, sync_hint=str(self.run_dir / "wandb" / "offline-run-*"))
        self._announce_url = False
        if mode in ("online", "shared"):
            base_url = wandb_base_url(self.wandb_settings)
            if not server_reachable(base_url):
                note(f"wandb: cannot reach {base_url}: logging offline; {self._sync_hint()}")
                mode = "offline"
            else:
                self._announce_url = True
        self._set_mode(mode)
        return mode

    def _wandb_files_here(self) -> contextlib.AbstractContextManager[None]:
        """wandb's staging, cache and artifact folders inside the run folder for one call (rank 0, not disabled)."""
        mode = self._chosen_mode or (self._requested_mode or os.environ.get("WANDB_MODE", "")).strip().lower()
        if mode == "disabled" or rank_zero_only.rank > 0:
            return contextlib.nullcontext()
        return wandb_files_in(self.run_dir / "wandb")

    # The calls through which wandb writes files (media and table staging, checkpoint artifacts).
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self._wandb_files_here():
            super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        with self._wandb_files_here():
            super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        with self._wandb_files_here():
            super().finalize(status)

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Any:
        with self._wandb_files_here():
            return super().use_artifact(artifact, artifact_type)


def _wandb_loggers(trainer: pl.Trainer) -> list[LightningWandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, LightningWandbLogger)]


def _thumbnail(path: Path, size: int) -> Any:
    """The image at ``path`` as an RGB PIL image at most ``size`` px on a side."""
    from showtell.files import load_rgb

    image = load_rgb(path)
    image.thumbnail((size, size))
    return image


class SampleCaptionsTable(Callback):
    """Captions to look at in wandb, and run facts for every logger.

    - Each validation epoch (not the sanity check): a wandb table ``key`` with epoch, thumbnail, image id,
      generated caption and references of ``pl_module.val_samples``.
    - Test end: the full test metrics (``showtell.training.outputs.collected_test_metrics``) into the wandb run summary
      as ``test/<metric>``.
    - Fit start: trainable/frozen parameter counts as hyperparameters of every logger (CSV, TensorBoard too).
    - Setup, only when this module's ``WandbLogger`` is the first logger: a ``ModelCheckpoint`` given no
      ``dirpath`` gets ``<run folder>/checkpoints`` (Lightning would nest it, still inside the run folder, as
      ``<run folder>/<project>/<run id>/checkpoints``). A ``dirpath`` the user set is never changed.

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
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:  # only a dirpath nobody set
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
        metrics = collected_test_metrics(trainer)
        if not trainer.is_global_zero or not metrics:
            return
        for logger in _wandb_loggers(trainer):
            self._safely("put the test metrics into the run summary", lambda lg=logger: self._summarise(lg, metrics))

    def _log_table(self, logger: LightningWandbLogger, trainer: pl.Trainer, samples: list[dict]) -> None:
        import wandb

        image_path = getattr(trainer.datamodule, "image_path", None)  # COCO: in its train2014/val2014 folder
        rows = []
        for sample in samples:
            path = image_path(sample["image_id"]) if image_path is not None else None
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
