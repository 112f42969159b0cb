"""Fleet simulator: seeded, vectorised contract frames with seasonality, noise and coupling."""

from workbench.simulator.fleet import Fleet, make_fleet
from workbench.simulator.generate import DEFAULT_START, generate, simulate
from workbench.simulator.profiles import PROFILE_DEFAULTS, Levels, ProfileDefaults

__all__ = [
    "DEFAULT_START",
    "PROFILE_DEFAULTS",
    "Fleet",
    "Levels",
    "ProfileDefaults",
    "generate",
    "make_fleet",
    "simulate",
]
