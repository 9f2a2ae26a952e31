"""Exceptions shared by the layers: each names what was wrong and what to do, in one line."""

from __future__ import annotations


class OptionError(ValueError):
    """A bad option value: one line saying which option, the value, and what is allowed."""


class DatasetError(ValueError):
    """A dataset problem the user must fix; the message says what was wrong and what to do."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded (typically: no internet)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: one line naming the file and why."""


class EvaluationError(ValueError):
    """Bad input for an evaluation: one line saying what is wrong and what to do."""


class CaptionError(ValueError):
    """The run cannot go on (one line, exit code 2)."""
