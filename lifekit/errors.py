"""Every exception lifekit raises, in one hierarchy.

Each exception derives from :class:`LifekitError` and from its builtin twin where one exists,
so callers can catch either (``ConfigError`` is a ``ValueError``, ``ActionTimeout`` a
``TimeoutError``). Each carries its facts as attributes and its message names the bad value and
the fix. Foreign errors are translated once, at the edge where they enter lifekit, with
``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ActionTimeout",
    "ConfigError",
    "ConfigIssue",
    "ControlError",
    "EngineFailed",
    "EngineUsageError",
    "KitError",
    "KitNotFound",
    "LabError",
    "LifekitError",
    "ParamError",
    "ProcessError",
]


class LifekitError(Exception):
    """Base class of every error lifekit raises on purpose."""


class ConfigIssue:
    """One problem found in a configuration: where, what was there, what would be valid.

    :param where: the file and key path, e.g. ``cluster.toml: resources.web.depends_on``.
    :param problem: what is wrong, in words.
    :param value: the offending value, if there is one.
    :param expected: what would be valid, or how to fix it.
    """

    __slots__ = ("expected", "problem", "value", "where")

    _MISSING = object()

    def __init__(
        self, where: str, problem: str, *, value: object = _MISSING, expected: str = ""
    ) -> None:
        self.where = where
        self.problem = problem
        self.value = value
        self.expected = expected

    def has_value(self) -> bool:
        """Whether a bad value was recorded (``None`` is a value)."""
        return self.value is not ConfigIssue._MISSING

    def __str__(self) -> str:
        text = f"{self.where}: {self.problem}"
        if self.has_value():
            text += f" (got {self.value!r})"
        if self.expected:
            text += f"; {self.expected}"
        return text

    def __repr__(self) -> str:
        return f"ConfigIssue({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigIssue) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class ConfigError(LifekitError, ValueError):
    """A configuration (a model, a TOML file, kit parameters) is invalid.

    Raised before anything changes. :attr:`issues` lists every problem found, not just the
    first, so one run of ``lifekit check`` shows them all.
    """

    def __init__(self, issues: Sequence[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue("configuration", issues)]
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        if len(self.issues) == 1:
            message = str(self.issues[0])
        else:
            lines = "\n".join(f"  - {issue}" for issue in self.issues)
            message = f"{len(self.issues)} problems in the configuration:\n{lines}"
        super().__init__(message)


class ParamError(ConfigError):
    """A resource's kit parameter is missing or invalid.

    :param tag: the resource.
    :param param: the parameter's name.
    :param value: the bad value.
    :param expected: what would be valid.
    """

    def __init__(self, tag: str, param: str, value: object, expected: str) -> None:
        self.tag = tag
        self.param = param
        self.value = value
        self.expected = expected
        super().__init__(
            [
                ConfigIssue(
                    f"resource {tag!r}: parameter {param!r}",
                    "invalid value",
                    value=value,
                    expected=expected,
                )
            ]
        )


class KitError(LifekitError):
    """A kit broke its contract (returned something that is not a result, a bad schema...)."""


class KitNotFound(KitError, LookupError):
    """No installed kit provides the requested kind.

    :param kind: the kind asked for.
    :param available: the kinds that are installed.
    """

    def __init__(self, kind: str, available: Sequence[str]) -> None:
        self.kind = kind
        self.available = tuple(sorted(available))
        listed = ", ".join(self.available) or "none"
        super().__init__(
            f"no kit provides kind {kind!r} (installed kinds: {listed}); install the kit's "
            f"package, e.g. `pip install lifekit-{kind}`, so that it registers in the "
            f"'lifekit.kits' entry-point group"
        )


class ActionTimeout(LifekitError, TimeoutError):
    """An action or a process ran past its timeout and was cancelled.

    :param what: what timed out (a kit action with its resource's tag, or a command line).
    :param timeout: the limit, in seconds.
    """

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} timed out after {timeout:g} s")


class ProcessError(LifekitError, OSError):
    """An external command could not be started, or exited with a status the caller refused.

    :param argv: the command line.
    :param returncode: its exit status, or ``None`` if it never started.
    :param stderr: the tail of its standard error.
    """

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str = "", *, reason: str = ""
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        if reason:
            message = f"{self.argv[0]!r}: {reason}"
        else:
            message = f"{' '.join(self.argv)!r} exited with status {returncode}"
            if stderr.strip():
                message += f": {stderr.strip().splitlines()[-1]}"
        super().__init__(message)


class EngineUsageError(LifekitError, ValueError):
    """The engine was given an event that makes no sense in its current state.

    Raised before any change: the engine's state is exactly as it was.
    """


class EngineFailed(LifekitError, RuntimeError):
    """The engine hit an internal error and refuses every further event.

    The runtime stops acting on its resources when it sees this (a poisoned engine cannot be
    trusted to keep split brain impossible); :attr:`__cause__` is the original error.
    """


class ControlError(LifekitError, ConnectionError):
    """The local control socket could not be reached or refused a request."""


class LabError(LifekitError, RuntimeError):
    """The lab (the virtual cluster of :mod:`lifekit.lab`) cannot do what was asked.

    Its message says what was wrong (a node that is powered off, a missing tool or kernel
    feature, a name already taken) and how to fix it (``lifekit lab doctor`` names missing
    packages; ``lifekit lab clean`` removes a dead lab's leftovers).
    """
