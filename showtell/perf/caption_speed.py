"""Captioning throughput (1 vs N processes) behind ``showtell.bench_caption``."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from showtell.hardware import cpu_model
from showtell.training.predict import IMAGE_SUFFIXES, folder_images

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding showtell (checkout or site-packages)


def generate_images(folder: Path, count: int, image_size: int, seed: int = 0) -> None:
    """``count`` demo scenes as JPEGs (as ``showtell.demo`` draws them)."""
    from showtell.data.synthetic import JPEG_QUALITY, draw_scene, random_scene

    for i in range(count):
        scene = random_scene(np.random.default_rng([seed, 0, i]))
        draw_scene(scene, image_size).save(folder / f"scene_{i:06d}.jpg", quality=JPEG_QUALITY, subsampling=0)


def repeat_images(source: Path, folder: Path, count: int) -> int:
    """Symbolic links in ``folder`` to the images of ``source``, cycling through them up to ``count``."""
    images = [Path(p).resolve() for p in folder_images(str(source))]
    if not images:
        raise SystemExit(f"bench_caption: no image files ({' '.join(IMAGE_SUFFIXES)}) in {source}")
    count = count or len(images)
    for i in range(count):
        original = images[i % len(images)]
        (folder / f"{i:06d}_{original.name}").symlink_to(original)
    return count


def hardware() -> dict[str, Any]:
    import lightning
    import torch

    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu, "cpu_cores": os.cpu_count(), "usable_cores": usable,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # threads per process (unset: torch's default)


def command(args: argparse.Namespace, images: str, devices: int) -> list[str]:
    return [sys.executable, "-m", "showtell.caption", "--ckpt", args.ckpt, images, "--json", "--no_progress",
            "--batch_size", str(args.batch_size), "--beam_size", str(args.beam_size), "--num_workers",
            str(args.num_workers), "--accelerator", args.accelerator, "--devices", str(devices)]


def timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path,
           "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1")}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_caption: {' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def measure(args: argparse.Namespace, folder: Path, count: int) -> dict[str, Any]:
    runs: dict[int, dict[str, Any]] = {}
    outputs: dict[int, str] = {}
    for devices in args.device_counts:  # a small run: one batch per process, in its own folder of links
        small = folder.parent / f"small_{devices}"
        small.mkdir()
        names = sorted(folder.iterdir())[: args.batch_size * devices]
        for p in names:
            (small / p.name).symlink_to(p.resolve())
        runs[devices] = {"devices": devices, "command": command(args, str(folder), devices),
                         "small_command": command(args, str(small), devices), "small_images": len(names),
                         "wall_s": [], "small_wall_s": []}
        wall, _ = timed(runs[devices]["small_command"], args.timeout)  # warm-up: imports, page cache
        runs[devices]["warmup_s"] = round(wall, 3)
        print(f"warm-up, {devices} process(es): {len(names)} images in {wall:.1f} s", file=sys.stderr, flush=True)
    for repeat in range(args.repeats):
        order = args.device_counts if repeat % 2 == 0 else args.device_counts[::-1]
        for devices in order:
            run = runs[devices]
            wall, _ = timed(run["small_command"], args.timeout)
            run["small_wall_s"].append(round(wall, 3))
            wall, out = timed(run["command"], args.timeout)
            run["wall_s"].append(round(wall, 3))
            outputs.setdefault(devices, out)
            print(f"{devices} process(es): {count} images in {wall:.1f} s ({count / wall:.2f} images/s); "
                  f"{run['small_images']} images in {run['small_wall_s'][-1]:.1f} s", file=sys.stderr, flush=True)
    for run in runs.values():
        best, small = min(run["wall_s"]), min(run["small_wall_s"])
        run["best_wall_s"], run["best_small_wall_s"] = best, small
        run["images_per_s"] = round(count / best, 3)
        # each round's own pair (full run - small run, one after the other): the median of the rounds
        rates = sorted((count - run["small_images"]) / (w - s) for w, s in zip(run["wall_s"], run["small_wall_s"])
                       if w > s)
        run["steady_images_per_s"] = round(float(np.median(rates)), 3) if rates else None
    first = args.device_counts[0]
    return {"runs": list(runs.values()), "output_lines": {str(d): len(o.splitlines()) for d, o in outputs.items()},
            "identical_outputs": all(o == outputs[first] for o in outputs.values()),
            "speedup": {str(d): round(runs[d]["images_per_s"] / runs[first]["images_per_s"], 3) for d in runs},
            "steady_speedup": {str(d): round(runs[d]["steady_images_per_s"] / runs[first]["steady_images_per_s"], 3)
                               for d in runs if runs[d]["steady_images_per_s"] and runs[first]["steady_images_per_s"]}}


def format_table(results: dict[str, Any]) -> str:
    rows = [f"{'processes':>9}  {'images/s':>9}  {'steady/s':>9}  {'wall s':>8}  {'1 batch s':>9}  speedup"]
    for run in results["runs"]:
        steady = run["steady_images_per_s"] or float("nan")
        speedup = results["speedup"][str(run["devices"])]
        rows.append(f"{run['devices']:>9}  {run['images_per_s']:>9.2f}  {steady:>9.2f}  {run['best_wall_s']:>8.1f}  "
                    f"{run['best_small_wall_s']:>9.1f}  {speedup:.2f}x")
    hw = results["hardware"]
    rows.append(f"{results['images']} images ({results['images_source']}), batch {results['batch_size']}, beam "
                f"{results['beam_size']}, {hw['cpu_model']} ({hw['usable_cores']} usable cores), torch {hw['torch']}; "
                f"identical outputs: {results['identical_outputs']}")
    return "\n".join(rows)
