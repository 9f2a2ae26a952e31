"""``python -m showtell.caption --accelerator cpu --devices 2``: Lightning's ddp on CPU (gloo, 2 processes).

The command runs as a subprocess (Lightning's launcher re-runs its command line for process 1) with a
wall-clock limit: a collective that only some processes reach leaves the run hanging, and the test then fails
by timeout instead of hanging the suite. Output must equal the one-process run's byte for byte (same batches,
so the same beams and log-probabilities), each image once, the corrupt file reported once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

TIMEOUT_S = 120


def run_caption(args: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """The command in its own session, so that on timeout the whole group (Lightning's child processes too) is
    killed and the test fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    command = [sys.executable, "-m", "showtell.caption", *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish within {timeout} s (a deadlock?); stderr:\n{err[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # whatever is left of a failed run
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.slow
def test_two_processes_caption_exactly_as_one(tiny_checkpoint, demo_root, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((demo_root / "Images").iterdir())[:10]:
        (folder / source.name).write_bytes(source.read_bytes())
    bad = folder / "shapes_00004b.jpg"  # sorts in the middle
    bad.write_bytes((folder / "shapes_00004.jpg").read_bytes()[:200])  # truncated
    parts = tmp_path / "parts"
    parts.mkdir()
    # batches of 3 over 11 files: 4 batches, 2 per process; --top_k 2 prints log-probabilities (exact floats)
    common = ["--ckpt", str(tiny_checkpoint), str(folder), "--json", "--top_k", "2", "--batch_size", "3",
              "--accelerator", "cpu", "--parts_dir", str(parts), "--collective_timeout", "60"]
    one = run_caption([*common, "--devices", "1"], cwd=tmp_path)
    two = run_caption([*common, "--devices", "2"], cwd=tmp_path)
    for run in (one, two):
        assert run.returncode == 1, run.stderr[-3000:]  # one unreadable file

    assert two.stdout == one.stdout
    names = sorted(p.name for p in folder.iterdir())
    records = [json.loads(line) for line in two.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(folder / n) for n in names if n != bad.name]  # each once, in order
    assert all(len(r["captions"]) == 2 and r["captions"][0]["caption"] == r["caption"] for r in records)
    for run in (one, two):
        errors = [line for line in run.stderr.splitlines() if line.strip()]
        assert errors == [f"caption: {bad}: cannot decode the image ({errors[0].split('(', 1)[1]}"], run.stderr
    assert list(parts.iterdir()) == []  # process 0 removed its parts folder
