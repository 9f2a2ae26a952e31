"""Caption image files with a trained checkpoint.

    python -m showtell.caption --ckpt CKPT IMAGE [IMAGE ...] [--beam_size 3] [--top_k K] [--max_len N]
                               [--device auto|cpu|cuda] [--batch_size 32] [--json]
                               [--references CAPTION_FILE] [--gallery OUT.png [--columns 4]]

Any image PIL reads (JPEG, PNG, grayscale, CMYK, RGBA, ...) is converted to RGB and preprocessed exactly as
evaluation does in training: ``showtell.data.image_transform`` with the model's encoder weights and the
checkpoint's ``data.image_size``, no augmentation. Images are decoded in batches through the model's own
``generate`` (the decoding used by validation and test). Output, in the order of the arguments:

- text: ``PATH<TAB>caption``; with ``--top_k K`` (K > 1) a ``PATH`` line, then ``  1. caption  (log p -1.23)``
  for the K best captions (the beam is widened to K if it is narrower);
- ``--json``: one JSON object per line, ``{"path", "caption"}`` plus, with K > 1,
  ``"captions": [{"caption", "log_prob"}, ...]`` best first.

``--references FILE`` (a caption file of any layout showtell reads: ``Flickr8k.token.txt``, ``captions.txt``,
``dataset_*.json``) adds each image's human captions, found by file name: ``"references"`` in the JSON lines,
which ``python -m showtell.evaluate --captions`` then scores, and one reference per photo in the gallery.
``--gallery OUT.png`` also writes a contact sheet of the photos with their captions (``showtell.gallery``).

An unreadable file gets ``caption: PATH: reason`` on stderr and exit code 1, the other images are still
captioned. A bad checkpoint, or one trained on precomputed features without ``--model.attach_encoder`` (it
has no CNN): one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from showtell.data import image_transform
from showtell.encoder import preprocess_for
from showtell.evaluate import EvaluationError, load_model
from showtell.features import ImageLoadError, load_rgb
from showtell.gallery import GalleryError, GalleryItem, write_gallery
from showtell.module import ShowTellModule
from showtell.sources import DatasetError, captions_by_image

Ranked = list[tuple[str, float]]  # (caption, log-probability), best first


class ImageReadError(ValueError):
    """One image file could not be read; the message is the reason."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="showtell-caption", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--beam_size", type=int, default=3, help="beam width (1 = greedy); default 3")
    parser.add_argument("--top_k", type=int, default=1, help="print the K best captions with log-probabilities")
    parser.add_argument("--max_len", type=int, default=None,
                        help="longest caption in words (default: the model's max_caption_len)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch_size", type=int, default=32, help="images decoded at once")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--references", metavar="CAPTION_FILE", default=None,
                        help="a caption file (Flickr8k.token.txt, captions.txt, dataset_*.json): add each image's "
                             "human captions (JSON 'references', for showtell.evaluate --captions)")
    parser.add_argument("--gallery", metavar="OUT.png", default=None,
                        help="also write the photos with their captions as a grid image (png, jpg, pdf, svg)")
    parser.add_argument("--columns", type=int, default=4, help="photos per gallery row; default 4")
    return parser


def eval_transform(model: ShowTellModule, data_hparams: dict) -> Callable[[Image.Image], Tensor]:
    """The data module's evaluation transform for this checkpoint: PIL RGB image -> (3, H, W)."""
    hp = model.hparams
    return image_transform(preprocess_for(hp.encoder, hp.weights, None), data_hparams.get("image_size"),
                           augment=False)


def read_image(path: Path, transform: Callable[[Image.Image], Tensor]) -> Tensor:
    """One preprocessed image (3, H, W); ``ImageReadError`` says why a file cannot be used."""
    try:
        return transform(load_rgb(path))
    except ImageLoadError as err:
        raise ImageReadError(err.reason) from None


