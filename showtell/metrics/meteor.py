"""METEOR through coco-caption's jar (pycocoevalcap + Java), optional: None when either is missing."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path


def meteor(hypotheses: list[list[str]], references: list[list[list[str]]]) -> float | None:
    """Corpus METEOR 1.5 as coco-caption computes it (pycocoevalcap's jar, English, normalised), or None with
    one warning when pycocoevalcap or Java is missing, fails or hangs.

    The jar's ``-stdio`` protocol is driven in one batch: a ``SCORE`` line per caption, then one ``EVAL`` line
    with all their statistics; the answer is one line of statistics per caption, one score per caption and
    the corpus score. One ``subprocess.run`` with a timeout: no process or thread outlives the call.
    """
    try:
        from pycocoevalcap.meteor import meteor as meteor_module
    except ImportError:
        warnings.warn("METEOR needs pycocoevalcap (and Java): `pip install showtell[eval]`; meteor=None",
                      stacklevel=3)
        return None
    if shutil.which("java") is None:
        warnings.warn("METEOR needs Java but `java` is not on PATH: meteor=None (install Java)", stacklevel=3)
        return None
    jar_dir = Path(meteor_module.__file__).parent  # pycocoevalcap ships meteor-1.5.jar and its data there
    lines = []
    for hyp, refs in zip(hypotheses, references):
        hypothesis = " ".join(hyp).replace("|||", "").replace("  ", " ")  # as pycocoevalcap cleans it
        lines.append(" ||| ".join(("SCORE", " ||| ".join(" ".join(r) for r in refs), hypothesis)))
    timeout_s = 120 + 0.1 * len(lines)  # java start and paraphrase table ~7 s, then ~1 ms per caption
    command = ["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
    try:
        stats = _meteor_exchange(command, jar_dir, lines, timeout_s)[: len(lines)]
        answer = _meteor_exchange(command, jar_dir, ["EVAL ||| " + " ||| ".join(stats)], timeout_s)
        return float(answer[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        warnings.warn(f"METEOR failed ({type(err).__name__}: {reason}): meteor=None", stacklevel=3)
        return None


def _meteor_exchange(command: list[str], cwd: Path, lines: list[str], timeout_s: float) -> list[str]:
    """Feed lines to the METEOR jar and return its output lines (non-empty)."""
    result = subprocess.run(command, cwd=cwd, input="".join(line + "\n" for line in lines), text=True,
                            capture_output=True, timeout=timeout_s, check=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]
