"""Files: atomic writes, JSON reading and image reading, shared by every layer."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from showtell.errors import DatasetError


def write_file_atomically(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """``write(tmp)`` into a temporary file beside ``path`` (named ``<name>...<suffix>``), then rename it into
    place, so an interrupted write never leaves a file that looks complete. The file gets the permissions the
    umask gives (``mkstemp``'s own are private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class ImageLoadError(DatasetError):
    """An image file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def load_rgb(path: Path) -> Image.Image:
    """Open any PIL-readable image (grayscale, CMYK, RGBA, PNG inside .jpg) as RGB: the one image reader of
    training, feature extraction, captioning and the sample tables."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file (PIL cannot identify its format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # truncated or damaged file, ...
        raise ImageLoadError(path, f"cannot decode the image ({' '.join(str(err).split())})") from None


_JPEG_EOI = b"\xff\xd9"


def _ends_with_eoi(path: Path) -> bool:
    """A complete JPEG ends with the EOI marker, possibly followed by zero bytes or whitespace."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return f.read().rstrip(b"\x00 \t\r\n").endswith(_JPEG_EOI)


def image_is_readable(path: str | Path) -> bool:
    """Cheap check that an image file will decode: PIL header parse + ``verify()``, and for JPEGs the EOI
    marker at the end (``verify()`` alone does not notice a truncated JPEG). Grayscale, CMYK, RGBA and
    PNG data under a .jpg name all count as readable: the dataset converts them to RGB.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            kind = image.format
            image.verify()
        return kind != "JPEG" or _ends_with_eoi(path)
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) on bad data
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's contents, or None when it is missing, unreadable, not JSON or not an object
    (a run folder written by an interrupted run)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def say(line: str, *, stderr: bool = False) -> None:
    """One line for the user, flushed at once (stdout, or stderr for notes beside a command's output)."""
    print(line, file=sys.stderr if stderr else sys.stdout, flush=True)
