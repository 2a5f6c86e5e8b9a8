"""Gradient approximation: updates from evaluations alone (finite differences, SPSA, RDSA,
Gaussian smoothing and homotopy, MeZO, forward gradients), and Laplacian smoothing.

Each approximator makes its own gradient from ``value_fn`` and declares itself a gradient
source, so the members after it in a chain receive that gradient, a value/gradient function
and a Hessian-vector product of it (:mod:`gradtx.handover`), and ``gx.Optimizer`` calls the
closure with ``backward=False`` only.
"""

from .fdm import fdm
from .forward_gradient import forward_gradient
from .homotopy import gaussian_homotopy
from .laplacian import laplacian_smoothing
from .mezo import MezoState, mezo, scale_by_mezo
from .randomized import gaussian_smoothing, randomized_fdm, rdsa, spsa

__all__ = ["MezoState", "fdm", "forward_gradient", "gaussian_homotopy", "gaussian_smoothing", "laplacian_smoothing",
           "mezo", "randomized_fdm", "rdsa", "scale_by_mezo", "spsa"]
