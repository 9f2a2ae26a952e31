"""Throughput benchmark on a Flickr8k-shaped synthetic dataset: ``python -m showtell.bench``.

The dataset (``showtell.data.lookalike.generate_flickr8k_like``, built once and reused from ``--workdir``): 8,091
photo-like JPEGs at 500x375 (``--images`` for fewer), 5 captions each whose lengths follow the real Flickr8k
captions (``../shared/flickr8k/Flickr8k.token.txt`` when present, or ``--lengths_from``; else a synthetic
Flickr8k-like distribution; the JSON's ``caption_lengths`` says which), Zipf-distributed words with a ~3,000
word vocabulary, Kaggle layout with the official split sizes. Then it measures, in one process, and prints a
table and writes JSON:

- feature extraction: the data module's cache fill (``prepare_data`` on a fresh, empty cache folder): CNN
  build, JPEG decode + resize in ``--num_workers`` loader workers, the CNN (bf16 + channels_last on CUDA),
  writing the ``.npz``. CUDA is initialised and the CNN's kernels loaded before the clock starts;
- training on cached features: a Lightning ``fit`` (no validation, checkpointing, logger or progress bar) of
  ``ShowTellModule`` with the paper config's model section (``configs/flickr8k.yaml``); the second epoch of
  each fit is timed (end of epoch 1 to end of epoch 2). Three variants of that epoch: length-bucketed batches
  (the data module's default, ``epoch_s``), plain shuffled batches (``bucket_by_length=False``,
  ``unbucketed_epoch_s``), and a plain PyTorch loop over the same bucketed batches, modules, precision,
  optimizer and gradient clipping (``plain_epoch_s``). They alternate, in a rotating order, ``--repeats``
  times so that machine load affects them alike; the fastest of each is reported, with ``bucketed_ratio``
  and ``lightning_overhead`` (their time ratios) and the padding of each batch order (``padding_ratio``:
  positions computed per real token over the timed epoch's batches);
- training on images with the same frozen CNN (no cache): ``--image_batches`` batches of the plain loop
  (after the batches decoded while the loader workers started), extrapolated to a whole epoch (an
  estimate, labelled as such; the plain loop, not Lightning, makes ``cached_speedup`` conservative);
- decoding the validation images (greedy, beam 3) in evaluation batches, words included (``captions_from``);
- the paper run: ``configs/flickr8k.yaml`` built from the Trainer and the classes directly (no LightningCLI,
  so no jsonargparse; a CSV logger instead of wandb), with the synthetic root, ``--encoder``, ``--weights``,
  ``--epochs``, ``--precision``, ``--num_workers`` and a fresh cache folder. Its wall time covers data
  loading (caption parsing, image checks, vocabulary), feature extraction into the cold cache, building
  the model, ``fit`` with validation BLEU every epoch and checkpointing, and ``test`` of the best
  checkpoint with beam 3 and the test metrics (METEOR/ROUGE-L/CIDEr only where pycocoevalcap is installed;
  METEOR also starts Java). Not included: Python imports, generating the dataset. It runs last, in the
  same process (CUDA already initialised), with the YAML's batch size (128) and no progress bar. Early
  stopping keeps its monitor but gets ``patience >= epochs`` so the run always lasts ``--epochs``
  (``--skip_paper_run`` leaves it out);
- peak GPU memory (``torch.cuda.max_memory_allocated``) and peak host memory (``ru_maxrss`` of this
  process; of finished child processes separately, where a forked child also counts the pages it shares).

On a CPU shared with other jobs, ``--threads 1`` avoids torch's threads waiting on each other (a 2-thread
LSTM step measured 30x slower than a 1-thread one on 2 busy cores).

Speed, not quality, is measured: the CNN is randomly initialised unless ``--weights`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from showtell.data.lookalike import FLICKR8K_IMAGES
from showtell.perf.training_speed import (
    PAPER_EPOCHS,
    REAL_CAPTIONS,
    Setup,
    check_targets,
    ensure_dataset,
    environment,
    format_table,
    jsonable,
    measure,
    peak_memory,
    quiet_lightning,
    resolve_device,
)


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m showtell.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=FLICKR8K_IMAGES, help="synthetic images (Flickr8k: 8091)")
    parser.add_argument("--image_width", type=int, default=500)
    parser.add_argument("--image_height", type=int, default=375)
    parser.add_argument("--lengths_from", default=None,
                        help="real caption file whose caption lengths to copy (default: ../shared/flickr8k/"
                             "Flickr8k.token.txt when present); 'synthetic': Flickr8k-like synthetic lengths")
    parser.add_argument("--encoder", default="resnet50",
                        help="torchvision backbone (showtell.model.backbones.BACKBONES)")
    parser.add_argument("--weights", default=None, type=lambda s: None if s.lower() in ("none", "null") else s,
                        help="CNN weights (default: random init; speed does not depend on them)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="resize whole images to this square size (default: the weights' resize + crop)")
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="epochs of the paper-config run")
    parser.add_argument("--skip_paper_run", action="store_true")
    parser.add_argument("--batch_size", type=int, default=None, help="training batch (default 256 GPU, 128 CPU)")
    parser.add_argument("--num_workers", type=int, default=None, help="loader workers (default: all CPU cores)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                        help="default bf16-mixed on CUDA, 32-true on CPU")
    parser.add_argument("--image_batches", type=int, default=None,
                        help="timed batches of the image-based epoch (default: 2 per worker on CUDA, min 5; 3 on CPU)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of the alternating epochs (bucketed, unbucketed, plain loop)")
    parser.add_argument("--decode_min_s", type=float, default=1.0, help="repeat decoding for at least this long")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's; 1 helps on a CPU shared with others)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/bench", help="synthetic dataset (reused) and scratch space")
    parser.add_argument("--out", default=None, help="JSON file (default: <workdir>/bench_<device>.json)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    for name in ("images", "epochs", "image_batches", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.images < 8:
        parser.error(f"--images must be at least 8 (every split needs an image), got {args.images}")
    if args.lengths_from is None:
        args.lengths_from = REAL_CAPTIONS if REAL_CAPTIONS.is_file() else None
    elif args.lengths_from == "synthetic":
        args.lengths_from = None
    elif not Path(args.lengths_from).expanduser().is_file():
        parser.error(f"--lengths_from {args.lengths_from}: no such file")
    else:
        args.lengths_from = Path(args.lengths_from).expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    workdir = Path(args.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    workers = (os.cpu_count() or 1) if args.num_workers is None else args.num_workers
    root, generate_s = ensure_dataset(workdir, args.images, args.image_width, args.image_height, args.seed,
                                      args.lengths_from, workers, progress)
    if cuda:  # after the generator's worker processes were forked: they must not inherit a CUDA context
        torch.cuda.reset_peak_memory_stats(device)
    how = "reused" if generate_s is None else f"generated in {generate_s:.1f} s"
    print(f"dataset: {root} ({how})", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch_", dir=workdir))
    setup = Setup(device=device, precision=args.precision or ("bf16-mixed" if cuda else "32-true"),
                  encoder=args.encoder, weights=args.weights, image_size=args.image_size,
                  batch_size=args.batch_size or (256 if cuda else 128), num_workers=workers,
                  progress=progress, scratch=scratch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads or threads)
        with quiet_lightning():
            results = measure(root, setup, args)
        results["torch_threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(scratch, ignore_errors=True)
    results.update(peak_memory(setup))
    results.update(device=device.type, device_name=environment(setup)["gpu_name" if cuda else "cpu_model"],
                   dataset=str(root), dataset_generate_s=generate_s, environment=environment(setup),
                   caption_lengths="synthetic" if args.lengths_from is None else "real",
                   caption_lengths_from=args.lengths_from,
                   params={"images": args.images, "image_width": args.image_width,
                           "image_height": args.image_height, "encoder": args.encoder, "weights": args.weights,
                           "image_size": args.image_size, "batch_size": setup.batch_size,
                           "precision": setup.precision, "num_workers": workers, "epochs": args.epochs,
                           "repeats": args.repeats, "image_batches": args.image_batches, "seed": args.seed,
                           "lengths_from": args.lengths_from})
    results["targets"] = check_targets(results)
    out = Path(args.out).expanduser() if args.out else workdir / f"bench_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = jsonable(results)
    out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(format_table(results))
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
