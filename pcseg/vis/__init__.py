"""Visualisation: per-point colours, bird's-eye-view images, offscreen PNG, PLY, Open3D window.

- :mod:`pcseg.vis.colors`: colours by class (label yaml), error, remission or height.
- :mod:`pcseg.vis.bev`: numpy bird's-eye view (``bev_image``, ``bev_panel`` for TensorBoard).
- :mod:`pcseg.vis.render`: offscreen 3D render to PNG (Open3D/EGL, BEV fallback), ``save_ply``.
- :mod:`pcseg.vis.frames`: find/load the frames of a sequence with labels and predictions.
- :mod:`pcseg.vis.window`: the interactive window of ``scripts/visualize.py``.

Submodules are imported on use so that ``from pcseg.vis.bev import bev_panel`` in the training
loop does not import Open3D.
"""
