"""The :class:`AppKit` object: the schema, the timeouts, and the dispatch to the three modes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from lifekit.errors import ParamError
from lifekit.kit import ActionContext, Kit, Resource, Result, Schema, Timeouts
from lifekit_app._commands import CommandsMode
from lifekit_app._params import SCHEMA, AppConfig, parse
from lifekit_app._supervised import SupervisedMode
from lifekit_app._systemd import SystemdMode

__all__ = ["AppKit"]

#: What every mode implements.
_Mode = CommandsMode | SupervisedMode | SystemdMode
#: Picks one action of a mode.
_Pick = Callable[[_Mode], Callable[[AppConfig, ActionContext], Awaitable[Result]]]


class AppKit(Kit):
    """lifekit's generic application kit (``kind = "app"``).

    One kit object serves every ``app`` resource of a node. The ``mode`` parameter picks how
    each resource is managed: ``commands`` (start/stop/check argv commands), ``supervised`` (a
    foreground process lifekit starts and watches by pid) or ``systemd`` (a unit). See
    ``docs/app-kit.md``.
    """

    kind: ClassVar[str] = "app"
    description: ClassVar[str] = (
        "A generic application: start, stop and check commands with LSB/OCF exit statuses; a "
        "foreground process that lifekit starts, watches by pid and adopts after a restart; "
        "or a systemd unit."
    )
    schema: ClassVar[Schema] = SCHEMA
    # restore and remove leave room for a slow application plus supervised mode's default
    # stop_timeout (10 s) and SIGKILL wait (5 s); recover is a remove followed by a restore.
    default_timeouts: ClassVar[Timeouts] = Timeouts(
        restore=60.0, remove=60.0, quickcheck=20.0, recover=120.0
    )
    # Below these, even starting a small program on a loaded machine times out.
    minimum_timeouts: ClassVar[Timeouts] = Timeouts(
        restore=0.5, remove=0.5, quickcheck=0.2, recover=1.0
    )
    default_quickcheck_interval: ClassVar[float] = 10.0

    def __init__(self) -> None:
        self._commands = CommandsMode()
        self._supervised = SupervisedMode()
        self._systemd = SystemdMode()

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check the parameters together: the mode's required parameters are given, no
        parameter of another mode is, and every value is well formed.

        :raises ParamError: naming the parameter, the bad value and the fix.
        """
        parse(tag, params)
        return params

    async def _call(self, resource: Resource, ctx: ActionContext, action: _Pick) -> Result:
        # Parameters were validated when the configuration was loaded; a resource built some
        # other way with bad ones is a configuration error, reported as fatal, not raised.
        try:
            config = parse(resource.tag, resource.params)
        except ParamError as exc:
            return Result.fatal(str(exc))
        mode: _Mode = self._supervised
        if config.mode == "commands":
            mode = self._commands
        elif config.mode == "systemd":
            mode = self._systemd
        return await action(mode)(config, ctx)

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        """Bring the application up (idempotent); see the mode's documentation."""
        return await self._call(resource, ctx, lambda mode: mode.restore)

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        """Take the application down (idempotent)."""
        return await self._call(resource, ctx, lambda mode: mode.remove)

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        """Check the application; "not running" when it is stopped or its program is missing."""
        return await self._call(resource, ctx, lambda mode: mode.quickcheck)

    async def recover(self, resource: Resource, ctx: ActionContext) -> Result:
        """Repair in place: the ``recover`` command or stop+start, a restart, a unit restart."""
        return await self._call(resource, ctx, lambda mode: mode.recover)
