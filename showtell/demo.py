"""``python -m showtell.demo --root data/demo``: write the offline synthetic shapes dataset."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from showtell.data.layouts import SPLIT_FILES
from showtell.data.synthetic import generate_demo, is_complete


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m showtell.demo --root data/demo [--num_images N] [--seed S] [--image_size P]``."""
    parser = argparse.ArgumentParser(prog="python -m showtell.demo",
                                     description="Write the synthetic shapes demo dataset (Kaggle layout).")
    parser.add_argument("--root", required=True, type=Path, help="output folder (new, empty or a demo)")
    parser.add_argument("--num_images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if already complete")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    reused = not args.overwrite and is_complete(args.root, args.num_images, args.seed, args.image_size)
    start = time.perf_counter()
    try:
        root = generate_demo(args.root, args.num_images, args.seed, args.image_size,
                             progress=not args.no_progress, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    counts = {split: len((root / name).read_text().split()) for split, name in SPLIT_FILES.items()}
    action = "already complete, reused" if reused else f"wrote it in {time.perf_counter() - start:.1f} s"
    print(f"demo dataset in {root} ({action}): {args.num_images} images of {args.image_size} px, "
          f"{5 * args.num_images} captions; train/val/test = {counts['train']}/{counts['val']}/{counts['test']}")


if __name__ == "__main__":
    main()
