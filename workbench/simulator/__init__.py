"""Fleet simulator: seeded, vectorised contract frames with states, incidents and scenarios.

Batch mode (:func:`generate`, :func:`simulate`) returns contract rows and the incidents' ground
truth; stream mode (:class:`FleetStream`) yields the same rows one step at a time.
"""

from workbench.simulator.engine import SimulatorConfig
from workbench.simulator.fleet import Fleet, make_fleet
from workbench.simulator.generate import DEFAULT_START, BatchRun, Simulation, generate, simulate
from workbench.simulator.incidents import GROUND_TRUTH_SCHEMA, INCIDENT_TYPES, KINDS, IncidentKind, incident_counts
from workbench.simulator.profiles import PROFILE_DEFAULTS, Levels, ProfileDefaults
from workbench.simulator.scenarios import SCENARIO_NAMES, SCENARIOS, Scenario
from workbench.simulator.stream import FleetStream

__all__ = [
    "BatchRun",
    "DEFAULT_START",
    "GROUND_TRUTH_SCHEMA",
    "INCIDENT_TYPES",
    "KINDS",
    "PROFILE_DEFAULTS",
    "SCENARIOS",
    "SCENARIO_NAMES",
    "Fleet",
    "FleetStream",
    "IncidentKind",
    "Levels",
    "ProfileDefaults",
    "Scenario",
    "Simulation",
    "SimulatorConfig",
    "generate",
    "incident_counts",
    "make_fleet",
    "simulate",
]
