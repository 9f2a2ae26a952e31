"""Running a study: one ordinary train.py command per run in its own folder, finished runs skipped,
decoding variants evaluated, a wandb sweep written."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import yaml

from showtell.files import read_json
from showtell.studies.spec import (
    WANDB_LOGGER,
    Run,
    Spec,
    check_folder,
    check_options,
    cli_value,
    plan_runs,
    single_logger,
    wandb_tags,
)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def execute(run: Run, command: list[str], threads: int) -> dict[str, Any]:
    """Run one training to the end (fresh folder); returns its ``run.json`` record."""
    if run.folder.exists():
        shutil.rmtree(run.folder)  # a failed or interrupted run starts again from scratch
    run.folder.mkdir(parents=True)
    env = _thread_env(threads)
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    cd = shlex.quote(str(Path.cwd()))
    (run.folder / "command.sh").write_text(f"cd {cd}\nexport {exports}\n{shlex.join(command)}\n")
    record = {"study": run.spec.train_name, "cell": run.cell_name, "values": run.cell, "seed": run.seed,
              "settings": run.settings(), "command": command, "status": "running", "threads": threads,
              "env": env}
    _write_json(run.folder / "run.json", record)
    start = time.perf_counter()
    with open(run.folder / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode
    record.update(status="done" if code == 0 and run.done() else "failed", returncode=code,
                  wall_s=round(time.perf_counter() - start, 1))
    _write_json(run.folder / "run.json", record)
    return record


Item = TypeVar("Item")


def in_parallel(function: Callable[[Item], Any], items: list[Item], jobs: int) -> Iterator[tuple[Item, Any]]:
    """``(item, function(item))`` as each finishes, ``jobs`` at a time. Ctrl-C (which also reaches the runs'
    processes) cancels the queued items and waits for the running ones."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(function, item): item for item in items}
    try:
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_runs(spec: Spec, runs: list[Run], jobs: int, threads: int) -> None:
    """Re-decode each finished run's best checkpoint at the spec's beam sizes (skipping finished ones)."""
    todo = []
    for run in runs:
        summary = _fit_summary(run)
        best = summary.get("best_checkpoint") if summary else None
        for beam in spec.decode:
            out = run.folder / "decode" / f"beam{beam}"
            if (out / "test_metrics.json").is_file() or not best:
                continue
            command = [sys.executable, "-m", "showtell.evaluate", "--ckpt", best, "--split", "test",
                       "--beam_size", str(beam), "--output_dir", str(out), "--data.progress", "false"]
            todo.append((run, beam, out, command))

    def one(item) -> tuple[int, float]:
        run, beam, out, command = item
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(out / "decode.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **_thread_env(threads)}).returncode
        return code, time.perf_counter() - start

    for (run, beam, out, _), (code, seconds) in in_parallel(one, todo, jobs):
        metrics = read_json(out / "test_metrics.json") if code == 0 else None
        status = _metrics_line(metrics) if metrics else f"FAILED (exit {code}, see {out / 'decode.log'})"
        print(f"decoded {run.cell_name} seed {run.seed} beam {beam}: {seconds:.0f} s, {status}", flush=True)


def _fit_summary(run: Run) -> dict[str, Any] | None:
    metrics = run.metrics_file()
    return read_json(metrics.parent / "fit_summary.json") if metrics else None


def _metrics_line(metrics: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{100 * value:.2f}"
    return f"test BLEU-4 {pct('bleu4')}, CIDEr {pct('cider')}"


def _cpu_count() -> int:
    """CPUs this process may use (its affinity, e.g. under taskset or SLURM), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_study(spec: Spec, root: Path, jobs: int, threads: int | None, dry_run: bool) -> int:
    """Run every missing run (then the decodes); returns the number of failed runs."""
    runs = plan_runs(spec, root)
    configs = check_options(spec, runs)
    for run in runs:
        check_folder(run)
    commands = {id(r): r.command(configs[r.cell_name]) for r in runs}
    if dry_run:
        for run in runs:
            print(shlex.join(commands[id(run)]))
        return 0
    threads = threads or max(1, _cpu_count() // jobs)
    todo = [r for r in runs if not r.done()]
    print(f"ablate {spec.name}: {len(spec.cells())} cells x {len(spec.seeds)} seeds = {len(runs)} runs, "
          f"{len(runs) - len(todo)} already done, {len(todo)} to run ({jobs} at a time, {threads} threads each)",
          flush=True)
    failed = 0
    finished = len(runs) - len(todo)
    for run, record in in_parallel(lambda r: execute(r, commands[id(r)], threads), todo, jobs):
        finished += 1
        if record["status"] == "done":
            status = _metrics_line(read_json(run.metrics_file()) or {})
        else:
            failed += 1
            status = f"FAILED (exit {record['returncode']}, see {run.folder / 'train.log'})"
        print(f"[{finished}/{len(runs)}] {run.cell_name} seed {run.seed}: {record['wall_s'] / 60:.1f} min, {status}",
              flush=True)
    if spec.decode:
        decode_runs(spec, runs, jobs, threads)
    return failed


def _sweep_value(value: Any) -> Any:
    """A grid value as a wandb agent passes it on (``--key={value}``, Python's str()): numbers and strings as
    they are, anything else (null, booleans, lists) in the syntax train.py reads (str(None) is 'None')."""
    return value if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)) \
        else cli_value(value)


def wandb_sweep(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The same grid as a wandb sweep: ``wandb sweep FILE`` then ``wandb agent`` on any number of machines.
    ``config`` is one run's resolved config (its logger decides whether the wandb logger is switched in)."""
    parameters = {key: {"values": [_sweep_value(v) for v in values]} for key, values in spec.grid.items()}
    parameters["seed_everything"] = {"values": spec.seeds}
    fixed = [f"--config={c}" for c in spec.base] + [f"--{k}={cli_value(v)}" for k, v in spec.overrides.items()]
    logger = single_logger(config)
    if logger is None or logger.get("class_path") != WANDB_LOGGER:  # a sweep's runs must report to wandb
        fixed += [f"--trainer.logger={WANDB_LOGGER}", "--trainer.logger.init_args.name=null"]
        logger = {"init_args": {}}
    fixed += [f"--trainer.logger.init_args.group={spec.train_name}",
              f"--trainer.logger.init_args.tags={wandb_tags(logger, [spec.name])}"]
    return {"name": spec.name, "program": "train.py", "method": "grid",
            "metric": {"name": "val/bleu4", "goal": "maximize"}, "parameters": parameters,
            "command": ["${env}", "python", "${program}", *fixed, "${args}"]}


def write_sweep(spec: Spec, root: Path, path: Path) -> None:
    configs = check_options(spec, plan_runs(spec, root))  # every cell parses before the sweep is written
    path.write_text(yaml.safe_dump(wandb_sweep(spec, next(iter(configs.values()))), sort_keys=False))
    print(f"wrote {path}: run `wandb sweep {path}`, then `wandb agent <id>` (from {Path.cwd()}, where train.py is)")


def report(spec: Spec, root: Path, out: Path, resamples: int) -> None:
    from showtell.studies.report import write_report

    runs = plan_runs(spec, root)
    for run in runs:
        check_folder(run)  # never report results of other settings
    write_report(spec, runs, out, resamples=resamples)
