"""Methods that use curvature: Hessian-vector products, Newton, Newton-CG, Nystrom, Gauss-Newton, cubic
regularisation."""

from .optax_second_order import *  # noqa: F403
