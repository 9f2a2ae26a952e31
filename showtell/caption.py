"""Caption image files and folders with a trained checkpoint, on one or several devices.

    python -m showtell.caption --ckpt CKPT IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...] [--beam_size 3] [--top_k K]
                               [--max_len N] [--batch_size 32] [--num_workers 0] [--json]
                               [--accelerator auto|cpu|gpu|cuda] [--devices N] [--collective_timeout S]
                               [--parts_dir DIR] [--no_progress]
                               [--references CAPTION_FILE] [--gallery OUT.png [--columns 4]]

An argument is an image file or a folder; a folder stands for its image files (``.jpg .jpeg .png .bmp .gif .webp
.tif .tiff``, any case), sorted by name, not its subfolders. Any image PIL reads (JPEG, PNG, grayscale, CMYK,
RGBA, ...) is converted to RGB and preprocessed exactly as evaluation does in training:
``showtell.model.backbones.eval_transform`` with the model's encoder weights and the checkpoint's
``data.image_size``, no augmentation. Images are decoded in batches through Lightning's predict loop
(``Trainer.predict``, ``ShowTellModule.predict_step``: the model's own ``generate``, the decoding of validation
and test). Output, in
the order of the arguments, each image once:

- text: ``PATH<TAB>caption``; with ``--top_k K`` (K > 1) a ``PATH`` line, then ``  1. caption  (log p -1.23)``
  for the K best captions (the beam is widened to K if it is narrower);
- ``--json``: one JSON object per line, ``{"path", "caption"}`` plus, with K > 1,
  ``"captions": [{"caption", "log_prob"}, ...]`` best first.

Several devices: ``--devices N`` (N > 1) runs Lightning's ``ddp`` strategy, N processes (``--accelerator cpu
--devices 2`` on a CPU); Lightning starts the other processes by running this same command line again. Process r
decodes batches r, r+N, r+2N, ... (the batches of a one-process run, so the captions are exactly those of
``--devices 1``) and writes its results to its own part file; at the end process 0 merges the parts in input
order and prints them. One process prints as it goes; several print when all are done. The parts folder is a
fresh folder in the system's temporary folder, or in ``--parts_dir`` (with several machines: a folder all of them
see). ``--collective_timeout S`` (default 1800) is how long a process waits for the others at a synchronisation
point before it stops with one line. Several processes need the command line (``main(argv)`` called from Python
runs one process: Lightning would start the others with the calling program's command line). Memory does not
grow with the number of images beyond their paths (held once per process in two numpy arrays, ``PathTable``):
results are streamed to stdout or the part files, and kept only for ``--gallery``. ``--device auto|cpu|cuda`` is
the deprecated spelling of ``--accelerator``. The progress bar goes to stderr, when stderr is a terminal
(``--no_progress`` hides it).

``--references FILE`` (a caption file of any layout showtell reads: ``Flickr8k.token.txt``, ``captions.txt``,
``dataset_*.json``) adds each image's human captions, found by file name: ``"references"`` in the JSON lines,
which ``python -m showtell.evaluate --captions`` then scores, and one reference per photo in the gallery.
``--gallery OUT.png`` also writes a contact sheet of the photos with their captions (``showtell.gallery``).

An unreadable file (missing, truncated, damaged, not an image) gets ``caption: PATH: reason`` on stderr, in
order, and exit code 1; the other images are still captioned. A folder without image files: one line, exit code
1. A bad checkpoint or option, or one trained on precomputed features without ``--model.attach_encoder`` (it has
no CNN): one line before any image is read, exit code 2; so does a multi-process run in which a process crashes
or stops answering the others (``--collective_timeout``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from showtell.data.formats import captions_by_image
from showtell.errors import CaptionError, DatasetError, EvaluationError
from showtell.model.backbones import eval_transform
from showtell.training.distributed import (
    DEFAULT_TIMEOUT_S,
    CollectiveTimeoutError,
    apply_collective_timeout,
    collective_errors,
    process_rank,
)
from showtell.training.gallery import GalleryError, GalleryItem, write_gallery
from showtell.training.loading import load_model
from showtell.training.module import ShowTellModule
from showtell.training.predict import (
    CaptionWriter,
    ImageFiles,
    ImageReadError,
    PathTable,
    ProcessBatches,
    Ranked,
    StderrProgressBar,
    collate_images,
    expand_inputs,
)

GALLERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="showtell-caption", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders of them (their image files sorted by name, not recursive)")
    parser.add_argument("--beam_size", type=int, default=3, help="beam width (1 = greedy); default 3")
    parser.add_argument("--top_k", type=int, default=1, help="print the K best captions with log-probabilities")
    parser.add_argument("--max_len", type=int, default=None,
                        help="longest caption in words (default: the model's max_caption_len)")
    parser.add_argument("--accelerator", choices=ACCELERATORS, default=None,
                        help="where to decode (Lightning's --trainer.accelerator); default auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="deprecated spelling of --accelerator")
    parser.add_argument("--devices", type=int, default=1,
                        help="processes (GPUs, or CPU processes with --accelerator cpu); > 1 runs Lightning's ddp")
    parser.add_argument("--batch_size", type=int, default=32, help="images decoded at once (per process)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="image-reading worker processes per decoding process; default 0 (read in-process)")
    parser.add_argument("--collective_timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds a process waits for the others (several devices); default {DEFAULT_TIMEOUT_S:g}")
    parser.add_argument("--parts_dir", default=None,
                        help="where the processes of a multi-device run write their results (default: the system's "
                             "temporary folder; several machines: a folder they all see)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (shown on a terminal's stderr)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--references", metavar="CAPTION_FILE", default=None,
                        help="a caption file (Flickr8k.token.txt, captions.txt, dataset_*.json): add each image's "
                             "human captions (JSON 'references', for showtell.evaluate --captions)")
    parser.add_argument("--gallery", metavar="OUT.png", default=None,
                        help="also write the photos with their captions as a grid image (png, jpg, pdf, svg)")
    parser.add_argument("--columns", type=int, default=4, help="photos per gallery row; default 4")
    return parser


def format_result(path: str, ranked: Ranked, top_k: int, as_json: bool,
                  references: list[str] | None = None) -> str:
    best = ranked[0][0] if ranked else ""
    if as_json:
        record: dict = {"path": path, "caption": best}
        if top_k > 1:
            record["captions"] = [{"caption": c, "log_prob": lp} for c, lp in ranked]
        if references:
            record["references"] = references
        return json.dumps(record)
    if top_k == 1:
        return f"{path}\t{best}"
    return "\n".join([path, *(f"  {r}. {c}  (log p {lp:.2f})" for r, (c, lp) in enumerate(ranked, 1))])


def _accelerator(args: argparse.Namespace) -> str:
    """``--accelerator``, or the deprecated ``--device``; an error for a GPU that is not there."""
    if args.accelerator is not None and args.device is not None and args.accelerator != args.device:
        raise EvaluationError(f"--device {args.device} (deprecated) contradicts --accelerator {args.accelerator}; "
                              "give --accelerator only")
    name = args.accelerator or args.device or "auto"
    flag = "--accelerator" if args.accelerator is not None or args.device is None else "--device"
    if name == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"{flag} cuda: no CUDA GPU is available; use {flag} cpu")
    if name == "gpu" and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise EvaluationError(f"{flag} gpu: no CUDA GPU (or Apple MPS) is available; use {flag} cpu")
    return name


def _check_options(args: argparse.Namespace) -> None:
    for flag in ("beam_size", "top_k", "batch_size", "max_len", "columns", "devices"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvaluationError(f"--{flag} must be at least 1, got {value}")
    if args.num_workers < 0:
        raise EvaluationError(f"--num_workers must be at least 0, got {args.num_workers}")
    if not args.collective_timeout > 0:
        raise EvaluationError(f"--collective_timeout must be a positive number of seconds, got "
                              f"{args.collective_timeout:g}")
    if args.parts_dir is not None and not os.path.isdir(args.parts_dir):
        raise EvaluationError(f"--parts_dir {args.parts_dir}: no such folder")
    if args.gallery is not None:
        gallery = Path(args.gallery)
        if gallery.suffix.lower() not in GALLERY_SUFFIXES:
            raise EvaluationError(f"--gallery {gallery}: name a {', '.join(GALLERY_SUFFIXES)} file")
        if not gallery.parent.is_dir():
            raise EvaluationError(f"--gallery {gallery}: folder {gallery.parent} does not exist")


def read_references(path: str) -> dict[str, list[str]]:
    """Image file name -> its human captions, from a caption file of any layout."""
    try:
        return captions_by_image(path)
    except DatasetError as err:
        raise EvaluationError(f"--references: {err}") from None


class Printer:
    """Process 0's output: one result at a time, in input order (``CaptionWriter``'s ``report``)."""

    def __init__(self, args: argparse.Namespace, references: dict[str, list[str]]):
        self.args, self.references = args, references
        self.failed = 0
        self.gallery: list[GalleryItem] = []  # kept only for --gallery

    def __call__(self, path: str, result: Ranked | ImageReadError) -> None:
        args = self.args
        if isinstance(result, ImageReadError):
            print(f"caption: {path}: {result}", file=sys.stderr, flush=True)
            self.failed += 1
            return
        refs = self.references.get(Path(path).name)
        if args.references and not refs:
            print(f"caption: {path}: no references in {args.references} (no 'references' in its line)",
                  file=sys.stderr, flush=True)
        print(format_result(path, result, args.top_k, args.json, refs), flush=True)
        if args.gallery is not None:
            self.gallery.append(GalleryItem(path, result, refs[0] if refs else None))


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """No Lightning chatter (accelerator info lines, hints about data loader workers and custom samplers, a
    deprecation inside Lightning): the command's stderr carries its own lines only."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        warnings.filterwarnings("ignore", message=r".*custom batch sampler")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning on new torch
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _predict(args: argparse.Namespace, model: ShowTellModule, paths: PathTable,
             transform: Callable[[Image.Image], Tensor], accelerator: str, printer: Printer,
             launched_as_given: bool) -> None:
    """Caption ``paths`` through ``Trainer.predict``; process 0 reports every result through ``printer``."""
    writer = CaptionWriter(paths, printer, args.parts_dir)
    progress = not args.no_progress and sys.stderr.isatty()
    trainer = L.Trainer(accelerator=accelerator, devices=args.devices,
                        strategy="ddp" if args.devices > 1 else "auto", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress,
                        callbacks=[*([StderrProgressBar()] if progress else []), writer],
                        use_distributed_sampler=False)
    if trainer.world_size > 1 and not launched_as_given:
        raise EvaluationError("--devices > 1 runs from the command line only (python -m showtell.caption ...): "
                              "Lightning starts the other processes by running this process's command line again")
    apply_collective_timeout(trainer, args.collective_timeout)
    model.predict_decoding = {"beam_size": max(args.beam_size, args.top_k), "top_k": args.top_k,
                              "max_len": args.max_len}
    loader = DataLoader(ImageFiles(paths, transform), batch_sampler=ProcessBatches(len(paths), args.batch_size),
                        num_workers=args.num_workers, collate_fn=collate_images,
                        pin_memory=accelerator in ("cuda", "gpu") and torch.cuda.is_available())
    try:
        with collective_errors(trainer, args.collective_timeout):
            trainer.predict(model, dataloaders=loader, return_predictions=False)
    except BaseException as err:
        # Lightning leaves the processes it started running when process 0 fails: they would wait for it
        # until their own timeout.
        kill = getattr(trainer.strategy.launcher, "kill", None) if trainer.world_size > 1 else None
        if kill is not None:
            kill(signal.SIGKILL)
        if trainer.world_size > 1 and _lost_peer(err):
            raise CaptionError(f"process {trainer.global_rank}: another process of the run stopped or crashed "
                               f"(see its output above): {str(err).split('] ', 1)[-1][:160]}") from None
        raise


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another process went away (gloo: "Connection closed by
    peer"), rather than an error of this process."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("closed by peer" in text or "reset by peer" in text)


def main(argv: list[str] | None = None) -> int:
    """Caption the images; returns the exit code (0 ok, 1 some files unreadable, 2 bad checkpoint/options)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed by argparse
        return int(done.code or 0)
    first = process_rank() == 0  # process 0 of a multi-device run (the others run this again), or the only one
    try:
        _check_options(args)
        accelerator = _accelerator(args)
        model, data_hparams = load_model(args.ckpt)
        if model.encoder.backbone is None:
            raise EvaluationError(f"checkpoint {args.ckpt} was trained on precomputed features (data.features) "
                                  "without --model.attach_encoder, so it has no CNN to read images with; use a "
                                  "checkpoint trained on images or with an attached encoder")
        transform = eval_transform(model.hparams.encoder, model.hparams.weights, data_hparams.get("image_size"))
        references = read_references(args.references) if args.references and first else {}
    except ValueError as err:  # EvaluationError, or unknown encoder weights in the checkpoint
        print(f"caption: {err}", file=sys.stderr)
        return 2
    paths, problems = expand_inputs(args.images)
    if first:
        for problem in problems:
            print(f"caption: {problem}", file=sys.stderr, flush=True)
    printer = Printer(args, references)
    if len(paths) or not first:  # the other processes always join process 0's collectives
        launched_as_given = argv is None or list(argv) == sys.argv[1:]
        try:
            with _quiet_lightning():
                _predict(args, model, paths, transform, accelerator, printer, launched_as_given)
        except (ValueError, MisconfigurationException, CollectiveTimeoutError) as err:  # options, a timeout
            print(f"caption: {err}", file=sys.stderr, flush=True)
            return 2
    if not first:
        return 0
    if args.gallery is not None and printer.gallery:
        try:
            written = write_gallery(args.gallery, printer.gallery, top_k=args.top_k, columns=args.columns,
                                    title=f"{Path(args.ckpt).name}, beam {max(args.beam_size, args.top_k)}")
        except GalleryError as err:
            print(f"caption: {err}", file=sys.stderr)
            return 2
        print(f"gallery: {written} ({len(printer.gallery)} images)", file=sys.stderr, flush=True)
    return 1 if printer.failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
