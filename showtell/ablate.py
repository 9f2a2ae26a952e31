"""Ablation studies: a grid of settings x seeds, each an ordinary ``train.py`` run, then one report.

    python -m showtell.ablate experiments/ablate_demo.yaml                 # run (resumable), then report
    python -m showtell.ablate SPEC.yaml --jobs 2                           # two runs at a time (CPU threads split)
    python -m showtell.ablate SPEC.yaml --dry-run                          # the commands, one per line
    python -m showtell.ablate SPEC.yaml --report                           # tables and figure only
    python -m showtell.ablate SPEC.yaml --wandb-sweep sweep.yaml           # the same grid as a wandb sweep

A spec (YAML) names the study and lists what varies::

    name: ablate_conditioning           # folder runs/ablate/<name>/
    base: [configs/flickr8k.yaml]       # train.py --config files, in order
    overrides: {data.features: ...}     # fixed options for every run (optional)
    grid: {model.conditioning: [pre, init, par, merge]}   # several keys: their product
    seeds: [0, 1, 2]                    # --seed_everything of each run
    decode: [1, 3, 5]                   # optional: re-decode each best checkpoint at these beam sizes
    runs_of: ablate_conditioning        # optional: train into (and reuse) another study's run folders

Every cell x seed runs in its own process and folder ``<root>/<runs_of or name>/<cell>/seed<k>/`` with
``command.sh`` (the exact command, with its thread settings), ``run.json`` (settings, status, wall time),
``train.log`` and the run's outputs. The folder is keyed on the cell's values; ``run.json`` records the full
settings, and a folder holding another setting's results is refused, never mixed (nor reported). A run whose
``test_metrics.json`` exists is skipped; a failed or interrupted one starts again. Every option is checked by
train.py's own parser (``--print_config``) before anything runs. Runs that log to wandb are grouped by the
study and tagged with their cell values. Each finished run prints one line (cell, seed, minutes, test BLEU-4
and CIDEr). The report (``showtell.report``) is written to ``<root>/<name>/``: ``results.csv``,
``results.md``, ``results.png``.

``--wandb-sweep`` writes the grid as a wandb sweep (``method: grid``, the seeds as ``seed_everything``): each
agent run is the same train.py command line, logging to wandb (``showtell.loggers.WandbLogger``, switched in
when the base config logs elsewhere), grouped by the study, its cell values in its config.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC_KEYS = {"name", "base", "overrides", "grid", "seeds", "decode", "runs_of"}
WANDB_LOGGER = "showtell.loggers.WandbLogger"


class SpecError(ValueError):
    """A bad ablation spec: one line naming the problem."""


# ------------------------------------------------------------------------------------------------- the spec


@dataclass
class Spec:
    name: str
    base: list[str]
    grid: dict[str, list[Any]]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    decode: list[int] = field(default_factory=list)
    runs_of: str | None = None
    path: Path | None = None

    @property
    def train_name(self) -> str:
        """The folder whose training runs this study uses (its own, or ``runs_of``'s)."""
        return self.runs_of or self.name

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of grid values, the first value of each key first (the baseline cell)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


def _fail(path: Path | str | None, problem: str) -> SpecError:
    return SpecError(f"{path}: {problem}")


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file (structure and types; options are checked against train.py later)."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such spec file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({' '.join(str(err).split())[:100]})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping with name, base, grid and seeds")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise _fail(path, f"'name' must be a folder-safe string (letters, digits, _ . -), got {name!r}")
    grid = _check_grid(path, raw.get("grid"))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, f"'overrides' must map options to values, got {overrides!r}")
    for key in overrides:
        _check_option_name(path, "overrides", key)
        if key in grid:
            raise _fail(path, f"{key} is both in overrides and in the grid")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _fail(path, f"'seeds' must be a list of distinct non-negative integers, got {seeds!r}")
    decode = raw.get("decode") or []
    if not isinstance(decode, list) or not all(_is_int(b) and b >= 1 for b in decode) \
            or len(set(decode)) != len(decode):
        raise _fail(path, f"'decode' must be a list of distinct beam sizes >= 1, got {decode!r}")
    runs_of = raw.get("runs_of")
    if runs_of is not None and (not isinstance(runs_of, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", runs_of)):
        raise _fail(path, f"'runs_of' must be another study's name, got {runs_of!r}")
    return Spec(name, _check_base(path, raw.get("base")), grid, list(seeds), dict(overrides), list(decode),
                runs_of, path)


def _check_base(path: Path, base: Any) -> list[str]:
    """The base configs as train.py finds them from the repository root: as written when they are there
    (relative to the repository, or absolute), else made absolute (relative to the current folder)."""
    base = [base] if isinstance(base, str) else base
    if not isinstance(base, list) or not base or not all(isinstance(b, str) for b in base):
        raise _fail(path, f"'base' must be a config file or a list of them, got {base!r}")
    found = []
    for config in base:
        if (REPO / config).is_file():
            found.append(config)
        elif Path(config).is_file():
            found.append(str(Path(config).resolve()))
        else:
            raise _fail(path, f"base config {config} does not exist")
    return found


def _check_grid(path: Path, grid: Any) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not grid:
        raise _fail(path, "'grid' must map at least one option (e.g. model.conditioning) to a list of values")
    for key, values in grid.items():
        _check_option_name(path, "grid", key)
        if not isinstance(values, list) or not values:
            raise _fail(path, f"grid option {key} must have a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise _fail(path, f"grid option {key} lists a value twice: {values!r}")
        folders = [cell_key({key: v}) for v in values]  # distinct values, one folder name: never mixed
        if len(set(folders)) != len(folders):
            raise _fail(path, f"grid option {key}: values {values!r} share a folder name "
                              f"({', '.join(folders)}); write them apart")
    return grid


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_option_name(path: Path, where: str, key: Any) -> None:
    if not isinstance(key, str) or not re.fullmatch(r"(model|data|trainer)(\.[A-Za-z0-9_]+)+", key):
        raise _fail(path, f"{where} option {key!r} is not a train.py option such as model.conditioning, "
                          "data.batch_size or trainer.max_epochs")


# ------------------------------------------------------------------------------------- train.py's own parser


def train_py_config(args: list[str]) -> dict[str, Any]:
    """The config train.py resolves from ``args`` (its parser's ``--print_config``, run in this process from
    the repository root: every option and type checked, nothing instantiated). Raises ValueError with the
    parser's complaint in one line."""
    out, err = io.StringIO(), io.StringIO()
    with _in_folder(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Lightning's note on `args` next to sys.argv
        try:
            from showtell.cli import ShowTellCLI, parser_complaint

            ShowTellCLI(args=[*args, "--print_config"])
            code = 1  # --print_config always exits
        except SystemExit as exit_:
            code = exit_.code
        except ArgumentError as error:  # the parser's complaint: unknown option, wrong type, ...
            raise ValueError(parser_complaint(f"error: {error}")) from None
        except Exception as error:  # a class_path that fails to import, ...
            raise ValueError(" ".join(f"{type(error).__name__}: {error}".split())) from None
    if code != 0:
        raise ValueError(parser_complaint(err.getvalue() or out.getvalue()))
    return yaml.safe_load(out.getvalue()) or {}


@contextlib.contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    """Work in ``folder`` (where train.py runs: relative config paths are read from there), then return."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


# -------------------------------------------------------------------------------------------------- the runs


def _value(value: Any) -> str:
    """An option value as train.py's command line reads it (YAML/JSON syntax for non-strings)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def cell_key(cell: dict[str, Any]) -> str:
    """Folder name of a cell, from its values (never its position): ``model.conditioning=pre``."""
    parts = [f"{k}={_value(v)}" for k, v in cell.items()]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", "__".join(parts))


@dataclass
class Run:
    spec: Spec
    cell: dict[str, Any]
    seed: int
    folder: Path

    @property
    def cell_name(self) -> str:
        return cell_key(self.cell)

    def settings(self) -> dict[str, Any]:
        """Everything that decides the result; a folder holding other settings is never reused."""
        return {"base": self.spec.base, "overrides": self.spec.overrides, "cell": self.cell, "seed": self.seed}

    def args(self) -> list[str]:
        """train.py's arguments for this run (from the repository root)."""
        args = [f"--config={c}" for c in self.spec.base]
        options = {**self.spec.overrides, **self.cell}
        args += [f"--{k}={_value(v)}" for k, v in options.items()]
        args += [f"--seed_everything={self.seed}", f"--trainer.default_root_dir={self.folder}"]
        return args

    def command(self, config: dict[str, Any]) -> list[str]:
        """The full command, given the run's resolved config: its logger (if any) writes into the run folder
        and, for wandb, groups the run by study and tags it with the cell's values."""
        return [sys.executable, "train.py", *self.args(), *_logger_args(config, self)]

    def metrics_file(self) -> Path | None:
        found = sorted(self.folder.glob("**/test_metrics.json"))
        found = [f for f in found if "decode" not in f.relative_to(self.folder).parts]
        return found[0] if found else None

    def done(self) -> bool:
        return self.metrics_file() is not None


def plan_runs(spec: Spec, root: Path) -> list[Run]:
    study = root / spec.train_name
    # Seed-major: every cell's first seed runs before any cell's second, so a study cut short still
    # compares all cells.
    return [Run(spec, cell, seed, study / cell_key(cell) / f"seed{seed}")
            for seed in spec.seeds for cell in spec.cells()]


def resolved_config(spec: Spec, run: Run) -> dict[str, Any]:
    """train.py's own parser on this run's arguments: checks every option and type."""
    try:
        return train_py_config(run.args())
    except ValueError as err:
        raise _fail(spec.path, f"cell {run.cell_name}: train.py rejects the options: {err}") from None


def _single_logger(config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's logger as ``{class_path, init_args}``, or None (no logger, or several)."""
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if len(logger) == 1 else None
    return logger if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict) else None


def _wandb_tags(logger: dict[str, Any], extra: Iterable[str]) -> str:
    """The logger's own tags, then ``extra`` (wandb allows 64 characters a tag), as a YAML list."""
    tags = [*(logger["init_args"].get("tags") or []), *extra]
    return json.dumps(list(dict.fromkeys(tag[:64] for tag in tags)))


def _logger_args(config: dict[str, Any], run: Run) -> list[str]:
    logger = _single_logger(config)
    if logger is None:
        return []
    args = []
    if "save_dir" in logger["init_args"]:
        args.append(f"--trainer.logger.init_args.save_dir={run.folder}")
    if logger.get("class_path") == WANDB_LOGGER:
        cell_tags = [f"{k}={_value(v)}" for k, v in run.cell.items()]
        args += [f"--trainer.logger.init_args.group={run.spec.train_name}",
                 f"--trainer.logger.init_args.tags={_wandb_tags(logger, [run.spec.train_name, *cell_tags])}"]
    return args


def check_options(spec: Spec, runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Each cell's resolved config (one parse per cell: the seed does not change the options)."""
    configs = {}
    for run in runs:
        if run.cell_name not in configs:
            configs[run.cell_name] = resolved_config(spec, run)
    return configs


def check_folder(run: Run) -> None:
    """Refuse a folder that holds a run of other settings (changed spec, same cell values)."""
    record = run.folder / "run.json"
    if record.is_file():
        try:
            stored = json.loads(record.read_text()).get("settings")
        except (json.JSONDecodeError, OSError, AttributeError):
            return
        if stored is not None and stored != json.loads(json.dumps(run.settings())):
            raise _fail(run.spec.path, f"{run.folder} holds a run with other settings (base or overrides "
                                       "changed since); rename the study or remove that folder")


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
    (run.folder / "command.sh").write_text(f"cd {shlex.quote(str(REPO))}\nexport {exports}\n{shlex.join(command)}\n")
    record = {"study": run.spec.train_name, "cell": run.cell_name, "values": run.cell, "seed": run.seed,
              "settings": run.settings(), "command": command, "status": "running", "threads": threads,
              "env": env}
    _write_json(run.folder / "run.json", record)
    start = time.perf_counter()
    with open(run.folder / "train.log", "w") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
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
            code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **_thread_env(threads)}).returncode
        return code, time.perf_counter() - start

    for (run, beam, out, _), (code, seconds) in in_parallel(one, todo, jobs):
        metrics = _read_json(out / "test_metrics.json") if code == 0 else None
        status = _metrics_line(metrics) if metrics else f"FAILED (exit {code}, see {out / 'decode.log'})"
        print(f"decoded {run.cell_name} seed {run.seed} beam {beam}: {seconds:.0f} s, {status}", flush=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fit_summary(run: Run) -> dict[str, Any] | None:
    metrics = run.metrics_file()
    return _read_json(metrics.parent / "fit_summary.json") if metrics else None


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
            status = _metrics_line(_read_json(run.metrics_file()) or {})
        else:
            failed += 1
            status = f"FAILED (exit {record['returncode']}, see {run.folder / 'train.log'})"
        print(f"[{finished}/{len(runs)}] {run.cell_name} seed {run.seed}: {record['wall_s'] / 60:.1f} min, {status}",
              flush=True)
    if spec.decode:
        decode_runs(spec, runs, jobs, threads)
    return failed


# ----------------------------------------------------------------------------------------------- wandb sweep


def _sweep_value(value: Any) -> Any:
    """A grid value as a wandb agent passes it on (``--key={value}``, Python's str()): numbers and strings as
    they are, anything else (null, booleans, lists) in the syntax train.py reads (str(None) is 'None')."""
    return value if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)) \
        else _value(value)


def wandb_sweep(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The same grid as a wandb sweep: ``wandb sweep FILE`` then ``wandb agent`` on any number of machines.
    ``config`` is one run's resolved config (its logger decides whether the wandb logger is switched in)."""
    parameters = {key: {"values": [_sweep_value(v) for v in values]} for key, values in spec.grid.items()}
    parameters["seed_everything"] = {"values": spec.seeds}
    fixed = [f"--config={c}" for c in spec.base] + [f"--{k}={_value(v)}" for k, v in spec.overrides.items()]
    logger = _single_logger(config)
    if logger is None or logger.get("class_path") != WANDB_LOGGER:  # a sweep's runs must report to wandb
        fixed += [f"--trainer.logger={WANDB_LOGGER}", "--trainer.logger.init_args.name=null"]
        logger = {"init_args": {}}
    fixed += [f"--trainer.logger.init_args.group={spec.train_name}",
              f"--trainer.logger.init_args.tags={_wandb_tags(logger, [spec.name])}"]
    return {"name": spec.name, "program": "train.py", "method": "grid",
            "metric": {"name": "val/bleu4", "goal": "maximize"}, "parameters": parameters,
            "command": ["${env}", "python", "${program}", *fixed, "${args}"]}


# ------------------------------------------------------------------------------------------ the command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m showtell.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the study's YAML spec (e.g. experiments/ablate_conditioning.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    parser.add_argument("--root", default="runs/ablate", help="where run folders go (default runs/ablate)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and stop")
    parser.add_argument("--report", action="store_true", help="only write the report from finished runs")
    parser.add_argument("--out", default=None, help="report folder (default <root>/<name>)")
    parser.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    parser.add_argument("--wandb-sweep", default=None, metavar="FILE", help="write a wandb sweep config and stop")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def write_sweep(spec: Spec, root: Path, path: Path) -> None:
    configs = check_options(spec, plan_runs(spec, root))  # every cell parses before the sweep is written
    path.write_text(yaml.safe_dump(wandb_sweep(spec, next(iter(configs.values()))), sort_keys=False))
    print(f"wrote {path}: run `wandb sweep {path}`, then `wandb agent <id>` (from {REPO})")


def report(spec: Spec, root: Path, out: Path, resamples: int) -> None:
    from showtell.report import write_report

    runs = plan_runs(spec, root)
    for run in runs:
        check_folder(run)  # never report results of other settings
    write_report(spec, runs, out, resamples=resamples)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.root).expanduser().resolve()
    try:
        spec = load_spec(args.spec)
        if args.wandb_sweep:
            write_sweep(spec, root, Path(args.wandb_sweep))
            return 0
        failed = 0
        if not args.report:
            failed = run_study(spec, root, args.jobs, args.threads, args.dry_run)
            if args.dry_run:
                return 0
        report(spec, root, Path(args.out) if args.out else root / spec.name, args.resamples)
    except SpecError as err:
        print(f"ablate: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
