"""The command line: LightningCLI over ``Flickr8kDataModule`` and ``ShowTellModule``.

``python train.py [--config FILE ...] [--section.key=value ...]`` fits, then tests the best checkpoint,
prints the test metrics and the run folder. The typed constructor arguments of the two classes are the
schema (``--help`` lists them); values that follow from the data (vocabulary size, feature size) are linked
from the data module into the model, and the encoder choice is linked from the model into the data module
(it decides the preprocessing and the feature cache).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from showtell.data import Flickr8kDataModule
from showtell.encoder import WeightsUnavailableError
from showtell.module import ShowTellModule
from showtell.outputs import collected_test_metrics, run_folder
from showtell.sources import DatasetError

# Errors whose message tells the user what to do: printed as one line, without a traceback.
USER_ERRORS = (DatasetError, WeightsUnavailableError, FileExistsError)

# Every command starts from the paper baseline; --config files are overlays on top of it.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flickr8k.yaml"


def frozen_encoder(finetune_after: int | None) -> bool:
    return finetune_after is None


# Data options that follow from the model (its encoder decides the preprocessing and the feature cache):
# (model option, data option, how the value is derived). Linked by the CLI; showtell.evaluate copies them
# from a checkpoint's hyperparameters with ``linked_data_options``.
MODEL_TO_DATA_LINKS = (("encoder", "encoder", None), ("weights", "weights", None),
                       ("finetune_after", "frozen_encoder", frozen_encoder))
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
        kwargs.setdefault("parser_kwargs", {"default_config_files": [str(DEFAULT_CONFIG)]})
        super().__init__(ShowTellModule, Flickr8kDataModule, args=args, run=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target, derive in MODEL_TO_DATA_LINKS:
            parser.link_arguments(f"model.{source}", f"data.{target}", compute_fn=derive)
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

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


def main(args: list[str] | None = None) -> dict:
    """Fit, test the best checkpoint, print the results table and the run folder. Returns test metrics.

    Bad input (no dataset, weights that cannot be downloaded, ...) ends with one line on stderr, exit code 2.
    """
    try:
        return _fit_and_test(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _fit_and_test(args: list[str] | None) -> dict:
    quiet_known_warnings()
    cli = ShowTellCLI(args=list(sys.argv[1:] if args is None else args))
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    print(cli.summary(), flush=True)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_s = time.perf_counter() - start
    if trainer.interrupted:
        print("training interrupted: skipping the test", file=sys.stderr)
        return {}
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    print(f"testing {'the best checkpoint ' + best if best else 'the last weights'}", flush=True)
    start = time.perf_counter()
    trainer.test(model, datamodule=data, ckpt_path=best, verbose=False)
    if trainer.is_global_zero:
        out_dir = run_folder(trainer)
        write_fit_summary(out_dir, trainer, fit_s, time.perf_counter() - start, model.hparams.test_beam_size)
        print(f"run folder: {out_dir}", flush=True)
    return collected_test_metrics(trainer)


def write_fit_summary(out_dir: Path, trainer, fit_s: float, test_s: float, test_beam_size: int) -> None:
    """``fit_summary.json``: epochs trained, the checkpointed best (epoch, monitored value), wall times."""
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    best_epoch = None
    if best:
        best_epoch = torch.load(best, map_location="cpu", weights_only=False).get("epoch")
    score = ckpt.best_model_score if best else None
    summary = {"epochs": trainer.current_epoch, "best_epoch": best_epoch,
               "monitor": ckpt.monitor if best else None,
               "best_score": None if score is None else float(score),
               "best_checkpoint": best, "fit_s": round(fit_s, 2), "test_s": round(test_s, 2),
               "test_beam_size": test_beam_size}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
