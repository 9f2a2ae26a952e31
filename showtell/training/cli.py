"""The command line: LightningCLI over ``CaptionDataModule`` and ``ShowTellModule``.

``python train.py [--config FILE ...] [--section.key=value ...]`` fits, then tests the best checkpoint,
prints the test metrics and the run folder. The typed constructor arguments of the two classes are the
schema (``--help`` lists them); values that follow from the data (vocabulary size, feature size) are linked
from the data module into the model, and the encoder choice is linked from the model into the data module
(it decides the preprocessing and the feature cache).

Runs are never lost: every config keeps ``checkpoints/last.ckpt``; ``--ckpt_path last`` (or a path) continues
an interrupted fit in its own run folder (the logger's version or wandb run id is pinned to that folder),
with model, optimizer, loop, callback and random-number states; SIGTERM or Ctrl-C ends a run with one line
giving the exact resume command; under SLURM the logger version is the job id, so a requeued job (Lightning's
SLURM environment saves and resumes it) appends to the same folder. Bad options, checkpoints and data end
with one line on stderr and exit code 2 before any work starts.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from showtell.data.datamodule import CaptionDataModule
from showtell.errors import CheckpointError, DatasetError, OptionError, WeightsUnavailableError
from showtell.options import already_checked, check_trainer_options
from showtell.training.checkpoints import resume_checkpoint
from showtell.training.distributed import DEFAULT_TIMEOUT_S
from showtell.training.module import ShowTellModule

# Errors whose message tells the user what to do: printed as one line, without a traceback.
USER_ERRORS = (DatasetError, WeightsUnavailableError, FileExistsError, OptionError, CheckpointError)


# Callbacks that need a logger; dropped with one line when a run has none (--trainer.logger false).
NEEDS_LOGGER = ("lightning.pytorch.callbacks.LearningRateMonitor", "LearningRateMonitor")


# Every command starts from the paper baseline; --config files are overlays on top of it.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flickr8k.yaml"


def frozen_encoder(finetune_after: int | None) -> bool:
    return finetune_after is None


# Data options that follow from the model (its encoder decides the preprocessing and the feature cache;
# self-critical training takes batches of images): (model option, data option, how the value is derived).
# Linked by the CLI; showtell.evaluate copies them from a checkpoint's hyperparameters with
# ``linked_data_options``.
MODEL_TO_DATA_LINKS = (("encoder", "encoder", None), ("weights", "weights", None),
                       ("finetune_after", "frozen_encoder", frozen_encoder), ("scst", "train_per_image", None))


# Values that follow from the data, linked into the model once the data module exists.
DATA_TO_MODEL_LINKS = ("vocab_size", "feature_dim")


def linked_data_options(model_hparams: dict) -> dict:
    """The data module arguments a model's hyperparameters decide (see ``MODEL_TO_DATA_LINKS``)."""
    return {target: (derive or (lambda v: v))(model_hparams[source])
            for source, target, derive in MODEL_TO_DATA_LINKS}


