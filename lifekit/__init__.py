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

# The runtime pulls in anyio; load it on first use so `import lifekit` stays light for tools
# that only validate configurations or use the pure engine.
_LAZY = {
    "Node": "lifekit._runtime",
    "EventStream": "lifekit._runtime",
    "EventsOverflowed": "lifekit._runtime",
    "NodeStatistics": "lifekit._runtime",
    "PowerControl": "lifekit._runtime",
    "RecordingPowerControl": "lifekit._runtime",
    "RefusingPowerControl": "lifekit._runtime",
    "SystemPowerControl": "lifekit._runtime",
    "STATUS_VERSION": "lifekit._runtime",
    "configure_logging": "lifekit._runtime._logging",
    "Config": "lifekit._config",
    "load_config": "lifekit._config",
    "parse_config": "lifekit._config",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lifekit' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - lazy by design

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "STATUS_VERSION",
    "Action",
    "ActionTimedOut",
    "Config",
    "Engine",
    "EngineSnapshot",
    "EventStream",
    "EventsOverflowed",
    "FencingRequired",
    "Hierarchy",
    "HierarchyFailed",
    "HierarchyInService",
    "HierarchyOutOfService",
    "HierarchySpec",
    "HierarchyStatus",
    "Model",
    "Node",
    "NodeStatistics",
    "Notification",
    "Outcome",
    "Policy",
    "PowerControl",
    "ProbingCompleted",
    "QuickcheckFailed",
    "RecordingPowerControl",
    "RecoveryLimit",
    "RecoveryLimitReached",
    "RecoveryStarted",
    "RefusingPowerControl",
    "Resource",
    "ResourceFailed",
    "ResourceRecovered",
    "ResourceStatus",
    "Result",
    "ShutdownCompleted",
    "State",
    "StateChanged",
    "SwitchbackType",
    "SystemPowerControl",
    "Timeouts",
    "__version__",
    "build_model",
    "configure_logging",
    "load_config",
    "parse_config",
]
