"""Multi-process runs (DDP): which calls are collectives, where showtell makes them, and the timeout that turns a
hang into an error.

A *collective* is a call every process of the run must reach, in the same order; one reached by some processes
only leaves the others waiting forever (a deadlock: the job sits at ~1% CPU). Lightning 2.x's collectives:
``trainer.log_dir`` and ``strategy.broadcast`` (both broadcast from rank 0), ``strategy.barrier``, ``all_gather`` /
``all_gather_object``, ``self.log(..., sync_dist=True)``, a torchmetrics ``Metric.compute`` / ``sync`` under DDP,
``trainer.save_checkpoint`` (a barrier), and Lightning's own start-up (process group, the ``pre_setup`` barrier after
``prepare_data``, the DDP wrapper's parameter broadcast) and per-step SIGTERM broadcast.

Where showtell makes them (every one on a path that all ranks take):

==========================================  ======================================================  ============
place                                       collective                                              ranks
==========================================  ======================================================  ============
``CaptionDataModule.prepare_data``          none itself; local rank 0 builds the feature cache and  all wait
                                            Lightning's ``pre_setup`` barrier makes the others wait
``ShowTellModule._evaluate``                ``self.log(<stage>/loss, sync_dist=True)`` (epoch mean)  all
``ShowTellModule._log_bleu``                ``CorpusBLEU.compute`` (state sync, de-duplicated)      all
``ShowTellModule.on_validation_epoch_end``  ``gather_records`` (``all_gather_object``) for CIDEr-D  all
``TestOutputWriter.on_test_epoch_end``      ``gather_records``; then ``strategy.broadcast`` of the  all
                                            metrics rank 0 scored
``SampleCaptionsTable.setup`` (wandb)       ``trainer.log_dir`` (rank 0's run folder)                all
``ModelCheckpoint`` (Lightning)             path broadcast, ``save_checkpoint`` barrier            all
``showtell.caption`` ``CaptionWriter``      ``strategy.broadcast`` of the parts folder and the      all
                                            file list's fingerprint, two ``reduce_boolean_decision``
                                            (same files, folder visible) at setup;
                                            ``strategy.barrier`` before rank 0 merges
==========================================  ======================================================  ============

What runs on rank 0 only does no collective: writing ``<split>_captions.jsonl`` / ``<split>_metrics.json`` /
``fit_summary.json``, the printed tables and lines, the wandb sample table and summary, the resume command after
SIGTERM, merging the caption parts. Such code finds the run folder with ``local_run_folder`` (no broadcast; on
rank 0 it is the run's folder), never with ``trainer.log_dir``.

Work every rank repeats on purpose, without collectives: reading the corpus and the feature cache, the
attached-encoder check, ``init_from`` weights, SCST rewards (each rank scores its own samples against the
training references it holds; DDP averages the gradients). Two processes writing the same feature cache at once
(multi-node on a shared disk, or two runs) each write a private temporary file and rename it into place: the
file is always one complete cache.

SIGTERM (a scheduler's preemption, ``kill``): Lightning 2.6's own multi-process handling broadcasts from inside the
signal handler and lets each rank leave its validation loop on its own, so ranks end up in different collectives
(measured here: 4 of 9 SIGTERMs in the 2-process CPU test ended in the collective timeout or a "connection reset"
traceback; with ``StopOnSigterm``, 0 of 6). ``StopOnSigterm`` replaces it in runs of several processes: the
handler only notes the signal (and the launching process passes it on to the processes it started); after every
training, validation and test batch all ranks agree with one ``all_reduce`` (max) and, if any rank was signalled,
stop together at that batch.

Timeout: each DDP process group gets ``--collective_timeout`` seconds (default ``DEFAULT_TIMEOUT_S``, 30 min, long
enough for one rank to build the Flickr8k feature cache on a CPU while the others wait at ``pre_setup``); a
collective that does not complete in that time raises on gloo (CPU), which ``collective_errors`` turns into one
line naming the rank and the stage. On NCCL (GPU) the same timeout makes PyTorch's watchdog abort the process.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

DEFAULT_TIMEOUT_S = 1800.0  # Lightning's own default, made explicit and configurable


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete in time: one line naming the rank and the stage."""


def apply_collective_timeout(trainer: Any, seconds: float) -> None:
    """Give the trainer's DDP process group a ``seconds`` timeout (before ``fit``/``test``/``predict`` starts it).

    Lightning's ``DDPStrategy`` takes the timeout in its constructor only; a strategy chosen by name (``ddp``,
    ``auto`` on several devices) is built inside the Trainer, so its timeout is set here, before the process group
    exists. A single-process strategy has no process group: nothing to do.
    """
    if seconds <= 0:
        raise ValueError(f"the collective timeout must be positive, got {seconds}")
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        if not hasattr(strategy, "_timeout"):  # guards against a Lightning that stores it elsewhere
            raise RuntimeError("this Lightning version's DDPStrategy has no _timeout: cannot set the collective "
                               "timeout; pass a DDPStrategy(timeout=...) as --trainer.strategy instead")
        strategy._timeout = timedelta(seconds=seconds)


