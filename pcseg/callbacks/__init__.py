"""Lightning callbacks of pcseg (configured in configs/callbacks/)."""

from pcseg.callbacks.bad_scans import BadScanLogger
from pcseg.callbacks.epoch_log import EpochLog, TerminalRichProgressBar
from pcseg.callbacks.tensorboard_3d import TensorBoard3D
from pcseg.callbacks.time_budget import TimeBudget
from pcseg.callbacks.weight_average import WeightAverage

__all__ = [
    "BadScanLogger",
    "EpochLog",
    "TensorBoard3D",
    "TerminalRichProgressBar",
    "TimeBudget",
    "WeightAverage",
]
