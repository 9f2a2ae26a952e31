"""Studies: a grid of train.py options x seeds run as ordinary commands (one folder each), and their report.
The names below load on first use."""

from showtell.lazy import lazy_exports

_EXPORTS = {"Spec": "spec", "load_spec": "spec", "plan_runs": "spec", "run_study": "runner",
            "write_report": "report"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
