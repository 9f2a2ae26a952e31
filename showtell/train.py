"""``python train.py``: train Show and Tell, then test its best checkpoint."""

from __future__ import annotations

import json
import sys
import time
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from showtell.training.cli import (
    USER_ERRORS,
    ShowTellCLI,
    carry_csv_log,
    parser_complaint,
    quiet_known_warnings,
    resume_command,
)
from showtell.training.distributed import (
    CollectiveTimeoutError,
    StopOnSigterm,
    apply_collective_timeout,
    collective_errors,
    local_run_folder,
    process_rank,
)
from showtell.training.module import NonFiniteLossError
from showtell.training.outputs import collected_test_metrics


def main(args: list[str] | None = None) -> dict:
    """Fit, test the best checkpoint, print the results table and the run folder. Returns test metrics.

    Bad input (no dataset, bad options or checkpoints, weights that cannot be downloaded, ...) ends with one
    line on stderr, exit code 2; a non-finite loss with one line, exit code 1; SIGTERM or Ctrl-C with the
    resume command, exit code 143 or 130.
    """
    try:
        return _fit_and_test(list(sys.argv[1:] if args is None else args))
    except USER_ERRORS as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except ArgumentError as err:  # the parser's own complaint (unknown option, wrong type, ...)
        print(f"error: {parser_complaint('error: ' + str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except (NonFiniteLossError, CollectiveTimeoutError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _fit_and_test(args: list[str]) -> dict:
    quiet_known_warnings()
    cli = ShowTellCLI(args=args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    timeout = cli.config.collective_timeout
    apply_collective_timeout(trainer, timeout)

    def say_how_to_resume(trainer_: Any, signal_name: str = "SIGTERM") -> None:  # rank 0; no collective
        print(f"stopped by {signal_name}; resume with: {resume_command(args, local_run_folder(trainer_))}",
              file=sys.stderr, flush=True)

    stop = StopOnSigterm(announce=say_how_to_resume)  # several processes: all stop at the same batch
    trainer.callbacks.append(stop)
    first = process_rank() == 0  # the Trainer knows its ranks only once fit has started the processes
    if first:
        print(cli.summary(), flush=True)
    if cli.resume_from is not None and first:
        carry_csv_log(trainer, cli.resume_from)
    start = time.perf_counter()
    try:
        with collective_errors(trainer, timeout):
            trainer.fit(model, datamodule=data, ckpt_path=cli.resume_from)
    except (SIGTERMException, KeyboardInterrupt, SystemExit) as reason:
        if not trainer.interrupted and not isinstance(reason, KeyboardInterrupt):
            raise
        signal_name, code = ("SIGTERM", 143) if isinstance(reason, SIGTERMException) else ("Ctrl-C", 130)
        if trainer.is_global_zero and not stop.stopped:  # (StopOnSigterm has said it in multi-process runs)
            say_how_to_resume(trainer, signal_name)
        raise SystemExit(code) from None
    fit_s = time.perf_counter() - start
    if trainer.interrupted:
        print("training interrupted: skipping the test", file=sys.stderr)
        return {}
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    if trainer.is_global_zero:
        print(f"testing {'the best checkpoint ' + best if best else 'the last weights'}", flush=True)
    start = time.perf_counter()
    with collective_errors(trainer, timeout):
        trainer.test(model, datamodule=data, ckpt_path=best, verbose=False)
    if trainer.is_global_zero:  # rank 0 alone: no collective from here on (see showtell.training.distributed)
        out_dir = local_run_folder(trainer)
        write_fit_summary(out_dir, trainer, fit_s, time.perf_counter() - start, model.hparams.test_beam_size)
        print(f"run folder: {out_dir}", flush=True)
    return collected_test_metrics(trainer)


def write_fit_summary(out_dir: Path, trainer, fit_s: float, test_s: float, test_beam_size: int) -> None:
    """``fit_summary.json``: epochs trained, the checkpointed best (epoch, monitored value), wall times."""
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
    best_epoch = None
    if best:
        best_epoch = torch.load(best, map_location="cpu", weights_only=False).get("epoch")
    score = ckpt.best_model_score if best else None
    summary = {"epochs": trainer.current_epoch, "best_epoch": best_epoch,
               "monitor": ckpt.monitor if best else None,
               "best_score": None if score is None else float(score),
               "best_checkpoint": best, "fit_s": round(fit_s, 2), "test_s": round(test_s, 2),
               "test_beam_size": test_beam_size}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
