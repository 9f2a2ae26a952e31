"""Evaluation: score a captions file, or decode a split with a checkpoint and score it.

    python -m showtell.evaluate --captions FILE.jsonl [--json]
    python -m showtell.evaluate --ckpt CKPT [--split test|val] [--beam_size K] [--output_dir DIR] [--json]
                                [--data.root DIR --data.batch_size N ...]
                                [--trainer.accelerator auto --trainer.devices 1 --trainer.precision P]
                                [--trainer.devices N --trainer.strategy ddp --collective_timeout S]

``--captions`` reads one JSON object per line with ``caption`` (a string) and ``references`` (a list of
strings), e.g. the ``test_captions.jsonl`` of a run, and prints BLEU-1..4, METEOR, ROUGE-L and CIDEr-D.

``--ckpt`` decodes the split free-running (beam ``K``, default the checkpoint's ``test_beam_size``) through
``trainer.test``, exactly as training's test does (devices, DDP and precision included), and writes
``<split>_captions.jsonl`` and ``<split>_metrics.json`` (for ``test``: the same files as training's test)
into ``--output_dir``, by default ``<checkpoint folder>/eval_<split>_beam<K>``. With N processes each decodes its
share, the captions are gathered (the padding sampler's repeats dropped) and rank 0 scores and writes them: the
same numbers and files as one process. The data options default to
those stored in the checkpoint; the encoder and its weights always come from the model. A model trained with
the default frozen encoder reads the cached encoder features (computed once if missing: this needs the
pretrained weights); ``--data.cache_features false`` decodes the images through the checkpoint's own CNN.

Decoding always uses the checkpoint's vocabulary, and the references are scored as the data holds them, so a
checkpoint can be evaluated on another dataset (the transfer experiment of the Show and Tell paper: train on
Flickr30k, test on Flickr8k): ``--data.root OTHER``. Words the model does not know are simply never produced;
the teacher-forced loss counts them as ``<unk>``, and a line says how many reference words that is. With a
``--data.root`` other than the checkpoint's, the options that describe the training data's files
(``TRAINING_DATA_OPTIONS``: layout, dataset, image folder, restval, features file, split seed, demo) are not
taken from the checkpoint: the other folder is detected anew, or they are given on the command line.

Bad input (missing or malformed file, not a showtell checkpoint, other data) ends with one line on stderr
and exit code 2.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from showtell.data.datamodule import CaptionDataModule
from showtell.errors import EvaluationError, WeightsUnavailableError
from showtell.metrics.scores import caption_metrics, format_metrics_table
from showtell.training.checkpoints import read_checkpoint
from showtell.training.cli import MODEL_TO_DATA_LINKS, linked_data_options, quiet_known_warnings
from showtell.training.distributed import (
    DEFAULT_TIMEOUT_S,
    CollectiveTimeoutError,
    StopOnSigterm,
    apply_collective_timeout,
    collective_errors,
    process_rank,
)
from showtell.training.loading import describe, model_from_checkpoint
from showtell.training.module import ShowTellModule
from showtell.training.outputs import collected_test_metrics, metrics_json

# Data options that follow from the model (linked in showtell.training.cli), never set by hand here.
MODEL_LINKED_DATA_OPTIONS = tuple(target for _, target, _ in MODEL_TO_DATA_LINKS)


# The Trainer options this command takes (the others are fixed: no logger, no checkpoints).
TRAINER_OPTIONS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


# Data options that describe the training data's files: not carried to another --data.root.
TRAINING_DATA_OPTIONS = ("format", "dataset", "image_dir", "restval", "features", "split_seed", "demo",
                         "demo_images", "demo_image_size", "demo_seed")


def read_captions_file(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """(captions, references) from a JSONL file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file (expected a JSONL file of captions and references)")
    captions: list[str] = []
    references: list[list[str]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    caption, refs = _parse_line(line, f"{path}:{number}")
                    captions.append(caption)
                    references.append(refs)
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not UTF-8 text (expected a JSONL file of captions)") from None
    if not captions:
        raise EvaluationError(f"{path}: holds no captions (expected one JSON object per line with "
                              "'caption' and 'references')")
    return captions, references


def _parse_line(line: str, where: str) -> tuple[str, list[str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}: expected a JSON object with 'caption' and 'references', "
                              f"got a {type(record).__name__}")
    caption, refs = record.get("caption"), record.get("references")
    if not isinstance(caption, str):
        raise EvaluationError(f"{where}: 'caption' must be a string, got {describe(caption)}")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise EvaluationError(f"{where}: 'references' must be a non-empty list of strings, got {describe(refs)}")
    return caption, refs


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="showtell-evaluate", description=__doc__.split("\n\n")[0],
                            default_env=False)
    parser.add_argument("--captions", type=str | None, default=None,
                        help="score this JSONL file (fields: caption, references) instead of a checkpoint")
    parser.add_argument("--ckpt", type=str | None, default=None,
                        help="checkpoint to evaluate on --split; the --data.* options default to its own")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--split", type=Literal["test", "val"], default="test")
    parser.add_argument("--beam_size", type=int | None, default=None,
                        help="beam width (1 = greedy); default: the checkpoint's test_beam_size")
    parser.add_argument("--output_dir", type=str | None, default=None,
                        help="default: <checkpoint folder>/eval_<split>_beam<K>")
    parser.add_argument("--collective_timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="several processes (--trainer.devices N): seconds a collective may wait for the others "
                             "before the run ends with an error")
    parser.add_class_arguments(CaptionDataModule, "data", skip=set(MODEL_LINKED_DATA_OPTIONS) | {"test_split"})
    # Lightning's own typed Trainer options (the ones that decide where and how decoding runs).
    parser.add_class_arguments(L.Trainer, "trainer", skip=set(inspect.signature(L.Trainer).parameters)
                               - set(TRAINER_OPTIONS))
    parser.set_defaults({"trainer.devices": 1})
    return parser


