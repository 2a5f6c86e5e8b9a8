"""gradtx: optax-style gradient transformations for PyTorch.

>>> import gradtx as gx
>>> tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))
"""

from ._tree import (
    tree_add,
    tree_get,
    tree_get_all,
    tree_l2_norm,
    tree_leaves,
    tree_map,
    tree_paths,
    tree_scale,
    tree_sub,
    tree_vdot,
    tree_zeros_like,
)
from .aliases import adam, adamw, sgd
from .base import EmptyState, GradientTransformation, apply_updates, identity, stateless
from .combine import chain, named_chain
from .schedules import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from .torch_optim import Optimizer
from .transforms.adaptive import ScaleByAdamState, ScaleByRmsState, scale_by_adam, scale_by_rms
from .transforms.clipping import clip_by_global_norm, clip_value
from .transforms.momentum import EmaState, TraceState, ema, trace
from .transforms.regularize import AddDecayedWeightsState, add_decayed_weights
from .transforms.scaling import (
    ScaleByLrState,
    ScaleByScheduleState,
    scale,
    scale_by_lr,
    scale_by_schedule,
    scale_by_sign,
)

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState", "EmaState", "EmptyState", "GradientTransformation", "Optimizer",
    "ScaleByAdamState", "ScaleByLrState", "ScaleByRmsState", "ScaleByScheduleState", "TraceState",
    "adam", "adamw", "add_decayed_weights", "apply_updates", "chain", "clip_by_global_norm", "clip_value",
    "constant_schedule", "cosine_decay_schedule", "ema", "exponential_decay", "identity", "join_schedules",
    "linear_schedule", "named_chain", "piecewise_constant_schedule", "polynomial_schedule", "scale",
    "scale_by_adam", "scale_by_lr", "scale_by_rms", "scale_by_schedule", "scale_by_sign", "sgd", "stateless",
    "trace", "tree_add", "tree_get", "tree_get_all", "tree_l2_norm", "tree_leaves", "tree_map", "tree_paths",
    "tree_scale", "tree_sub", "tree_vdot", "tree_zeros_like", "warmup_cosine_decay_schedule",
]
