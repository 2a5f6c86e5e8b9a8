"""Multi-tensor kernels for writing transforms over lists of tensors (``gx.foreach``).

The kernels every built-in transform is written with. Each takes lists of tensors (and
scalars: Python numbers or 0-dim tensors, such as a float64 hyperparameter kept in state)
and runs one ``torch._foreach_*`` call for the whole list, or one ordinary op per tensor
under ``torch.func`` transforms, which have no rule for foreach ops.

- ``inplace=False`` (the default) returns new tensors and leaves every input untouched;
  ``inplace=True`` writes the result into the first list and returns it.
- "First write decides": the first operation on a buffer takes the ``inplace`` the
  transform was called with, later ones on the buffer it returned are always in place.
  So the pure path allocates exactly its outputs and the in-place path nothing::

      ms = gx.foreach.lerp(ms, gs, 1 - b1, inplace=inplace)  # new moments, or the old ones updated
      out = gx.foreach.div(ms, bias_correction)               # a fresh buffer for the update ...
      gx.foreach.mul(out, -lr, inplace=True)                  # ... then scaled where it is

- A result computed with a 0-dim tensor scalar keeps the dtype of the first list.
- While autograd records (:func:`recording`, e.g. a hypergradient through the update),
  do not write into temporaries that backward may need; take the out-of-place form.

Tree plumbing: :func:`leaves` flattens an update tree, :func:`leaves_like` gives another
tree's leaves in that order (a state tree shaped like the params), :func:`unflatten`
builds a tree back. ``gx.multi_tensor`` does this plumbing for you.
"""

from __future__ import annotations

from ._foreach import (  # noqa: A004 - abs and pow mirror torch, inside this namespace
    abs,
    add,
    addcdiv,
    addcmul,
    cast,
    cast_like,
    clamp,
    clone,
    copy_,
    div,
    exp,
    global_norm,
    lerp,
    log,
    maximum,
    minimum,
    mul,
    neg,
    norms,
    pow,
    reciprocal,
    recording,
    sign,
    sqrt,
    sub,
    zeros_like,
)
from .transforms._common import leaves, leaves_like, unflatten

__all__ = ["abs", "add", "addcdiv", "addcmul", "cast", "cast_like", "clamp", "clone", "copy_", "div", "exp",
           "global_norm", "leaves", "leaves_like", "lerp", "log", "maximum", "minimum", "mul", "neg", "norms", "pow",
           "reciprocal", "recording", "sign", "sqrt", "sub", "unflatten", "zeros_like"]
