"""Training and running a captioner with Lightning: the ``LightningModule``, self-critical training, the CLI
(``ShowTellCLI``), checkpoints, callbacks (outputs, loggers, SIGTERM), and the predict loop of the caption
command."""

from showtell.training.loading import load_model
from showtell.training.module import ShowTellModule

__all__ = ["ShowTellModule", "load_model"]