def _data_defaults(stored: dict[str, Any], other_root: bool = False) -> dict[str, Any]:
    """``--data.*`` defaults from a checkpoint's data module arguments (only the ones this parser has; with
    ``other_root``, not those describing the training data's files)."""
    known = set(inspect.signature(CaptionDataModule).parameters) - set(MODEL_LINKED_DATA_OPTIONS) - {"test_split"}
    if other_root:
        known -= set(TRAINING_DATA_OPTIONS)
    return {f"data.{k}": v for k, v in stored.items() if k in known}


def _given_root(argv: list[str]) -> str | None:
    """The value of ``--data.root`` on the command line, or None."""
    for k, arg in enumerate(argv):
        if arg.startswith("--data.root="):
            return arg.split("=", 1)[1]
        if arg == "--data.root" and k + 1 < len(argv):
            return argv[k + 1]
    return None


def _same_folder(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def evaluate_captions_file(path: str | Path, as_json: bool) -> dict[str, float | None]:
    captions, references = read_captions_file(path)
    metrics = caption_metrics(captions, references)
    if as_json:
        print(json.dumps(metrics_json(metrics)))
    else:
        print(format_metrics_table(metrics, title=f"{path}: {len(captions)} captions"))
    return metrics


def evaluate_checkpoint(model: ShowTellModule, data: CaptionDataModule, output_dir: Path,
                        trainer_options: dict[str, Any],
                        collective_timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, float | None]:
    """Decode and score the data's ``test_split`` through ``trainer.test`` at the model's ``test_beam_size``;
    the module's ``TestOutputWriter`` writes the outputs on rank 0. Every rank returns the metrics."""
    trainer = L.Trainer(logger=False, default_root_dir=str(output_dir), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=data.hparams.progress, **trainer_options)
    apply_collective_timeout(trainer, collective_timeout)
    trainer.callbacks.append(StopOnSigterm())  # several processes: SIGTERM stops all at the same batch
    with collective_errors(trainer, collective_timeout):
        trainer.test(model, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        split = data.test_split
        print(f"wrote {split}_captions.jsonl and {split}_metrics.json to {output_dir}", flush=True)
    return collected_test_metrics(trainer)


def _run_checkpoint(parser: ArgumentParser, argv: list[str], ckpt: str) -> dict[str, float | None]:
    quiet_known_warnings()
    stored = read_checkpoint(ckpt)
    stored_data = dict(stored.get("datamodule_hyper_parameters") or {})
    root = _given_root(argv)
    other_root = root is not None and not _same_folder(root, stored_data.get("root"))
    parser.set_defaults(_data_defaults(stored_data, other_root))
    args = parser.parse_args(argv)  # again: explicit --data.* options override the checkpoint's
    beam_size = stored["hyper_parameters"].get("test_beam_size", 1) if args.beam_size is None else args.beam_size
    if beam_size < 1:
        raise EvaluationError(f"--beam_size must be at least 1, got {beam_size}")
    if not args.collective_timeout > 0:
        raise EvaluationError(f"--collective_timeout must be a positive number of seconds, got "
                              f"{args.collective_timeout}")
    model = model_from_checkpoint(stored, ckpt, test_beam_size=beam_size)
    if model.vocab is None:
        raise EvaluationError(f"checkpoint {ckpt} holds no vocabulary (not written by train.py); evaluate a "
                              "checkpoint of a train.py run")
    data_options = {k: v for k, v in args.data.as_dict().items() if not k.startswith("__")}  # "__path__": a file
    data_options.update(linked_data_options(model.hparams), test_split=args.split)
    if data_options.get("features") is None and getattr(model.encoder, "backbone", True) is None:
        raise EvaluationError(f"checkpoint {ckpt} was trained on precomputed features (data.features) and has no "
                              f"CNN: give --data.features with the same encoder's features of the images of "
                              f"{data_options['root']}")
    if other_root and process_rank() == 0:
        print(f"transfer: evaluating on {root} a model trained on {stored_data.get('root')} (its vocabulary, "
              f"{len(model.vocab)} words; the layout of {root} is detected anew)", flush=True)
    default_dir = Path(ckpt).parent / f"eval_{args.split}_beam{beam_size}"
    output_dir = Path(args.output_dir or default_dir).expanduser().resolve()
    trainer_options = {k: v for k, v in args.trainer.as_dict().items() if v is not None}
    data = CaptionDataModule(**data_options)
    data.use_vocabulary(model.vocab)  # decode with the model's words; score against the data's references
    return evaluate_checkpoint(model, data, output_dir, trainer_options, args.collective_timeout)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 2 bad input, 1 processes stopped answering each other,
    143 stopped by SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed by the parser
        return int(done.code or 0)
    if (args.captions is None) == (args.ckpt is None):
        print("evaluate: give exactly one of --captions FILE.jsonl or --ckpt CKPT", file=sys.stderr)
        return 2
    try:
        if args.captions is not None:
            evaluate_captions_file(args.captions, args.json)
            return 0
        metrics = _run_checkpoint(parser, argv, args.ckpt)
    except SIGTERMException:  # a SystemExit: before the parser's clause
        if process_rank() == 0:
            print("evaluate: stopped by SIGTERM", file=sys.stderr, flush=True)
        return 143
    except SystemExit as done:  # the second parse (with the checkpoint's data defaults) found a usage error
        return int(done.code or 0)
    except (ValueError, OSError, MisconfigurationException, WeightsUnavailableError) as err:
        # DatasetError is a ValueError; so is the module's vocabulary check
        print(f"evaluate: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except CollectiveTimeoutError as err:
        print(f"evaluate: {err}", file=sys.stderr, flush=True)
        return 1
    if args.json and process_rank() == 0:  # every process of a multi-process run has the metrics: print once
        print(json.dumps(metrics_json(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