@torch.inference_mode()
def caption_batch(model: ShowTellModule, images: Tensor, beam_size: int, top_k: int,
                  max_len: int | None) -> list[Ranked]:
    """(B, 3, H, W) pixels -> per image the ``top_k`` best (caption, log-probability), best first."""
    decoded = model.generate(images, beam_size=beam_size, top_k=top_k, max_len=max_len)
    captions = [model.captions_from(decoded, k) for k in range(top_k)]  # K x B token lists
    log_probs = decoded.log_probs.tolist()  # (B, K)
    # Tiny vocabularies can have fewer than K distinct captions: the missing ones score -inf.
    return [[(" ".join(captions[k][b]), log_probs[b][k]) for k in range(top_k) if math.isfinite(log_probs[b][k])]
            for b in range(len(images))]


def caption_files(model: ShowTellModule, paths: Sequence[str], transform: Callable[[Image.Image], Tensor], *,
                  beam_size: int, top_k: int, max_len: int | None, batch_size: int,
                  device: torch.device) -> Iterator[tuple[str, Ranked | ImageReadError]]:
    """(path, ranked captions or the read error) for every path, in order, ``batch_size`` images at a time."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        read: dict[int, Tensor] = {}
        errors: dict[int, ImageReadError] = {}
        for i, path in enumerate(chunk):
            try:
                read[i] = read_image(Path(path), transform)
            except ImageReadError as err:
                errors[i] = err
        ranked: dict[int, Ranked] = {}
        if read:
            images = torch.stack(list(read.values())).to(device)  # (B, 3, H, W)
            ranked = dict(zip(read, caption_batch(model, images, beam_size, top_k, max_len)))
        for i, path in enumerate(chunk):
            yield path, errors[i] if i in errors else ranked[i]


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda: no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def _check_options(args: argparse.Namespace) -> None:
    for flag in ("beam_size", "top_k", "batch_size", "max_len", "columns"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvaluationError(f"--{flag} must be at least 1, got {value}")
    if args.gallery is not None:
        gallery = Path(args.gallery)
        if gallery.suffix.lower() not in GALLERY_SUFFIXES:
            raise EvaluationError(f"--gallery {gallery}: name a {', '.join(GALLERY_SUFFIXES)} file")
        if not gallery.parent.is_dir():
            raise EvaluationError(f"--gallery {gallery}: folder {gallery.parent} does not exist")


GALLERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def read_references(path: str) -> dict[str, list[str]]:
    """Image file name -> its human captions, from a caption file of any layout."""
    try:
        return captions_by_image(path)
    except DatasetError as err:
        raise EvaluationError(f"--references: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """Caption the images; returns the exit code (0 ok, 1 some files unreadable, 2 bad checkpoint/options)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed by argparse
        return int(done.code or 0)
    try:
        _check_options(args)
        device = _device(args.device)
        model, data_hparams = load_model(args.ckpt)
        if model.encoder.backbone is None:
            raise EvaluationError(f"checkpoint {args.ckpt} was trained on precomputed features (data.features) "
                                  "without --model.attach_encoder, so it has no CNN to read images with; use a "
                                  "checkpoint trained on images or with an attached encoder")
        transform = eval_transform(model, data_hparams)
        references = read_references(args.references) if args.references else {}
    except ValueError as err:  # EvaluationError, or unknown encoder weights in the checkpoint
        print(f"caption: {err}", file=sys.stderr)
        return 2
    model.to(device)
    results = caption_files(model, args.images, transform, beam_size=max(args.beam_size, args.top_k),
                            top_k=args.top_k, max_len=args.max_len, batch_size=args.batch_size, device=device)
    failed = 0
    gallery: list[GalleryItem] = []
    for path, result in results:
        if isinstance(result, ImageReadError):
            print(f"caption: {path}: {result}", file=sys.stderr, flush=True)
            failed += 1
            continue
        refs = references.get(Path(path).name)
        if args.references and not refs:
            print(f"caption: {path}: no references in {args.references} (no 'references' in its line)",
                  file=sys.stderr, flush=True)
        print(format_result(path, result, args.top_k, args.json, refs), flush=True)
        gallery.append(GalleryItem(path, result, refs[0] if refs else None))
    if args.gallery is not None and gallery:
        try:
            written = write_gallery(args.gallery, gallery, top_k=args.top_k, columns=args.columns,
                                    title=f"{Path(args.ckpt).name}, beam {max(args.beam_size, args.top_k)}")
        except GalleryError as err:
            print(f"caption: {err}", file=sys.stderr)
            return 2
        print(f"gallery: {written} ({len(gallery)} images)", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
