"""Training and decoding speed measurements behind ``showtell.bench``."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from showtell.data.batching import padding_ratio
from showtell.data.datamodule import CaptionDataModule
from showtell.data.dataset import Batch
from showtell.data.lookalike import generate_flickr8k_like
from showtell.hardware import cpu_model
from showtell.model.backbones import build_backbone, preprocess_for
from showtell.training.module import ShowTellModule
from showtell.training.outputs import TestOutputWriter

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flickr8k.yaml"
PAPER_EPOCHS = 30
REAL_CAPTIONS = Path(__file__).resolve().parents[3] / "shared" / "flickr8k" / "Flickr8k.token.txt"
REQUIRED_KEYS = ("extract_images_per_s", "train_captions_per_s", "epoch_s", "unbucketed_epoch_s", "plain_epoch_s",
                 "bucketed_ratio", "lightning_overhead", "padding_ratio", "unbucketed_padding_ratio",
                 "greedy_captions_per_s", "beam3_captions_per_s", "paper_run_s", "peak_gpu_mem_mb",
                 "peak_host_mem_mb", "caption_lengths", "device")


# (key, comparison, threshold) per device type.
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "cuda": [("extract_images_per_s", ">=", 5000), ("train_captions_per_s", ">=", 50000),
             ("paper_run_s", "<=", 60)],
    "cpu": [("bucketed_ratio", "<=", 0.65), ("lightning_overhead", "<=", 1.2), ("cached_speedup", ">=", 10)],
}


# ------------------------------------------------------------------------------------------------ dataset
def ensure_dataset(workdir: Path, num_images: int, width: int, height: int, seed: int = 0,
                   lengths_from: Path | None = None, workers: int = 1,
                   progress: bool = False) -> tuple[Path, float | None]:
    """The Flickr8k-shaped dataset (``showtell.data.lookalike.generate_flickr8k_like``) under ``workdir``, and the
    seconds spent generating it (None when a complete one with the same parameters was reused)."""
    lengths = "synthetic" if lengths_from is None else "real"
    folder = workdir / f"flickr8k_like_{num_images}_{width}x{height}_seed{seed}_{lengths}_lengths"
    start = time.perf_counter()
    written = generate_flickr8k_like(folder, num_images, width, height, seed, lengths_from, workers, progress)
    return folder, time.perf_counter() - start if written else None


# ------------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Setup:
    """What every measurement shares."""

    device: torch.device
    precision: str  # "32-true" | "bf16-mixed"
    encoder: str
    weights: str | None
    image_size: int | None
    batch_size: int
    num_workers: int
    progress: bool
    scratch: Path  # emptied at the end: caches, checkpoints, logs

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")


def load_paper_config(path: Path = PAPER_CONFIG) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def make_datamodule(root: Path, setup: Setup, cache_dir: Path, *, cache: bool = True,
                    **overrides: Any) -> CaptionDataModule:
    kwargs = dict(root=str(root), format="kaggle", batch_size=setup.batch_size, num_workers=setup.num_workers,
                  min_count=5, encoder=setup.encoder, weights=setup.weights, image_size=setup.image_size,
                  cache_features=cache, cache_dir=str(cache_dir), progress=setup.progress)
    return CaptionDataModule(**{**kwargs, **overrides})


def make_model(data: CaptionDataModule, setup: Setup, model_config: dict[str, Any]) -> ShowTellModule:
    """The paper config's model (sizes, dropout, optimizer) with the benchmark's encoder and weights."""
    config = {**model_config, "encoder": setup.encoder, "weights": setup.weights}
    model = ShowTellModule(vocab_size=data.vocab_size, feature_dim=data.feature_dim, **config)
    model.vocab = data.vocab
    return model


def warm_up_cnn(setup: Setup) -> None:
    """Create the CUDA context and load the CNN's kernels, which a run pays once, not per image."""
    if not setup.cuda:
        return
    backbone, _ = build_backbone(setup.encoder, setup.weights)
    size = setup.image_size or preprocess_for(setup.encoder, setup.weights).crop
    backbone = backbone.to(setup.device, memory_format=torch.channels_last).eval()
    images = torch.randn(32, 3, size, size, device=setup.device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        backbone(images)
    setup.sync()
    del backbone
    torch.cuda.empty_cache()


def measure_extraction(data: CaptionDataModule, setup: Setup) -> float:
    """Seconds for the data module to fill its (empty) feature cache."""
    _ = data.corpus, data.vocab  # caption parsing and image checks are not extraction
    warm_up_cnn(setup)
    start = time.perf_counter()
    data.prepare_data()
    setup.sync()
    return time.perf_counter() - start


class EpochEndTimes(Callback):
    """Clock readings at the end of each training epoch (after the device finished its work)."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.times = sync, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sync()
        self.times.append(time.perf_counter())


def lightning_epoch_s(model: ShowTellModule, data: CaptionDataModule, setup: Setup, clip: float | None) -> float:
    """Seconds of the second epoch of a 2-epoch ``fit`` (the first warms up)."""
    timer = EpochEndTimes(setup.sync)
    trainer = L.Trainer(accelerator=setup.device.type, devices=1, precision=setup.precision, max_epochs=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=clip, default_root_dir=str(setup.scratch / "lightning"),
                        callbacks=[timer])
    trainer.fit(model, datamodule=data)
    return timer.times[1] - timer.times[0]


def _to_device(batch: Batch, setup: Setup) -> Batch:
    return batch._replace(images=batch.images.to(setup.device, non_blocking=True),
                          captions=batch.captions.to(setup.device, non_blocking=True))


def plain_steps(model: ShowTellModule, batches: Iterator[Batch], setup: Setup, optimizer: torch.optim.Optimizer,
                clip: float | None) -> int:
    """What a hand-written loop does per batch: forward + loss, backward, clip, step. Returns batches run."""
    params = [p for p in model.parameters() if p.requires_grad]
    total, steps = torch.zeros((), device=setup.device), 0
    for batch in batches:
        with setup.autocast():
            loss = model._loss(_to_device(batch, setup))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        total += loss.detach()  # the epoch mean a loop would report, without a sync per step
        steps += 1
    return steps


def plain_epoch_s(model: ShowTellModule, loader: DataLoader, setup: Setup, clip: float | None) -> float:
    """Seconds of the second of two epochs of the plain loop (same modules, loader, optimizer)."""
    model.to(setup.device).train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    loader.sampler.set_epoch(0)  # as Lightning does: each epoch's batches are those of Lightning's epoch
    plain_steps(model, iter(loader), setup, optimizer, clip)
    loader.sampler.set_epoch(1)
    setup.sync()
    start = time.perf_counter()
    plain_steps(model, iter(loader), setup, optimizer, clip)
    setup.sync()
    return time.perf_counter() - start


def epoch_padding_ratio(data: CaptionDataModule, epoch: int = 1) -> float:
    """Positions computed per real token over the training batches of ``epoch`` (the timed one)."""
    sampler = data.train_sampler()
    sampler.set_epoch(epoch)
    return padding_ratio(data.datasets["train"].lengths, sampler.epoch_batches())


def image_epoch_estimate(model: ShowTellModule, loader: DataLoader, setup: Setup, clip: float | None,
                         skip: int, timed_batches: int) -> tuple[float, int, int]:
    """Seconds per epoch of training on images (the frozen CNN runs every step): ``timed_batches`` batches of
    the plain loop, times the batches per epoch. Before the clock starts, one step warms the device up (CUDA)
    and ``skip`` batches are fetched and dropped: the batches the loader workers decoded in parallel while
    starting, so a decode-bound loader is timed at its steady rate. Returns (estimate, skipped, timed)."""
    model.to(setup.device).train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    batches = iter(loader)
    warmup = 1 if setup.cuda and len(loader) > 2 else 0
    plain_steps(model, (b for _, b in zip(range(warmup), batches)), setup, optimizer, clip)
    skip = max(0, min(skip, len(loader) - warmup - 1))
    for _ in zip(range(skip), batches):
        pass
    setup.sync()
    start = time.perf_counter()
    timed = plain_steps(model, (b for _, b in zip(range(timed_batches), batches)), setup, optimizer, clip)
    setup.sync()
    seconds = time.perf_counter() - start
    del batches  # shuts the loader workers down
    return seconds / timed * len(loader), warmup + skip, timed


@torch.no_grad()
def decode_captions_per_s(model: ShowTellModule, loader: DataLoader, setup: Setup, beam_size: int,
                          min_seconds: float) -> float:
    """Captions (with words) per second of ``model.generate`` over the loader's images, repeated until
    ``min_seconds`` have passed; the first batch is decoded once before the clock starts."""
    model.to(setup.device).eval()
    batches = list(loader)

    def run(batch: Batch) -> int:
        with setup.autocast():
            decoded = model.generate(batch.images.to(setup.device, non_blocking=True), beam_size=beam_size)
        return len(model.captions_from(decoded))  # words, as validation needs them (syncs the device)

    run(batches[0])
    setup.sync()
    captions, start = 0, time.perf_counter()
    while True:
        captions += sum(run(b) for b in batches)
        setup.sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return captions / elapsed


def paper_callbacks(config: dict[str, Any], epochs: int) -> list[Callback]:
    """The YAML's callbacks, instantiated from their ``class_path``; early stopping never fires early."""
    callbacks = []
    for spec in config["trainer"].get("callbacks") or []:
        module, name = spec["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        kwargs = dict(spec.get("init_args") or {})
        if issubclass(cls, EarlyStopping):
            kwargs["patience"] = max(int(kwargs.get("patience", 3)), epochs)
        callbacks.append(cls(**kwargs))
    return callbacks


def paper_run(root: Path, setup: Setup, config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """A full run of ``configs/flickr8k.yaml`` (see the module docstring for what its time covers)."""
    run_dir = setup.scratch / "paper_run"
    trainer_config = {k: v for k, v in config["trainer"].items() if k not in ("logger", "callbacks")}
    trainer_config.update(accelerator=setup.device.type, devices=1, precision=setup.precision,
                          max_epochs=epochs, default_root_dir=str(run_dir), enable_progress_bar=False)
    data_config = {**config["data"], "root": str(root), "num_workers": setup.num_workers}
    L.seed_everything(config.get("seed_everything", 0), verbose=False)
    start = time.perf_counter()
    data = CaptionDataModule(**{**data_config, "encoder": setup.encoder, "weights": setup.weights,
                                 "image_size": setup.image_size, "cache_dir": str(run_dir / "cache"),
                                 "progress": setup.progress})
    model = make_model(data, setup, config["model"])
    trainer = L.Trainer(**trainer_config, logger=CSVLogger(str(run_dir), name="csv"),
                        callbacks=paper_callbacks(config, epochs))
    trainer.fit(model, datamodule=data)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
    setup.sync()
    seconds = time.perf_counter() - start
    score = checkpoint.best_model_score if isinstance(checkpoint, ModelCheckpoint) else None
    return {"paper_run_s": seconds, "paper_run_epochs": trainer.current_epoch,
            "paper_run_batch_size": data.hparams.batch_size,
            "paper_run_best_val_bleu4": None if score is None else float(score),
            "paper_run_test_metrics": next((c.metrics for c in trainer.callbacks if isinstance(c, TestOutputWriter)),
                                           None)}


# ------------------------------------------------------------------------------------------------ report
def peak_memory(setup: Setup) -> dict[str, float | None]:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    return {"peak_gpu_mem_mb": torch.cuda.max_memory_allocated(setup.device) / 2**20 if setup.cuda else None,
            "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(setup.device) / 2**20 if setup.cuda else None,
            "peak_host_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "peak_host_mem_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale}


def environment(setup: Setup) -> dict[str, Any]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "lightning": L.__version__,
            "python": platform.python_version(), "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
            "gpu_name": torch.cuda.get_device_name(setup.device) if setup.cuda else None}


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of this device type: threshold and pass (None when it does not apply)."""
    checked = {}
    for key, op, threshold in TARGETS[results["device"]]:
        value = results.get(key)
        applies = value is not None and (key != "paper_run_s" or results.get("paper_run_epochs") == PAPER_EPOCHS)
        ok = (value >= threshold if op == ">=" else value <= threshold) if applies else None
        checked[key] = {"target": f"{op} {threshold:g}", "pass": ok}
    return checked


ROWS = (  # (key, label, number format)
    ("extract_images_per_s", "feature extraction, cold cache (img/s)", ",.0f"),
    ("train_captions_per_s", "training on cached features, Lightning (captions/s)", ",.0f"),
    ("epoch_s", "epoch on cached features, Lightning, bucketed (s)", ".3f"),
    ("unbucketed_epoch_s", "same epoch, Lightning, not bucketed (s)", ".3f"),
    ("bucketed_ratio", "bucketed / unbucketed epoch time (x)", ".3f"),
    ("padding_ratio", "positions per real token, bucketed (x)", ".3f"),
    ("unbucketed_padding_ratio", "positions per real token, not bucketed (x)", ".3f"),
    ("plain_epoch_s", "bucketed epoch, plain PyTorch loop (s)", ".3f"),
    ("lightning_overhead", "Lightning / plain epoch time (x)", ".3f"),
    ("image_epoch_s", "epoch on images, frozen CNN (s, estimated)", ",.1f"),
    ("cached_speedup", "image epoch / cached epoch (x)", ",.1f"),
    ("greedy_captions_per_s", "validation decoding, greedy (captions/s)", ",.0f"),
    ("beam3_captions_per_s", "validation decoding, beam 3 (captions/s)", ",.0f"),
    ("paper_run_s", "paper-config run, wall time (s)", ",.1f"),
    ("peak_gpu_mem_mb", "peak GPU memory allocated (MB)", ",.0f"),
    ("peak_host_mem_mb", "peak host memory, this process (MB)", ",.0f"),
)


def format_table(results: dict[str, Any]) -> str:
    p = results["params"]
    lines = [f"showtell benchmark on {results['device']} ({results['device_name']}): {p['images']} images "
             f"{p['image_width']}x{p['image_height']}, {results['caption_lengths']} caption lengths, "
             f"{p['encoder']} weights={p['weights']}, batch {p['batch_size']}, {p['precision']}, "
             f"{p['num_workers']} workers, {results.get('torch_threads')} torch threads"]
    header = f"{'metric':<54} {'value':>12}  {'target':<10} pass"
    lines += [header, "-" * len(header)]
    for key, label, fmt in ROWS:
        value = results.get(key)
        if key == "paper_run_s" and value is not None:
            label = label.replace("run,", f"run ({results['paper_run_epochs']} epochs),")
        if key == "image_epoch_s" and value is not None:
            label = label.replace("estimated", f"from {results['image_epoch_batches_timed']} of "
                                               f"{results['image_epoch_batches']} batches")
        target = results["targets"].get(key)
        ok = "" if target is None else {True: "yes", False: "NO", None: "n/a"}[target["pass"]]
        shown = "-" if value is None else format(value, fmt)
        lines.append(f"{label:<54} {shown:>12}  {target['target'] if target else '':<10} {ok}")
    return "\n".join(lines)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch")
    if requested == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu on a machine with a GPU: the data module extracts features on the GPU; "
                         "benchmark the CPU with CUDA_VISIBLE_DEVICES= python -m showtell.bench ...")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-Trainer info lines and its "few workers" hint (in-memory features need none)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PossibleUserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # lightning vs torch
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def measure(root: Path, setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    config = load_paper_config()
    clip = config["trainer"].get("gradient_clip_val")
    L.seed_everything(args.seed, verbose=False)
    data = make_datamodule(root, setup, setup.scratch / "cache")
    print("feature extraction (cold cache) ...", flush=True)
    extract_s = measure_extraction(data, setup)
    data.setup("fit")
    unbucketed = make_datamodule(root, setup, setup.scratch / "cache", bucket_by_length=False)  # cache: filled
    unbucketed.setup("fit")
    model = make_model(data, setup, config["model"])
    train = data.datasets["train"]
    variants: dict[str, Callable[[], float]] = {
        "epoch_s": lambda: lightning_epoch_s(model, data, setup, clip),
        "unbucketed_epoch_s": lambda: lightning_epoch_s(model, unbucketed, setup, clip),
        "plain_epoch_s": lambda: plain_epoch_s(model, data.train_dataloader(), setup, clip),
    }
    print(f"training epochs: Lightning bucketed / not bucketed / plain loop, {args.repeats} x ...", flush=True)
    epochs: dict[str, list[float]] = {key: [] for key in variants}
    for repeat in range(args.repeats):
        shift = repeat % len(variants)
        order = list(variants)[shift:] + list(variants)[:shift]  # rotated: no variant always runs first
        for key in order:
            epochs[key].append(variants[key]())
    print("decoding ...", flush=True)
    greedy = decode_captions_per_s(model, data.val_dataloader(), setup, 1, args.decode_min_s)
    beam3 = decode_captions_per_s(model, data.val_dataloader(), setup, 3, args.decode_min_s)
    # A GPU outruns the JPEG decoding workers: skip one batch per worker and time several rounds of them.
    skip = max(1, setup.num_workers) if setup.cuda else 1
    timed = args.image_batches or (max(5, 2 * setup.num_workers) if setup.cuda else 3)
    print(f"training on images (frozen {setup.encoder}, {timed} batches timed) ...", flush=True)
    images = make_datamodule(root, setup, setup.scratch / "cache", cache=False)
    images.setup("fit")
    image_loader = images.train_dataloader()
    image_s, image_untimed, image_timed = image_epoch_estimate(model, image_loader, setup, clip, skip, timed)
    epoch_s, unbucketed_s, plain = (min(epochs[key]) for key in variants)
    results = {
        "extract_images_per_s": len(data.corpus.captions) / extract_s, "extract_s": extract_s,
        "extract_images": len(data.corpus.captions),
        "train_captions_per_s": len(train) / epoch_s, "plain_train_captions_per_s": len(train) / plain,
        "unbucketed_train_captions_per_s": len(train) / unbucketed_s,
        "epoch_s": epoch_s, "unbucketed_epoch_s": unbucketed_s, "plain_epoch_s": plain,
        "bucketed_ratio": epoch_s / unbucketed_s, "lightning_overhead": epoch_s / plain,
        "padding_ratio": epoch_padding_ratio(data), "unbucketed_padding_ratio": epoch_padding_ratio(unbucketed),
        **{f"{key}_all": times for key, times in epochs.items()},
        "train_captions": len(train), "train_tokens": int(train.lengths.sum()),
        "train_batches": len(data.train_dataloader()),
        "image_epoch_s": image_s, "image_epoch_batches": len(image_loader),
        "image_epoch_batches_timed": image_timed, "image_epoch_batches_untimed": image_untimed,
        "cached_speedup": image_s / epoch_s,
        "greedy_captions_per_s": greedy, "beam3_captions_per_s": beam3,
        "decode_images": len(data.datasets["val"]), "eval_batch_size": data.eval_batch_size,
        "vocab_size": data.vocab_size, "split_images": {s: len(n) for s, n in data.corpus.splits.items()},
        "paper_run_s": None, "paper_run_epochs": None,
    }
    if not args.skip_paper_run:
        print(f"paper-config run ({args.epochs} epochs, cold cache) ...", flush=True)
        results.update(paper_run(root, setup, config, args.epochs))
    return results


def jsonable(value: Any) -> Any:
    """JSON-ready: tensors and numpy scalars as numbers, NaN/inf as null, paths as strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor | np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value
