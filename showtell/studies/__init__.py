"""Studies: a grid of train.py options x seeds run as ordinary commands (one folder each), and their report."""

from showtell.studies.report import write_report
from showtell.studies.runner import run_study
from showtell.studies.spec import Spec, load_spec, plan_runs

__all__ = ["Spec", "load_spec", "plan_runs", "run_study", "write_report"]
