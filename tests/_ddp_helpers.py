"""Helpers the 2-process tests (tests/training/test_ddp.py) load into train.py's processes by class path.

``tests/`` is on the child processes' PYTHONPATH, so ``--trainer.callbacks+=_ddp_helpers.RankZeroLogDir`` works.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class RankZeroLogDir(Callback):
    """The bug the first multi-process runs hit: ``trainer.log_dir`` (a broadcast, i.e. a collective) asked on rank
    0 only, at the end of the test epoch. The other ranks go on to their next collective, and the run deadlocks."""

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"rank 0 alone asks for trainer.log_dir: {trainer.log_dir}", flush=True)
