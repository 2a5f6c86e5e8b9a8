"""Line searches, trust regions, quasi-Newton and conjugate-gradient methods."""

from .conjugate_gradient import *  # noqa: F403
from .lsr1 import *  # noqa: F403
from .quasi_newton import *  # noqa: F403
from .step_size import *  # noqa: F403
from .trust_region import *  # noqa: F403
