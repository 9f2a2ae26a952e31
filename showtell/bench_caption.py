"""Captioning throughput of ``python -m showtell.caption``, one process against several: ``python -m
showtell.bench_caption --ckpt CKPT``.

    python -m showtell.bench_caption --ckpt CKPT [--images DIR] [--num_images 300] [--image_size 128]
                                     [--batch_size 32] [--beam_size 3] [--devices 1,2] [--accelerator cpu]
                                     [--num_workers 0] [--repeats 1] [--out FILE.json]

The images: ``--num_images`` demo scenes (``showtell.data.synthetic``, ``--image_size`` pixels square) generated into a
temporary folder, or the image files of ``--images DIR`` linked into a temporary folder: the first
``--num_images``, cycling through them again when there are fewer (``--num_images 0``: all of them, once).
Then, for each entry of ``--devices`` in turn (``1,2``: ``--devices 1`` and ``--accelerator cpu --devices 2``),
the real command as a subprocess (``--json --no_progress``, same images, batch size and beam): first a warm-up
run on one batch per process (the page cache, compiled bytecode: reported as ``warmup_s``, excluded), then
``--repeats`` rounds, alternating the order of the device counts, each timing that small run again and the run
on all images (the fastest of each is reported). ``images_per_s`` is images / wall time of the whole command,
start-up included (imports, model loading, the DDP start: what a user waits for); ``steady_images_per_s`` takes
the small run's time out ((images - small run's images) / (wall - small run's wall), the median over the rounds),
the rate once running. The outputs of the device counts are compared (``identical_outputs``). Torch threads are
left to the command (Lightning gives each of N CPU processes cores / N threads when ``OMP_NUM_THREADS`` is not
set).

Prints a table; ``--out FILE`` also writes it as JSON with the hardware (CPU model, cores), library versions and
the exact command lines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from showtell.perf.caption_speed import format_table, generate_images, hardware, measure, repeat_images
from showtell.training.predict import folder_images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="showtell-bench-caption", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py (with a CNN)")
    parser.add_argument("--images", default=None, help="a folder of images (default: generate demo scenes)")
    parser.add_argument("--num_images", type=int, default=300, help="images to caption (default 300)")
    parser.add_argument("--image_size", type=int, default=128, help="generated images' side in pixels")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--beam_size", type=int, default=3)
    parser.add_argument("--devices", default="1,2", help="comma-separated process counts to compare")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "cuda", "auto"))
    parser.add_argument("--num_workers", type=int, default=0, help="the command's --num_workers")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per device count (fastest reported)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    args.device_counts = [int(d) for d in args.devices.split(",") if d.strip()]
    if not args.device_counts or min(args.device_counts) < 1 or args.repeats < 1 or args.num_images < 0:
        parser.error("--devices needs counts >= 1, --repeats >= 1, --num_images >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="showtell-bench-caption-"))
    try:
        folder = work / "images"
        folder.mkdir()
        if args.images:
            count = repeat_images(Path(args.images), folder, args.num_images)
            source = f"{args.images}, repeated by symbolic links" if count > len(folder_images(args.images)) \
                else args.images
        else:
            count = args.num_images or 300
            generate_images(folder, count, args.image_size)
            source = f"generated demo scenes {args.image_size}x{args.image_size}"
        results = {"bench_command": ["python", "-m", "showtell.bench_caption",
                                     *(sys.argv[1:] if argv is None else argv)],
                   "images": count, "images_source": source, "batch_size": args.batch_size,
                   "beam_size": args.beam_size, "accelerator": args.accelerator, "num_workers": args.num_workers,
                   "repeats": args.repeats, "checkpoint": args.ckpt, "hardware": hardware(),
                   **measure(args, folder, count)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
