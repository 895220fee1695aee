"""`alexrepro viz`'s Python entry points: each draws one figure and returns what it wrote (modules in figures/)."""

from alexrepro.figures.curves import draw_curves, read_epoch_records
from alexrepro.figures.filters import draw_filters, filter_mosaic, grid_shape, normalise_kernel
from alexrepro.figures.neighbors import draw_neighbors, nearest_neighbors
from alexrepro.figures.predictions import draw_predictions

__all__ = [
    "draw_curves",
    "draw_filters",
    "draw_neighbors",
    "draw_predictions",
    "filter_mosaic",
    "grid_shape",
    "nearest_neighbors",
    "normalise_kernel",
    "read_epoch_records",
]