class ShowTellCLI(LightningCLI):
    def __init__(self, args=None, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # re-running into one folder must work
        kwargs.setdefault("auto_configure_optimizers", False)  # the module's own optimizer arguments
        kwargs.setdefault("seed_everything_default", 0)
        # A usage error raises (one line from main) instead of printing the whole usage text.
        kwargs.setdefault("parser_kwargs", {"default_config_files": [str(DEFAULT_CONFIG)], "exit_on_error": False})
        super().__init__(ShowTellModule, CaptionDataModule, args=args, run=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume an interrupted fit: 'last' (the newest run folder of this configuration) "
                                 "or a checkpoint file")
        parser.add_argument("--collective_timeout", type=float, default=DEFAULT_TIMEOUT_S,
                            help="multi-process runs: seconds a collective (barrier, broadcast, metric sync) may "
                                 "wait for the other processes before the run ends with an error naming the stage")
        for source, target, derive in MODEL_TO_DATA_LINKS:
            parser.link_arguments(f"model.{source}", f"data.{target}", compute_fn=derive)
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config
        # Every option checked before anything is read, generated or extracted (one OptionError line).
        ShowTellModule.check_options(config.model.as_dict())
        self._features_table = CaptionDataModule.check_options(config.data.as_dict(), encoder=False)
        if config.model.get("attach_encoder") and not config.data.get("features"):
            raise OptionError("--model.attach_encoder true declares the encoder behind --data.features, which is "
                              "not set; give the features file, or drop attach_encoder (a model trained on "
                              "images has its CNN already)")
        if not config.collective_timeout > 0:
            raise OptionError(f"--collective_timeout must be a positive number of seconds, got "
                              f"{config.collective_timeout!r}")
        trainer = config.trainer
        check_trainer_options(trainer.max_epochs, gradient_clip_val=trainer.gradient_clip_val,
                              log_every_n_steps=trainer.log_every_n_steps,
                              check_val_every_n_epoch=trainer.check_val_every_n_epoch,
                              accumulate_grad_batches=trainer.accumulate_grad_batches,
                              num_sanity_val_steps=trainer.num_sanity_val_steps)
        logger = config.trainer.logger
        if logger in (False, None):
            kept = [c for c in (config.trainer.callbacks or []) if _class_path(c) not in NEEDS_LOGGER]
            if len(kept) != len(config.trainer.callbacks or []):
                print("no logger (--trainer.logger false): LearningRateMonitor is left out", flush=True)
                config.trainer.callbacks = kept
        self.resume_from = None
        if config.ckpt_path:
            folders = run_folders(config)
            self.resume_from = resume_checkpoint(config.ckpt_path, folders)
            pin_run_folder(config, self.resume_from.parent.parent)
        elif os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
            pin_run_folder(config, None, version=f"slurm_{os.environ['SLURM_JOB_ID']}")  # requeues append here

    def instantiate_classes(self) -> None:
        """Build the objects; their constructors take the options check's results instead of checking again."""
        with already_checked(features_table=self._features_table):
            super().instantiate_classes()

    def summary(self) -> str:
        """One line: dataset sizes, vocabulary, parameters, device, precision."""
        data, trainer = self.datamodule, self.trainer
        sizes = "/".join(str(len(data.corpus.splits[s])) for s in ("train", "val", "test"))
        trainable, frozen = self.model.parameter_counts()
        device = trainer.strategy.root_device
        if device.type == "cuda":
            device = f"{device} ({torch.cuda.get_device_name(device)})"
        return (f"showtell: {data.corpus.format} data, {sizes} train/val/test images, vocab {data.vocab_size}, "
                f"{trainable / 1e6:.2f}M trainable + {frozen / 1e6:.2f}M frozen parameters, "
                f"{trainer.num_devices}x {device}, precision {trainer.precision}")


def quiet_known_warnings() -> None:
    """Silence warnings that are expected here and would only confuse users."""
    # The frozen CNN is in eval mode on purpose (BatchNorm statistics and dropout stay frozen).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python")
    warnings.filterwarnings("ignore", message=r"(?s).*(skip_none|instantiate_classes).*deprecated")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Multi-process runs: these metrics are computed from every process's captions (synchronised, de-duplicated),
    # so they are the same on every rank; Lightning cannot know and asks for sync_dist. The test captions are
    # de-duplicated by index, so the padding DistributedSampler's repeats are not counted twice.
    warnings.filterwarnings("ignore", message=r"(?s).*self\.log\('(val/(bleu\d|cider|perplexity)|test/bleu\d|"
                                              r"train/perplexity)', \.\.\., sync_dist=True\)")
    warnings.filterwarnings("ignore", message=r"(?s)Using `DistributedSampler` with the dataloaders\. During "
                                              r"`trainer\.(test|validate)\(\)`")
    # "Seed set to 0" on stderr: the seed is in the printed config and the run's hparams; stderr is for problems.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


# jsonargparse's lines that only repeat the problem (union alternatives, the value's Python type)
_NOISE = re.compile(r"^(Subtypes:|Errors:|Given value type:|Does not validate against any of the Union subtypes"
                    r"|- Expected a <class 'NoneType'>)")


def parser_complaint(text: str) -> str:
    """jsonargparse's error (after the usage text) in one short line, e.g. ``Parser key "model.lr": Expected a
    float. Got value: fast``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [k for k, line in enumerate(lines) if line.lower().startswith("error:")]
    if not starts:
        return lines[-1][:300] if lines else "(no message)"
    body = [re.sub(r"^error:\s*", "", lines[starts[-1]], flags=re.IGNORECASE), *lines[starts[-1] + 1:]]
    kept = [line.removeprefix("- ") for line in body if not _NOISE.match(line)]
    message = "; ".join(dict.fromkeys(kept)).replace(":;", ":")  # union alternatives repeat themselves
    message = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", message).replace("typing.", "")
    return message if len(message) <= 300 else message[:297] + "..."


def _class_path(item: Any) -> str:
    return str(getattr(item, "class_path", "") or type(item).__name__)


def _logger_root(config: Any) -> Path:
    """The folder holding a configuration's run folders (one per logger version / wandb run id)."""
    logger = config.trainer.logger
    if logger in (False, None):
        return Path(config.trainer.default_root_dir or ".")
    args = getattr(logger, "init_args", None)
    if args is None:  # logger: true = Lightning's default TensorBoardLogger under default_root_dir
        return Path(config.trainer.default_root_dir or ".") / "lightning_logs"
    if "project" in args:  # showtell.loggers.WandbLogger: <save_dir>/<project>/<run id>
        return Path(args.save_dir) / args.project
    return Path(args.save_dir) / (args.name or "")  # CSVLogger, TensorBoardLogger: <save_dir>/<name>/<version>


def run_folders(config: Any) -> list[Path]:
    """The run folders a configuration writes, where ``--ckpt_path last`` looks."""
    if config.trainer.logger in (False, None):
        return [_logger_root(config)]
    root = _logger_root(config)
    return sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []


def pin_run_folder(config: Any, folder: Path | None, version: str | None = None) -> None:
    """Make the logger write into ``folder`` (an existing run folder) or under ``version``: CSV/TensorBoard
    append to it, wandb resumes the same run id."""
    logger = config.trainer.logger
    args = getattr(logger, "init_args", None)
    if logger in (False, None) or args is None:
        if folder is not None and logger in (False, None):
            config.trainer.default_root_dir = str(folder)
        return
    if folder is not None:
        if folder.parent.resolve() != _logger_root(config).resolve():
            return  # a checkpoint from elsewhere: its state is resumed into a new run folder
        version = folder.name
    if "project" in args:
        if getattr(args, "id", None) is None:
            args.id = version
    elif getattr(args, "version", None) is None or folder is not None:
        args.version = version


def carry_csv_log(trainer, checkpoint: Path) -> None:
    """Resuming into a run folder: Lightning's CSVLogger starts a fresh ``metrics.csv``; log the rows written
    up to the checkpoint again first, so the file reads as one run (rows after it are redone by the resumed
    fit)."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        previous = Path(logger.log_dir) / "metrics.csv"
        if not previous.is_file():
            continue
        last_step = torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", -1)
        with open(previous, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            step = int(float(row.pop("step", -1) or -1))
            values = {k: int(float(v)) if k == "epoch" else float(v) for k, v in row.items() if v not in ("", None)}
            if 0 <= step <= last_step and values:
                logger.log_metrics(values, step=step)


def resume_command(args: list[str], folder: Path) -> str:
    """The exact command that continues this run from its last checkpoint."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")])
