"""lifekit: high-availability clustering for Python.

The API for embedders and integrators: declare resources and hierarchies (in Python or TOML),
run them on a node, subscribe to its ordered event stream, read its status. Kit authors use
:mod:`lifekit.kit`; hook specs are in :mod:`lifekit.hookspecs`; errors in :mod:`lifekit.errors`;
the conformance suite and pytest plugin in :mod:`lifekit.testing`.
"""

from lifekit._engine import (
    ActionTimedOut,
    Engine,
    EngineSnapshot,
    FencingRequired,
    HierarchyFailed,
    HierarchyInService,
    HierarchyOutOfService,
    HierarchyStatus,
    Notification,
    ProbingCompleted,
    QuickcheckFailed,
    RecoveryLimitReached,
    RecoveryStarted,
    ResourceFailed,
    ResourceRecovered,
    ResourceStatus,
    ShutdownCompleted,
    StateChanged,
)
from lifekit._model import (
    Action,
    Hierarchy,
    HierarchySpec,
    Model,
    Outcome,
    Policy,
    RecoveryLimit,
    Resource,
    Result,
    State,
    SwitchbackType,
    Timeouts,
    build_model,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ActionTimedOut",
    "Engine",
    "EngineSnapshot",
    "FencingRequired",
    "Hierarchy",
    "HierarchyFailed",
    "HierarchyInService",
    "HierarchyOutOfService",
    "HierarchySpec",
    "HierarchyStatus",
    "Model",
    "Notification",
    "Outcome",
    "Policy",
    "ProbingCompleted",
    "QuickcheckFailed",
    "RecoveryLimit",
    "RecoveryLimitReached",
    "RecoveryStarted",
    "Resource",
    "ResourceFailed",
    "ResourceRecovered",
    "ResourceStatus",
    "Result",
    "ShutdownCompleted",
    "State",
    "StateChanged",
    "SwitchbackType",
    "Timeouts",
    "__version__",
    "build_model",
]
