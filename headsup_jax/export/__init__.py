"""Files of Gaussians other tools open (PLY in the 3DGS layout: `export.ply`; web `.splat`: `export.splat`).

Reads and writes files; knows nothing of training. `load_gaussians`/`save_gaussians` pick the format by suffix.
"""
