"""The kit author's API: everything a recovery kit needs, and nothing else.

A kit is a class deriving from :class:`Kit` whose async methods are the actions. A kit's
package registers it with a pluggy hook in the ``lifekit.kits`` entry-point group::

    # pyproject.toml
    [project.entry-points."lifekit.kits"]
    counter = "lifekit_counter"

    # lifekit_counter/__init__.py
    from lifekit.kit import Kit, Result, hookimpl

    class CounterKit(Kit):
        kind = "counter"
        ...

    @hookimpl
    def lifekit_kits():
        return [CounterKit()]

One kit object lives as long as the node: :meth:`Kit.open` and :meth:`Kit.close` hold shared
per-node state (a long-lived storage session, say). Every external command goes through
:meth:`ActionContext.run`, which runs it on the context's :class:`Host` (this machine, or a lab
node) with a timeout, killing its whole process group on cancellation. The engine owns
timeouts: an action is cancelled when its timeout passes, so actions must not shield
themselves from cancellation.

See ``docs/kit-guide.md`` for a complete example kit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs
import pluggy

from lifekit._model import Outcome, Resource, Result, Timeouts
from lifekit._runner import LocalHost, ProcessResult, SpawnedProcess
from lifekit._schema import Param, Schema

__all__ = [
    "ActionContext",
    "Host",
    "Kit",
    "LocalHost",
    "NodeContext",
    "Outcome",
    "Param",
    "ProcessResult",
    "Resource",
    "Result",
    "Schema",
    "SpawnedProcess",
    "Timeouts",
    "hookimpl",
]

#: Decorate a kit package's hook implementations with this (project name ``"lifekit"``).
hookimpl = pluggy.HookimplMarker("lifekit")


@runtime_checkable
class Host(Protocol):
    """Where a kit's commands run: this machine (:class:`LocalHost`) or a lab node.

    Kits never start processes themselves; they go through a host, so the same kit runs
    unchanged inside a lab node or under the conformance suite.
    """

    name: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
        max_output: int = 65536,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> ProcessResult:
        """Run a command to completion and return what it printed and its exit status."""
        ...

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        output: str | Path | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> SpawnedProcess:
        """Start a long-lived process in its own process group and return at once."""
        ...


@attrs.frozen
class NodeContext:
    """What a kit learns about its node when it is opened.

    :param name: the node's name.
    :param host: where commands run.
    :param state_dir: a directory the kit may keep state in (created for it).
    :param log: the kit's logger.
    """

    name: str
    host: Host
    state_dir: Path
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]


@attrs.frozen
class ActionContext:
    """What one action of one resource (or one batched quickcheck) gets from the runtime.

    :param node: the node context.
    :param tag: the resource's tag (``None`` for a batched quickcheck).
    :param timeout: the action's timeout in seconds (the runtime cancels it then).
    :param probe: for a quickcheck, whether it is a probe of a resource not known yet.
    :param log: a logger whose records carry the resource's tag.
    """

    node: NodeContext
    tag: str | None
    timeout: float
    probe: bool = False
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = attrs.field(
        default=logging.getLogger("lifekit.kit")
    )

    @property
    def host(self) -> Host:
        """Where commands run."""
        return self.node.host

    @property
    def state_dir(self) -> Path:
        """The kit's state directory on this node."""
        return self.node.state_dir

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
        max_output: int = 65536,
    ) -> ProcessResult:
        """Run a command on this context's host, logged with the resource's tag.

        Without ``timeout`` the command may run as long as the action; cancellation (the
        action's own timeout) kills its whole process group.
        """
        return await self.node.host.run(
            argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            input=input,
            max_output=max_output,
            log=self.log,
        )

    def for_resource(self, tag: str) -> ActionContext:
        """The same context, for one resource of a batch."""
        return attrs.evolve(
            self, tag=tag, log=logging.LoggerAdapter(logging.getLogger("lifekit.kit"), {"tag": tag})
        )


class Kit:
    """Base class of every recovery kit. Override the class attributes and the four actions.

    Every action gets the :class:`Resource` (tag, validated ``params``) and an
    :class:`ActionContext`, and returns a :class:`Result`; raising is treated as a soft
    failure with the exception as the reason (a :class:`~lifekit.errors.ConfigError` as fatal).

    * ``restore``: bring the resource in service. Idempotent: restoring a running resource
      succeeds. A restore cancelled midway must leave nothing ``remove`` cannot clean.
    * ``remove``: take it out of service. Idempotent: removing a stopped resource succeeds.
    * ``quickcheck``: fast, read-only, bounded health check. A stopped resource, or one whose
      program is missing, is ``Result.not_running()``, not an error.
    * ``recover``: local repair after a failed quickcheck (default: ``restore``).
    """

    #: The kind this kit implements, as written in configs (``kind = "app"``).
    kind: ClassVar[str] = ""
    #: One paragraph for ``lifekit kits`` and the docs.
    description: ClassVar[str] = ""
    #: The parameters a resource of this kind takes.
    schema: ClassVar[Schema] = Schema()
    #: Timeouts used when the configuration gives none.
    default_timeouts: ClassVar[Timeouts] = Timeouts()
    #: The smallest timeouts a configuration may set (the config is rejected below them).
    minimum_timeouts: ClassVar[Timeouts] = Timeouts(
        restore=0.01, remove=0.01, quickcheck=0.01, recover=0.01
    )
    #: Quickcheck interval used when the configuration gives none.
    default_quickcheck_interval: ClassVar[float] = 10.0

    async def open(self, node: NodeContext) -> None:
        """Set up per-node state before any action (default: nothing)."""

    async def close(self) -> None:
        """Release per-node state when the node stops (default: nothing)."""

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check parameters together after the schema checked each one (default: accept).

        Raise :class:`~lifekit.errors.ParamError` naming the parameter, the bad value and what
        would be valid. Must be pure and fast: ``lifekit check`` calls it.
        """
        return params

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        """Bring the resource in service (idempotent)."""
        raise NotImplementedError(f"kit {self.kind!r} does not implement restore")

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        """Take the resource out of service (idempotent)."""
        raise NotImplementedError(f"kit {self.kind!r} does not implement remove")

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        """Check the resource's health: read-only, fast, bounded."""
        raise NotImplementedError(f"kit {self.kind!r} does not implement quickcheck")

    async def recover(self, resource: Resource, ctx: ActionContext) -> Result:
        """Repair the resource in place after a failed quickcheck (default: restore)."""
        return await self.restore(resource, ctx)

    async def remove_fenced(self, resource: Resource, ctx: ActionContext) -> Result:
        """Remove on a node that lost the right to shared storage: no I/O to it.

        Default: plain :meth:`remove`, right for kits that do not touch shared storage.
        """
        return await self.remove(resource, ctx)

    async def quickcheck_many(
        self, resources: Sequence[Resource], ctx: ActionContext
    ) -> Mapping[str, Result]:
        """Check several resources of this kind in one call (default: one by one).

        Override to share one read between them (e.g. one address listing for every IP). The
        result must have an entry for every resource.
        """
        results: dict[str, Result] = {}
        for resource in resources:
            results[resource.tag] = await self.quickcheck(resource, ctx.for_resource(resource.tag))
        return results
