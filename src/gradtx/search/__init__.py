"""Line searches, trust regions, quasi-Newton and conjugate-gradient methods."""

from .quasi_newton import *  # noqa: F403
