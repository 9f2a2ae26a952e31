"""A contact sheet of captioned photos: ``python -m showtell.caption --ckpt C --gallery out.png IMAGES...``.

Each photo is drawn in a grid cell with its best caption under it (and, when asked, the top-k captions with
their log-probabilities, and one human reference), so a quick look shows what a model does. matplotlib renders
it off-screen (the Agg backend: no display needed); the output format follows the file suffix (PNG, JPEG,
PDF, SVG).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from showtell.files import load_rgb

THUMBNAIL = 320  # longest side of each photo in the sheet, pixels
WRAP = 44  # characters per caption line


@dataclass
class GalleryItem:
    path: str
    ranked: list[tuple[str, float]]  # (caption, log-probability), best first
    reference: str | None = None  # one human caption, when known


class GalleryError(ValueError):
    """The gallery cannot be written (one line)."""


def _text(item: GalleryItem, top_k: int) -> str:
    lines: list[str] = []
    if top_k > 1:
        for rank, (caption, log_prob) in enumerate(item.ranked[:top_k], 1):
            lines += textwrap.wrap(f"{rank}. {caption} (log p {log_prob:.2f})", WRAP)
    else:
        lines += textwrap.wrap(item.ranked[0][0] if item.ranked else "", WRAP)
    if item.reference:
        lines += textwrap.wrap(f"human: {item.reference}", WRAP)
    return "\n".join(lines)


def write_gallery(path: str | Path, items: Sequence[GalleryItem], *, top_k: int = 1, columns: int = 4,
                  title: str | None = None) -> Path:
    """Lay ``items`` out in a grid of ``columns`` with their captions; returns the written file."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    if not items:
        raise GalleryError("no captioned image to put into the gallery")
    if not path.parent.is_dir():
        raise GalleryError(f"--gallery {path}: folder {path.parent} does not exist")
    columns = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / columns)
    text_lines = max(_text(item, top_k).count("\n") + 1 for item in items)
    cell_h = 3.2 + 0.19 * text_lines  # inches: photo plus its caption lines
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, cell_h * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        image = load_rgb(Path(item.path))
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        ax.imshow(image)
        ax.set_title(Path(item.path).name, fontsize=8, color="0.4")
        ax.text(0.5, -0.03, _text(item, top_k), transform=ax.transAxes, ha="center", va="top", fontsize=8.5,
                wrap=False)
    top = 1 - 0.45 / fig.get_figheight() if title else 1  # 0.45 inch above the grid for the title
    fig.tight_layout(h_pad=0.3 + 1.25 * text_lines, rect=(0, 0, 1, top))
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.15 / fig.get_figheight())
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.25)
    except (OSError, ValueError) as err:
        raise GalleryError(f"--gallery {path}: cannot write it ({err})") from None
    finally:
        plt.close(fig)
    return path
