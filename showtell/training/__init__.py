"""Training and running a captioner with Lightning: the ``LightningModule``, self-critical training, the CLI
(``ShowTellCLI``), checkpoints, callbacks (outputs, loggers, SIGTERM), and the predict loop of the caption
command. The names below load on first use."""

from showtell.lazy import lazy_exports

_EXPORTS = {"ShowTellModule": "module", "load_model": "loading", "ShowTellCLI": "cli"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
