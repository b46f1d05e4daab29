"""pcseg: LiDAR semantic segmentation with Deep Parametric Continuous Convolution."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root when pcseg runs from a checkout (configs/ and data/ live here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
