"""Line searches, trust regions, quasi-Newton and conjugate-gradient methods."""

from .lsr1 import *  # noqa: F403
from .quasi_newton import *  # noqa: F403
