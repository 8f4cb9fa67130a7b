"""Probes of trained networks: loss landscapes, the walk of SGD, trajectory dimension.

Each probe is a plain function (or a small recording hook) on any ``torch.nn.Module``, a
per-example loss ``loss_fn(outputs, targets) -> (n,)`` and data ``(x, y)``:

``directions``    filter-normalised random directions (Li et al. 2018)
``landscape``     1-D / 2-D slices, linear interpolation, basin radius, sharpness
``walk``          :class:`WalkRecorder` (Xing et al. 2018), :class:`TrajectoryRecorder`, :func:`sgd_walk`
``ph_dimension``  MST-based persistent-homology dimension, Euclidean or loss pseudometric (Birdal et al. 2021)
"""

from gpmargin.probes.directions import filter_normalize, get_weights, random_direction, set_weights
from gpmargin.probes.landscape import basin_radius, evaluate, interpolate, per_example_losses, sharpness, slice_1d, slice_2d
from gpmargin.probes.ph_dimension import loss_distances, mst_length, ph_dimension
from gpmargin.probes.walk import TrajectoryRecorder, WalkRecorder, sgd_walk

__all__ = [
    "TrajectoryRecorder", "WalkRecorder", "basin_radius", "evaluate", "filter_normalize", "get_weights",
    "interpolate", "loss_distances", "mst_length", "per_example_losses", "ph_dimension", "random_direction",
    "set_weights", "sgd_walk", "sharpness", "slice_1d", "slice_2d",
]
