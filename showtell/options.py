"""Checks of constructor options, run when objects are built: before any data is read or any epoch runs.

A bad option raises ``OptionError`` with one line naming the option, the bad value and what is allowed;
``train.py`` prints it and exits with code 2.
"""

from __future__ import annotations


class OptionError(ValueError):
    """A bad option value: one line saying which option, the value, and what is allowed."""
