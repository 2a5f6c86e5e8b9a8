"""Methods that use curvature: Hessian-vector products, Newton, Newton-CG, Nystrom, Gauss-Newton, cubic
regularisation."""

from .cubic import *  # noqa: F403
from .gauss_newton import *  # noqa: F403
from .newton import *  # noqa: F403
from .newton_cg import *  # noqa: F403
from .nystrom import *  # noqa: F403
from .optax_second_order import *  # noqa: F403
