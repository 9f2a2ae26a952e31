"""Test outputs: the captions a test run decoded, scored with every metric and written to the run folder.

``ShowTellModule.test_step`` decodes and returns one record per image; ``TestOutputWriter`` (a callback the
module brings along through ``configure_callbacks``, in the spirit of Lightning's ``BasePredictionWriter``)
collects them, gathers them across DDP processes (each image once), scores them on rank 0 (``score_records``;
every rank gets the metrics by broadcast), writes ``<split>_captions.jsonl`` and ``<split>_metrics.json`` into
the run folder on rank 0, prints the table and
hands the metrics no other hook logged (METEOR, ...) to the loggers. ``train.py``, ``showtell.evaluate`` and the
wandb summary read the result with ``collected_test_metrics(trainer)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from showtell.metrics.scores import METRIC_NAMES, caption_metrics, format_metrics_table
from showtell.training.distributed import local_run_folder

METRIC_KEYS = tuple(METRIC_NAMES)


def metrics_json(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """The metrics as plain JSON values (fractions; NaN or missing -> null), in the metrics file's order."""
    return {k: (None if metrics.get(k) is None or math.isnan(metrics[k]) else float(metrics[k]))
            for k in METRIC_KEYS}


def score_records(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Every caption metric of records with ``caption`` (string) and ``references`` (list of strings)."""
    return caption_metrics([r["caption"] for r in records], [r["references"] for r in records])


def write_outputs(out_dir: Path, records: list[dict[str, Any]], metrics: dict[str, float | None],
                  split: str = "test") -> None:
    """``<split>_captions.jsonl`` (image_id, caption, references) and ``<split>_metrics.json`` (fractions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{split}_captions.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in ("image_id", "caption", "references")}) + "\n")
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(metrics_json(metrics), indent=2) + "\n")


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All processes' records, each dataset index once, in index order (DDP pads with repeated samples)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[list[dict]] = [[] for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    unique = {r["index"]: r for r in records}
    return [unique[i] for i in sorted(unique)]


def collected_test_metrics(trainer: Any) -> dict[str, float | None]:
    """The full metrics of the trainer's last test (kept by its ``TestOutputWriter``; {} if none)."""
    return next((c.metrics for c in getattr(trainer, "callbacks", []) if isinstance(c, TestOutputWriter)), {})


class TestOutputWriter(Callback):
    """Collects ``test_step``'s records; at the end of the test epoch scores, writes and prints them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.metrics: dict[str, float | None] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records, self.metrics = [], {}

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.records += outputs or []

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank takes the same collectives in the same order (gather, then broadcast); what follows on
        # rank 0 only (scoring, files, the table, loggers) makes none (see showtell.training.distributed).
        records = gather_records(self.records)
        if not records:  # a test_step that returned no records (not a captioner's)
            return
        metrics = score_records(records) if trainer.is_global_zero else None
        self.metrics = trainer.strategy.broadcast(metrics)  # one scoring (METEOR starts Java), every rank has it
        if not trainer.is_global_zero:
            return
        split = getattr(getattr(trainer, "datamodule", None), "test_split", "test")
        write_outputs(local_run_folder(trainer), records, self.metrics, split)
        beam = getattr(pl_module.hparams, "test_beam_size", "?")
        print(format_metrics_table(self.metrics, title=f"{split} metrics ({len(records)} images, beam {beam})"))
        extra = {f"test/{k}": v for k, v in metrics_json(self.metrics).items()
                 if v is not None and f"test/{k}" not in trainer.callback_metrics}
        for logger in trainer.loggers:
            logger.log_metrics(extra, step=trainer.global_step)