def is_collective_timeout(err: BaseException) -> bool:
    """Whether ``err`` is a process group timing out (gloo: "Timed out waiting ...ms"; c10d store timeouts)."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("timed out" in text or "timeout" in text) and \
        torch.distributed.is_available() and torch.distributed.is_initialized()


def current_stage(trainer: Any) -> str:
    """What the trainer was doing, e.g. ``fit (validate)`` or ``test``."""
    state = getattr(trainer, "state", None)
    fn = getattr(getattr(state, "fn", None), "value", None) or "start-up"
    stage = getattr(getattr(state, "stage", None), "value", None)
    return fn if stage in (None, fn) else f"{fn} ({stage})"


@contextlib.contextmanager
def collective_errors(trainer: Any, seconds: float) -> Iterator[None]:
    """Turn a collective timeout raised inside the block into ``CollectiveTimeoutError`` (one line)."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, CollectiveTimeoutError) or not is_collective_timeout(err):
            raise
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        detail = detail.split("] ", 1)[-1][:160]  # drop gloo's source file prefix
        rank = torch.distributed.get_rank()
        raise CollectiveTimeoutError(
            f"rank {rank}: a collective (broadcast, barrier, gather or metric sync) did not complete within "
            f"--collective_timeout {seconds:g} s during {current_stage(trainer)}: another process stopped, crashed "
            f"or took another path ({detail}); see the other ranks' output. If one rank legitimately needs longer "
            "(building a large feature cache), raise --collective_timeout") from None


def local_run_folder(trainer: Any) -> Path:
    """The run folder as this process sees it, with no collective (``trainer.log_dir`` broadcasts from rank 0).

    On rank 0 this is the run's folder (what ``trainer.log_dir`` gives every rank); other ranks' loggers may
    have made up their own versions or run ids, so only rank 0 may use it: for what rank 0 alone writes.
    """
    loggers = getattr(trainer, "loggers", None) or []
    if not loggers:
        return Path(trainer.default_root_dir)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    first = loggers[0]
    # As Lightning's Trainer.log_dir, without its broadcast.
    folder = first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
    return Path(folder or trainer.default_root_dir)


def process_rank() -> int:
    """This process's global rank, known before any process group exists (Lightning reads it at import from the
    variables its launcher, torchrun or SLURM set): for lines to print once per run, before the Trainer has set
    its ranks."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


class StopOnSigterm(Callback):
    """Multi-process runs: SIGTERM on any rank stops every rank at the same batch (see the module docstring).

    ``announce(trainer)`` runs on rank 0 when the ranks have agreed to stop, before any rank leaves (so a launcher
    that kills the rest once one process exits cannot cut it short): ``train.py`` prints the resume command.
    Single-process runs keep Lightning's own handling.
    """

    def __init__(self, announce: Callable[[Any], None] | None = None) -> None:
        self.announce = announce
        self.signalled = False  # this process received SIGTERM
        self.stopped = False  # the ranks agreed to stop (and rank 0 announced it)
        self._handler: Callable | None = None

    def _install(self, trainer: Any) -> None:
        """Replace the SIGTERM handler Lightning installs when a stage starts (it restores the previous one at
        the end of the stage)."""
        installed = self._handler is not None and signal.getsignal(signal.SIGTERM) is self._handler
        if trainer.world_size < 2 or installed:
            return

        def handler(signum: int, frame: Any) -> None:
            if not self.signalled:
                launcher = getattr(trainer.strategy, "launcher", None)
                if launcher is not None and hasattr(launcher, "kill"):
                    launcher.kill(signum)  # the launching process passes it on to the processes it started
            self.signalled = True

        self._handler = handler
        signal.signal(signal.SIGTERM, handler)

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def _agree(self, trainer: Any) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        flag = torch.tensor([int(self.signalled)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank, every batch
        if not flag.item():
            return
        self.stopped = True
        if trainer.is_global_zero and self.announce is not None:
            self.announce(trainer)
        torch.distributed.barrier()  # nobody leaves before rank 0 has said how to resume
        raise SIGTERMException

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self._agree(trainer)

    def on_validation_batch_end(self, trainer: Any, *args: Any) -> None:
        self._agree(trainer)

    def on_test_batch_end(self, trainer: Any, *args: Any) -> None:
        self._agree(trainer)
