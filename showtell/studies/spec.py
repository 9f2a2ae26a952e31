"""Study specs: a grid of train.py options x seeds, checked before anything runs, and the runs it plans."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from showtell.options import is_int

SPEC_KEYS = {"name", "base", "overrides", "grid", "seeds", "decode", "runs_of"}
WANDB_LOGGER = "showtell.loggers.WandbLogger"


class SpecError(ValueError):
    """A bad ablation spec: one line naming the problem."""


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
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _fail(path, f"'seeds' must be a list of distinct non-negative integers, got {seeds!r}")
    decode = raw.get("decode") or []
    if not isinstance(decode, list) or not all(is_int(b) and b >= 1 for b in decode) \
            or len(set(decode)) != len(decode):
        raise _fail(path, f"'decode' must be a list of distinct beam sizes >= 1, got {decode!r}")
    runs_of = raw.get("runs_of")
    if runs_of is not None and (not isinstance(runs_of, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", runs_of)):
        raise _fail(path, f"'runs_of' must be another study's name, got {runs_of!r}")
    return Spec(name, _check_base(path, raw.get("base")), grid, list(seeds), dict(overrides), list(decode),
                runs_of, path)


def _check_base(path: Path, base: Any) -> list[str]:
    """The base configs as the runs find them (they run in the current folder): as written when they are there
    (relative, or absolute), else the config shipped inside the package (``configs/demo.yaml`` is found after a
    plain ``pip install .`` too), made absolute."""
    base = [base] if isinstance(base, str) else base
    if not isinstance(base, list) or not base or not all(isinstance(b, str) for b in base):
        raise _fail(path, f"'base' must be a config file or a list of them, got {base!r}")
    found = []
    for config in base:
        if Path(config).is_file():
            found.append(config)
        elif not Path(config).is_absolute() and (PACKAGE / config).is_file():
            found.append(str(PACKAGE / config))
        else:
            raise _fail(path, f"base config {config} does not exist (looked in {Path.cwd()} and {PACKAGE})")
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


def _check_option_name(path: Path, where: str, key: Any) -> None:
    if not isinstance(key, str) or not re.fullmatch(r"(model|data|trainer)(\.[A-Za-z0-9_]+)+", key):
        raise _fail(path, f"{where} option {key!r} is not a train.py option such as model.conditioning, "
                          "data.batch_size or trainer.max_epochs")


def train_py_config(args: list[str]) -> dict[str, Any]:
    """The config train.py resolves from ``args`` (its parser's ``--print_config``, run in this process in
    the current folder: every option and type checked, nothing instantiated). Raises ValueError with the
    parser's complaint in one line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Lightning's note on `args` next to sys.argv
        try:
            from showtell.training.cli import ShowTellCLI, parser_complaint

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


def cli_value(value: Any) -> str:
    """An option value as train.py's command line reads it (YAML/JSON syntax for non-strings)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def cell_key(cell: dict[str, Any]) -> str:
    """Folder name of a cell, from its values (never its position): ``model.conditioning=pre``."""
    parts = [f"{k}={cli_value(v)}" for k, v in cell.items()]
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
        """train.py's arguments for this run (run in the current folder)."""
        args = [f"--config={c}" for c in self.spec.base]
        options = {**self.spec.overrides, **self.cell}
        args += [f"--{k}={cli_value(v)}" for k, v in options.items()]
        args += [f"--seed_everything={self.seed}", f"--trainer.default_root_dir={self.folder}"]
        return args

    def command(self, config: dict[str, Any]) -> list[str]:
        """The full command, given the run's resolved config: its logger (if any) writes into the run folder
        and, for wandb, groups the run by study and tags it with the cell's values."""
        return [sys.executable, "-m", "showtell.train", *self.args(), *_logger_args(config, self)]

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


def single_logger(config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's logger as ``{class_path, init_args}``, or None (no logger, or several)."""
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if len(logger) == 1 else None
    return logger if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict) else None


def wandb_tags(logger: dict[str, Any], extra: Iterable[str]) -> str:
    """The logger's own tags, then ``extra`` (wandb allows 64 characters a tag), as a YAML list."""
    tags = [*(logger["init_args"].get("tags") or []), *extra]
    return json.dumps(list(dict.fromkeys(tag[:64] for tag in tags)))


def _logger_args(config: dict[str, Any], run: Run) -> list[str]:
    logger = single_logger(config)
    if logger is None:
        return []
    args = []
    if "save_dir" in logger["init_args"]:
        args.append(f"--trainer.logger.init_args.save_dir={run.folder}")
    if logger.get("class_path") == WANDB_LOGGER:
        cell_tags = [f"{k}={cli_value(v)}" for k, v in run.cell.items()]
        args += [f"--trainer.logger.init_args.group={run.spec.train_name}",
                 f"--trainer.logger.init_args.tags={wandb_tags(logger, [run.spec.train_name, *cell_tags])}"]
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


PACKAGE = Path(__file__).resolve().parents[1]  # holds configs/ (package data)
