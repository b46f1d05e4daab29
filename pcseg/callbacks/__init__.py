"""Lightning callbacks of pcseg (configured in configs/callbacks/)."""

from pcseg.callbacks.bad_scans import BadScanLogger

__all__ = ["BadScanLogger"]
