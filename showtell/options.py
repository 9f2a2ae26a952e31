"""Checks of constructor options, run when objects are built: before any data is read or any epoch runs.

A bad option raises ``OptionError`` with one line naming the option, the bad value and what is allowed;
``train.py`` prints it and exits with code 2. Options are named as users type them (``--model.lr``), so
the message points at the command line or the YAML key to change.

``Options`` checks one section (``model``, ``data``, ``trainer``) of plain values; the classes list their own
checks (``ShowTellModule.check_options``, ``CaptionDataModule.check_options``), and the CLI runs them,
and ``check_trainer_options``, on the parsed configuration before it builds anything. Each check runs once:
the CLI builds the objects inside ``already_checked(...)``, which hands the constructors the check's results
(the features file it read) so that they do not check, and read, again.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from showtell.errors import OptionError


def shown(value: Any) -> str:
    """A value as the message shows it: repr (strings quoted, never a line break)."""
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def shown_path(path: str | Path) -> str:
    """A path as typed, unquoted, unless it holds characters that would break the one line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Options:
    """Checks of the options of one section, e.g. ``Options("model", hparams).positive_int("embed_size")``.

    Each method checks one or more keys of ``values`` and raises ``OptionError`` naming ``--section.key``.
    ``optional=True`` also allows ``None`` (``null`` in YAML).
    """

    def __init__(self, section: str, values: Mapping[str, Any]):
        self.section, self.values = section, values

    def name(self, key: str) -> str:
        return f"--{self.section}.{key}"

    def fail(self, key: str, allowed: str, optional: bool = False) -> NoReturn:
        null = " or null" if optional else ""
        raise OptionError(f"{self.name(key)} must be {allowed}{null}, got {shown(self.values[key])}")

    def _keys(self, keys: Iterable[str], optional: bool) -> Iterable[str]:
        """The keys to check: present, and not None when None is allowed."""
        return (k for k in keys if k in self.values and not (optional and self.values[k] is None))

    def integer(self, *keys: str, minimum: int | None = None, optional: bool = False) -> None:
        allowed = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        for key in self._keys(keys, optional):
            value = self.values[key]
            if not is_int(value) or (minimum is not None and value < minimum):
                self.fail(key, allowed, optional)

    def positive_int(self, *keys: str, optional: bool = False) -> None:
        self.integer(*keys, minimum=1, optional=optional)

    def non_negative_int(self, *keys: str, optional: bool = False) -> None:
        self.integer(*keys, minimum=0, optional=optional)

    def number(self, *keys: str, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, optional: bool = False) -> None:
        """A finite real number in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            allowed = f"{'<' if high_open else '<='} {high:g}"
        else:
            allowed = "a finite number"
        for key in self._keys(keys, optional):
            value = self.values[key]
            if not _is_number(value) or not math.isfinite(value):
                self.fail(key, allowed if allowed == "a finite number" else f"a finite number {allowed}", optional)
            too_low = low is not None and (value <= low if low_open else value < low)
            too_high = high is not None and (value >= high if high_open else value > high)
            if too_low or too_high:
                self.fail(key, allowed, optional)

    def positive_number(self, *keys: str, optional: bool = False) -> None:
        self.number(*keys, low=0, low_open=True, optional=optional)

    def fraction(self, *keys: str) -> None:
        """In [0, 1): dropout, momentum."""
        self.number(*keys, low=0, high=1, high_open=True)

    def boolean(self, *keys: str) -> None:
        for key in self._keys(keys, optional=False):
            if not isinstance(self.values[key], bool):
                self.fail(key, "true or false")

    def one_of(self, key: str, choices: Iterable[str]) -> None:
        choices = tuple(choices)
        if key in self.values and self.values[key] not in choices:
            self.fail(key, f"one of {', '.join(choices)}")

    def folder(self, *keys: str, optional: bool = False) -> None:
        """A folder or a path not created yet (it will be); never an existing file."""
        for key in self._keys(keys, optional):
            value = self.values[key]
            if not isinstance(value, (str, os.PathLike)):
                self.fail(key, "a folder path", optional)
            if Path(value).expanduser().is_file():
                raise OptionError(f"{self.name(key)} {shown_path(value)} is a file, expected a folder")

    def readable_file(self, key: str) -> Path:
        """An existing, readable file; returns its path (``~`` expanded)."""
        value = self.values[key]
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            self.fail(key, "a file path")
        path = Path(value).expanduser()
        if not path.exists():
            raise OptionError(f"{self.name(key)} {shown_path(value)}: no such file")
        if not path.is_file():
            raise OptionError(f"{self.name(key)} {shown_path(value)} is a folder, expected a file")
        if not os.access(path, os.R_OK):
            raise OptionError(f"{self.name(key)} {shown_path(value)}: not readable (permission denied)")
        return path


def check_trainer_options(max_epochs: int | None = None, *, gradient_clip_val: float | None = None,
                          log_every_n_steps: int | None = None, check_val_every_n_epoch: int | None = None,
                          accumulate_grad_batches: int | None = None, num_sanity_val_steps: int | None = None) -> None:
    """The Trainer options this project relies on, as plain values (``None``: not set, Lightning's default).

    Lightning accepts ``max_epochs: -1`` (train forever); here training must end and be tested, so
    ``max_epochs`` must be at least 1. ``num_sanity_val_steps: -1`` (the whole validation set) is allowed.
    """
    opts = Options("trainer", {"max_epochs": max_epochs, "gradient_clip_val": gradient_clip_val,
                               "log_every_n_steps": log_every_n_steps,
                               "check_val_every_n_epoch": check_val_every_n_epoch,
                               "accumulate_grad_batches": accumulate_grad_batches,
                               "num_sanity_val_steps": num_sanity_val_steps})
    opts.positive_int("max_epochs", "log_every_n_steps", "check_val_every_n_epoch", "accumulate_grad_batches",
                      optional=True)
    opts.integer("num_sanity_val_steps", minimum=-1, optional=True)
    opts.number("gradient_clip_val", low=0, optional=True)


_CHECKED: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("showtell_checked", default=None)


@contextlib.contextmanager
def already_checked(**results: Any) -> Iterator[None]:
    """Build objects whose options the caller has just checked; ``results``: what the checks produced (e.g.
    the features table read to check it), for the constructors to use instead of checking again."""
    token = _CHECKED.set(results)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def checked_results() -> Mapping[str, Any] | None:
    """Inside ``already_checked``: its results (the constructor skips its own check); else None."""
    return _CHECKED.get()
