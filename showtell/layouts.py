"""``python -m showtell.layouts karpathy --root ROOT --out FILE``: Karpathy's JSON from the original Flickr8k files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from showtell.data.writers import karpathy_from_original


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m showtell.layouts karpathy --root ROOT --out FILE``; returns the exit code (2: bad input)."""
    from showtell.errors import DatasetError

    parser = argparse.ArgumentParser(prog="python -m showtell.layouts", description="Convert dataset layouts.")
    commands = parser.add_subparsers(dest="command", required=True)
    karpathy = commands.add_parser("karpathy", help="Karpathy's dataset_flickr8k.json from the original files")
    karpathy.add_argument("--root", required=True, help="folder with Flickr8k.token.txt and the split files")
    karpathy.add_argument("--out", required=True, help="the JSON file to write (dataset_flickr8k.json)")
    args = parser.parse_args(argv)
    try:
        path = karpathy_from_original(args.root, args.out)
    except (DatasetError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
