"""Ablation studies: a grid of settings x seeds, each an ordinary ``train.py`` run, then one report.

    python -m showtell.ablate experiments/studies/ablate_demo.yaml                 # run (resumable), then report
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
and CIDEr). The report (``showtell.studies.report``) is written to ``<root>/<name>/``: ``results.csv``,
``results.md``, ``results.png``.

``--wandb-sweep`` writes the grid as a wandb sweep (``method: grid``, the seeds as ``seed_everything``): each
agent run is the same train.py command line, logging to wandb (``showtell.loggers.WandbLogger``, switched in
when the base config logs elsewhere), grouped by the study, its cell values in its config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from showtell.studies.runner import report, run_study, write_sweep
from showtell.studies.spec import SpecError, load_spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m showtell.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the study's YAML spec (e.g. experiments/studies/ablate_conditioning.yaml)")
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
