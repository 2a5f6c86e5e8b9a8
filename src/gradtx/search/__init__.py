"""Methods that evaluate the loss again: line searches, quasi-Newton, conjugate gradient, trust regions."""

from .conjugate_gradient import *  # noqa: F403
from .diagonal_quasi_newton import *  # noqa: F403
from .lbfgs import *  # noqa: F403
from .line_search import *  # noqa: F403
from .lsr1 import *  # noqa: F403
from .quasi_newton import *  # noqa: F403
from .step_size import *  # noqa: F403
from .trust_region import *  # noqa: F403
