"""The old home of the loggers, kept because configs and saved run folders name these class paths
(``showtell.loggers.WandbLogger``, ``showtell.loggers.SampleCaptionsTable``); the code is in
``showtell.training.loggers``."""

from showtell.training.loggers import SampleCaptionsTable, WandbLogger

__all__ = ["SampleCaptionsTable", "WandbLogger"]
