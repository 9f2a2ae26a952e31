"""The ablation runner (``python -m showtell.ablate``) end to end on a tiny demo: a 2-cell x 2-seed grid, its
report, resuming, the dry run, bad specs, changed specs and the wandb sweep; and every spec in experiments/.

One study runs once per session (module fixture, ~30 s on 2 busy cores); the tests after it read it, rerun
one run, or only parse (train.py's parser runs in this process: no training).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from showtell.ablate import main
from showtell.studies.spec import load_spec, plan_runs, train_py_config

EXPERIMENT_SPECS = sorted((REPO / "experiments" / "studies").glob("*.yaml"))
CELLS = ("pre", "merge")
SEEDS = (0, 1)


def tiny_overrides(data_root: Path) -> dict:
    """A run of a few seconds: 32 demo images of 48 px (4 test images), model 16/16, 2 epochs, no bars."""
    return {"data.root": str(data_root), "data.demo_images": 32, "data.demo_image_size": 48, "data.image_size": 48,
            "data.batch_size": 16, "data.num_workers": 0, "data.progress": False, "model.embed_size": 16,
            "model.hidden_size": 16, "model.test_beam_size": 2, "trainer.max_epochs": 2,
            "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}


def write_spec(path: Path, **fields) -> Path:
    spec = {"name": "tiny", "base": ["configs/demo.yaml"], "grid": {"model.conditioning": list(CELLS)},
            "seeds": list(SEEDS), **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def ablate(*args: str) -> tuple[int, str, str]:
    """``python -m showtell.ablate ARGS`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def mtimes(study_dir: Path) -> dict[Path, int]:
    """Modification times of everything inside the run folders (not the report next to them)."""
    return {p: p.stat().st_mtime_ns for p in study_dir.glob("*/seed*/**/*")} | \
        {p: p.stat().st_mtime_ns for p in study_dir.glob("*/seed*")}


@dataclass
class Study:
    spec: Path
    root: Path
    code: int
    out: str
    err: str

    @property
    def dir(self) -> Path:
        return self.root / "tiny"

    def runs(self):
        return plan_runs(load_spec(self.spec), self.root)


@pytest.fixture(scope="module", autouse=True)
def no_meteor(tmp_path_factory):
    """METEOR's Java (two JVM starts, ~10 s of each tiny run on a busy machine) is not what these tests are
    about: a ``java`` that fails stands in on PATH, so the runs report METEOR as n/a."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "java").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "java").chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    tmp = tmp_path_factory.mktemp("ablate")
    spec = write_spec(tmp / "tiny.yaml", overrides=tiny_overrides(tmp / "demo"))
    root = tmp / "runs"
    code, out, err = ablate(spec, "--root", root, "--jobs", 2, "--threads", 1, "--resamples", 50)
    return Study(spec, root, code, out, err)


# --------------------------------------------------------------------------------------------- the study


@pytest.mark.slow
def test_grid_runs_and_writes_run_folders_and_report(study):
    assert study.code == 0, study.out + study.err
    assert "4 runs, 0 already done, 4 to run (2 at a time, 1 threads each)" in study.out
    # one line per finished run: cell, seed, minutes, test BLEU-4 and CIDEr
    progress = re.findall(r"^\[[1-4]/4\] model\.conditioning=(pre|merge) seed ([01]): \d+\.\d min, "
                          r"test BLEU-4 \d+\.\d\d, CIDEr \d+\.\d\d$", study.out, flags=re.MULTILINE)
    assert sorted(progress) == sorted((c, str(s)) for c in CELLS for s in SEEDS), study.out
    for run in study.runs():
        assert run.folder == study.dir / f"model.conditioning={run.cell['model.conditioning']}" / f"seed{run.seed}"
        assert {"command.sh", "run.json", "train.log"} <= {p.name for p in run.folder.iterdir()}
        record = json.loads((run.folder / "run.json").read_text())
        assert record["status"] == "done" and record["returncode"] == 0 and record["seed"] == run.seed
        assert record["settings"] == json.loads(json.dumps(run.settings()))
        # --threads reaches the run's environment
        assert record["threads"] == 1 and record["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        assert "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" in (run.folder / "command.sh").read_text()
        assert run.metrics_file() is not None and run.metrics_file().is_relative_to(run.folder)
    assert {"results.csv", "results.md", "results.png"} <= {p.name for p in study.dir.iterdir()}
    assert (study.dir / "results.png").stat().st_size > 1000


def test_report_tables_agree_with_the_csv_rows(study):
    rows = list(csv.DictReader((study.dir / "results.csv").open()))
    assert sorted((r["model.conditioning"], r["seed"]) for r in rows) == [(c, str(s)) for c in sorted(CELLS)
                                                                           for s in SEEDS]
    table = {}
    for line in (study.dir / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in CELLS and len(cells) == 10:  # first table: value, decoding, n, 7 metrics
            table[cells[0]] = dict(zip(["decoding", "n", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL",
                                        "cider"], cells[1:]))
    assert set(table) == set(CELLS)
    for cell in CELLS:
        mine = [r for r in rows if r["model.conditioning"] == cell]
        assert table[cell]["n"] == str(len(mine)) == "2"
        for metric in ("bleu1", "bleu4", "rougeL", "cider"):
            values = [float(r[metric]) for r in mine]
            expected = f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"
            assert table[cell][metric] == expected, (cell, metric)
        assert table[cell]["meteor"] == "n/a" and all(r["meteor"] == "" for r in mine)  # no Java here


def test_second_invocation_runs_nothing(study):
    before = mtimes(study.dir)
    code, out, _ = ablate(study.spec, "--root", study.root, "--jobs", 2, "--resamples", 0)
    assert code == 0
    # --jobs splits this machine's CPUs between the runs
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"4 runs, 4 already done, 0 to run (2 at a time, {threads} threads each)" in out
    assert not re.search(r"^\[\d/4\]", out, flags=re.MULTILINE)
    assert mtimes(study.dir) == before


def test_dry_run_prints_each_runs_command(study):
    code, out, _ = ablate(study.spec, "--root", study.root, "--dry-run")
    assert code == 0
    lines = out.strip().splitlines()
    runs = study.runs()
    assert len(lines) == len(runs) == 4
    for line, run in zip(lines, runs):  # seed-major, in the order the runs go
        assert shlex.split(line)[:3] == [sys.executable, "-m", "showtell.train"]  # works without the checkout
        assert f"--seed_everything={run.seed}" in line
        assert f"--model.conditioning={run.cell['model.conditioning']}" in line
        # exactly the command that made the run (the last line of its command.sh)
        assert line == (run.folder / "command.sh").read_text().strip().splitlines()[-1]


@pytest.mark.slow
def test_deleted_metrics_reruns_only_that_run_and_reproduces_it(study):
    run = study.runs()[-1]
    metrics = run.metrics_file()
    original = metrics.read_text()
    others = [r for r in study.runs() if r.folder != run.folder]
    before = {p: t for p, t in mtimes(study.dir).items() if not p.is_relative_to(run.folder)}
    metrics.unlink()
    code, out, _ = ablate(study.spec, "--root", study.root, "--threads", 1, "--resamples", 0)
    assert code == 0
    assert "4 runs, 3 already done, 1 to run" in out
    assert re.findall(r"^\[4/4\] (\S+) seed (\d):", out, flags=re.MULTILINE) == [(run.cell_name, str(run.seed))]
    assert {p: t for p, t in mtimes(study.dir).items() if not p.is_relative_to(run.folder)} == before
    assert all(r.done() for r in others)
    # the same command (with the same threads) gives the same test metrics, to the last digit
    assert run.metrics_file().read_text() == original


def test_changed_overrides_are_refused_not_mixed(study, tmp_path):
    overrides = {**yaml.safe_load(study.spec.read_text())["overrides"], "model.dropout": 0.3}
    changed = write_spec(tmp_path / "tiny.yaml", overrides=overrides)  # same name and cells
    before = mtimes(study.dir)
    for extra in ((), ("--report",), ("--dry-run",)):
        code, out, err = ablate(changed, "--root", study.root, *extra)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "holds a run with other settings" in err, err
    assert mtimes(study.dir) == before


# -------------------------------------------------------------------------------------------- bad specs


BAD_SPECS = {
    "unknown option": ({"grid": {"model.nonsense": [1, 2]}}, "model.nonsense"),
    "empty grid": ({"grid": {}}, "'grid' must map at least one option"),
    "wrong type": ({"grid": {"model.lr": ["fast"]}}, 'Parser key "model.lr": Expected a float. Got value: fast'),
    "missing base": ({"base": ["configs/nope.yaml"]}, "base config configs/nope.yaml does not exist"),
    "unknown key": ({"grids": {}}, "unknown key(s) grids"),
    "duplicate seeds": ({"seeds": [0, 0]}, "'seeds' must be a list of distinct"),
    "grid value not a list": ({"grid": {"model.conditioning": "pre"}}, "must have a non-empty list of values"),
    "values sharing a folder": ({"grid": {"data.cache_dir": ["a/b", "a_b"]}}, "share a folder name"),
    "option of no section": ({"overrides": {"lr": 0.1}}, "'lr' is not a train.py option"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_one_line_exit_2_before_any_run(case, tmp_path):
    fields, message = BAD_SPECS[case]
    spec = write_spec(tmp_path / "bad.yaml", **fields)
    code, out, err = ablate(spec, "--root", tmp_path / "runs")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ablate: {spec}: ") and message in lines[0], err
    assert len(lines[0]) < 400
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bad_option_from_the_command_line_is_one_line(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", grid={"model.conditioning": ["pre", "sideways"]})
    result = subprocess.run([sys.executable, "-m", "showtell.ablate", str(spec), "--root", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"ablate: {spec}: cell model.conditioning=sideways: train.py rejects the "
                                     "options: Parser key \"model.conditioning\": Expected a Literal['pre', 'init', "
                                     "'par', 'merge']. Got value: sideways")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ wandb


def wandb_commands(sweep: dict) -> list[list[str]]:
    """Every command a wandb agent runs for a grid sweep: the macros filled in as the agent does (one
    ``--key=value`` per parameter, wandb's own formatting), for each combination of the parameters."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    keys = list(sweep["parameters"])
    commands = []
    for values in itertools.product(*(sweep["parameters"][k]["values"] for k in keys)):
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(keys, values)}})["args"]
        macros = {"${env}": ["/usr/bin/env"], "${program}": [sweep["program"]], "${args}": args,
                  "${interpreter}": ["python"]}
        commands.append([part for chunk in sweep["command"] for part in macros.get(chunk, [chunk])])
    return commands


@pytest.mark.slow
def test_wandb_sweep_commands_parse_and_group_runs(tmp_path):
    grid = {"model.conditioning": ["pre", "merge"], "data.cache_dir": [None, "cache"]}  # null survives wandb's str()
    spec = write_spec(tmp_path / "tiny.yaml", grid=grid, overrides={"trainer.max_epochs": 2})
    code, out, err = ablate(spec, "--root", tmp_path / "runs", "--wandb-sweep", tmp_path / "sweep.yaml")
    assert code == 0, err
    sweep = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["program"] == "train.py" and "${args}" in sweep["command"]
    assert list(sweep["parameters"]) == ["model.conditioning", "data.cache_dir", "seed_everything"]
    assert sweep["parameters"]["seed_everything"] == {"values": list(SEEDS)}
    commands = wandb_commands(sweep)
    assert len(commands) == 2 * 2 * 2
    for command in commands:
        assert command[:3] == ["/usr/bin/env", "python", "train.py"]
        config = train_py_config(command[3:])
        logger = config["trainer"]["logger"]
        assert logger["class_path"] == "showtell.loggers.WandbLogger"  # the demo logs to CSV: switched
        assert logger["init_args"]["group"] == "tiny" and "tiny" in logger["init_args"]["tags"]
        given = dict(arg[2:].split("=", 1) for arg in command if arg.startswith(("--model.", "--data.cache_dir",
                                                                                    "--seed_everything")))
        assert config["model"]["conditioning"] == given["model.conditioning"]
        assert config["data"]["cache_dir"] == (None if given["data.cache_dir"] == "null" else "cache")
        assert config["seed_everything"] == int(given["seed_everything"]) and config["trainer"]["max_epochs"] == 2


def test_wandb_runs_are_grouped_by_study_and_tagged_with_cell(tmp_path):
    spec = write_spec(tmp_path / "tiny.yaml", overrides={"trainer.logger": "showtell.loggers.WandbLogger"})
    code, out, _ = ablate(spec, "--root", tmp_path / "runs", "--dry-run")
    assert code == 0
    for line, run in zip(out.strip().splitlines(), plan_runs(load_spec(spec), tmp_path / "runs")):
        logger = train_py_config(shlex.split(line)[3:])["trainer"]["logger"]["init_args"]
        assert logger["save_dir"] == str(run.folder) and logger["group"] == "tiny"
        assert logger["tags"] == ["tiny", f"model.conditioning={run.cell['model.conditioning']}"]


# ------------------------------------------------------------------------------------- experiments/ specs


@pytest.mark.parametrize("path", EXPERIMENT_SPECS, ids=lambda p: p.name)
def test_every_experiment_spec_dry_runs_with_header(path, tmp_path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert header[0].startswith("# Question:"), "a spec opens with the question it answers"
    assert any(line.startswith(f"#   python -m showtell.ablate experiments/studies/{path.name}") for line in header)
    code, out, err = ablate(path, "--root", tmp_path / "runs", "--dry-run")
    assert code == 0, err
    spec = load_spec(path)
    assert len(out.strip().splitlines()) == len(spec.cells()) * len(spec.seeds)
    assert not (tmp_path / "runs").exists()
