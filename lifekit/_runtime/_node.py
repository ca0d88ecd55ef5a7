"""The node runtime: drives one engine with anyio, on asyncio and trio.

One task, the *driver*, owns the engine: it takes events from an inbox (action results,
requests), calls the engine with the time from ``anyio.current_time()``, sleeps until
``engine.next_deadline()``, and dispatches what comes out. ``RunAction`` becomes an action task
under its own cancel scope; ``CancelAction`` cancels that scope (the runner then kills the
action's whole process group); notifications go, in order, to every subscriber of
:meth:`Node.events` and to the log. The engine decides every timeout; the runtime only carries
them out.

Quickchecks of one kind that fall due together are run as one ``quickcheck_many`` call when the
kit overrides it (e.g. one address listing for every IP resource).
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lifekit._engine import (
    ActionFinished,
    ActionHeld,
    ActionStarted,
    CancelAction,
    Engine,
    EngineSnapshot,
    Event,
    HierarchyFailed,
    InServiceRequested,
    NodeStarted,
    Notification,
    OutOfServiceRequested,
    ResourceStatus,
    RunAction,
    ShutdownCompleted,
    ShutdownRequested,
    StateChanged,
)
from lifekit._model import Action, Model, Outcome, Result, State
from lifekit._registry import KitRegistry, load_kits
from lifekit._runner import LocalHost
from lifekit._runtime._power import PowerControl, RefusingPowerControl
from lifekit._runtime._status import status_document
from lifekit.errors import (
    ConfigError,
    EngineFailed,
    EngineUsageError,
    KitNotFound,
    LifekitError,
)
from lifekit.kit import ActionContext, Host, Kit, NodeContext

__all__ = ["EventStream", "EventsOverflowed", "Node", "NodeStatistics"]

_log = logging.getLogger("lifekit.node")

OnExit = Literal["take_out", "leave_running"]


class EventsOverflowed(LifekitError):
    """A subscriber of :meth:`Node.events` fell so far behind that events were dropped.

    Raised from its iterator; the events it already got are in order and complete.
    """


@attrs.frozen
class NodeStatistics:
    """Counters of one node, for monitoring and benchmarks."""

    actions_started: int
    actions_finished: int
    actions_in_flight: int
    batched_quickchecks: int
    events_published: int
    subscribers: int


@attrs.define
class _Subscriber:
    send: MemoryObjectSendStream[Notification]
    overflowed: bool = False


class Node:
    """One lifekit node: the engine, its kits, and the tasks that run their actions.

    Use it as an async context manager::

        async with lifekit.Node(model, name="n1") as node:
            await node.bring_in_service("web")
            async for event in node.events():
                ...

    On exit it takes every hierarchy out of service (``on_exit="take_out"``, the default) or
    leaves them running (``"leave_running"``), then closes the kits.

    :param model: the resources and hierarchies.
    :param name: the node's name (default: this machine's hostname).
    :param kits: the kits to use (default: those installed, plus ``plugins``).
    :param plugins: extra pluggy plugins providing kits (e.g. a kit defined in a test).
    :param host: where kit commands run (default: this machine).
    :param state_dir: where kits keep state (created; default: a ``lifekit-<name>`` directory
        under ``/var/lib`` when root, else under the temporary directory).
    :param on_exit: what leaving the context does to hierarchies in service.
    :param power: the one seam for drastic node actions (halt, reboot). The default refuses
        them: test nodes share one kernel.
    :param max_concurrent_actions: kit actions running at once, at most.
    :param events_buffer: events a subscriber may lag behind before it is dropped (default:
        10,000, or four per resource if that is more).
    """

    def __init__(
        self,
        model: Model,
        *,
        name: str | None = None,
        kits: KitRegistry | None = None,
        plugins: Iterable[object] = (),
        host: Host | None = None,
        state_dir: str | Path | None = None,
        on_exit: OnExit = "take_out",
        power: PowerControl | None = None,
        max_concurrent_actions: int = 64,
        events_buffer: int | None = None,
    ) -> None:
        if on_exit not in ("take_out", "leave_running"):
            raise ConfigError(f"on_exit must be 'take_out' or 'leave_running', got {on_exit!r}")
        if max_concurrent_actions < 1:
            raise ConfigError(
                f"max_concurrent_actions must be >= 1, got {max_concurrent_actions!r}"
            )
        self.name = name or os.uname().nodename
        self._model = model
        self._kits_given = kits
        self._plugins = tuple(plugins)
        self._host: Host = host or LocalHost(self.name)
        self._state_dir = (
            Path(state_dir) if state_dir is not None else _default_state_dir(self.name)
        )
        self._on_exit: OnExit = on_exit
        self._power = power or RefusingPowerControl()
        self._max_running = max_concurrent_actions
        self._running = 0
        self._queued: deque[tuple[list[RunAction], anyio.CancelScope]] = deque()
        # One engine step can publish several events per resource (a whole bring-up at
        # once): a buffer smaller than that would drop even a subscriber that keeps up.
        self._events_buffer = events_buffer or max(10_000, 4 * len(model.resources))
        self._engine = Engine(model)
        self._kits: KitRegistry | None = None
        self._opened: list[Kit] = []
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._subscribers: list[_Subscriber] = []
        self._changed = anyio.Event()
        self._snapshot: EngineSnapshot | None = None
        # Created on entry: a stream made here would warn if the node were never entered.
        self._inbox_send: MemoryObjectSendStream[Event]
        self._inbox: MemoryObjectReceiveStream[Event]
        self._group: anyio.abc.TaskGroup | None = None
        self._node_context: NodeContext | None = None
        self._started_at = 0.0
        self._wall_started_at = 0.0
        self._engine_error: BaseException | None = None
        self._shutdown_done = anyio.Event()
        self._counters = {"started": 0, "finished": 0, "batched": 0, "published": 0}
        # Every event queued for the driver counts; a waiter knows its request was applied
        # once _applied reaches the count at the time it queued it.
        self._sent = 0
        self._applied = 0
        self._entered = False
        self._stopping = False
        self._driver_scope = anyio.CancelScope()
        self._contexts: dict[tuple[str | None, str, float, bool], ActionContext] = {}
        # Restores, removes, recovers and probes running per hierarchy: a waiter for one
        # hierarchy reads one counter instead of every member after every change.
        self._busy = dict.fromkeys(model.hierarchies, 0)
        self._busy_roots: dict[int, tuple[str, ...]] = {}

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    async def __aenter__(self) -> Node:
        if self._entered:
            raise RuntimeError("a Node can be entered only once; create a new Node instead")
        self._entered = True
        kits = self._kits_given
        if kits is None:
            # Scanning entry points and importing kit packages reads files: not on the loop.
            kits = await anyio.to_thread.run_sync(
                lambda: load_kits(node_name=self.name, plugins=self._plugins)
            )
        missing = sorted({r.kind for r in self._model.resources.values()} - set(kits.kits))
        if missing:
            raise KitNotFound(missing[0], list(kits.kits))
        self._kits = kits
        await anyio.to_thread.run_sync(
            lambda: self._state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        )
        self._node_context = NodeContext(
            name=self.name,
            host=self._host,
            state_dir=self._state_dir,
            log=logging.LoggerAdapter(logging.getLogger("lifekit.kit"), {"node": self.name}),
        )
        used = {resource.kind for resource in self._model.resources.values()}
        try:
            for kind in sorted(used):
                kit = kits.get(kind)
                await kit.open(self._node_context)
                self._opened.append(kit)
        except BaseException:
            await self._close_kits()
            raise
        self._started_at = anyio.current_time()
        import time  # noqa: PLC0415 - wall clock only for status timestamps, read here once

        self._wall_started_at = time.time()
        self._inbox_send, self._inbox = anyio.create_memory_object_stream[Event](math.inf)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._drive, name=f"lifekit node {self.name} driver")
        self._sent += 1
        self._inbox_send.send_nowait(NodeStarted())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group = self._group
        if group is None:
            raise RuntimeError("Node.__aexit__ without __aenter__")
        self._stopping = True
        try:
            if self._engine_error is None:
                take_out = self._on_exit == "take_out"
                self._sent += 1
                self._inbox_send.send_nowait(ShutdownRequested(take_out=take_out))
                with anyio.CancelScope(shield=True):
                    await self._shutdown_done.wait()
            self._driver_scope.cancel()
            for scope in self._scopes.values():
                scope.cancel()
            group.cancel_scope.cancel()
        finally:
            # The body's own error goes back to the caller as it is: handing it to the task
            # group would wrap it in an ExceptionGroup that `except ValueError` never matches.
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                exc_type, exc, tb = None, None, None
            try:
                await group.__aexit__(exc_type, exc, tb)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._close_kits()
                for subscriber in self._subscribers:
                    subscriber.send.close()
                self._inbox_send.close()
                self._inbox.close()
        return None

    async def _close_kits(self) -> None:
        for kit in reversed(self._opened):
            try:
                await kit.close()
            except Exception:  # noqa: BLE001
                # A kit failing to close must not stop the others from closing.
                _log.exception("kit %r failed to close", kit.kind)
        self._opened.clear()

    # -----------------------------------------------------------------------------------------
    # Requests and queries

    @property
    def model(self) -> Model:
        """The model this node runs."""
        return self._model

    def request_in_service(self, root: str) -> None:
        """Ask for the hierarchy ``root`` to be brought in service; returns at once."""
        self._send(InServiceRequested(root), root)

    def request_out_of_service(self, root: str, *, fenced: bool = False) -> None:
        """Ask for the hierarchy ``root`` to be taken out of service; returns at once."""
        self._send(OutOfServiceRequested(root, fenced=fenced), root)

    def _send(self, event: Event, root: str) -> int:
        """Queue a request for the driver; return the ticket it will have when applied."""
        self._check_root(root)
        if self._stopping:
            raise LifekitError(f"the node is shutting down; it takes no more requests ({root!r})")
        if self._engine_error is not None:
            raise EngineFailed("this node's engine failed; it accepts no requests") from (
                self._engine_error
            )
        self._sent += 1
        self._inbox_send.send_nowait(event)
        return self._sent

    async def bring_in_service(self, root: str, *, timeout: float | None = None) -> bool:
        """Bring ``root`` in service and wait until the engine has nothing more to do for it.

        :returns: ``True`` if every resource of it is in service, ``False`` if it failed (or a
            failure kept part of it out of service).
        :raises TimeoutError: it did not settle within ``timeout`` seconds.
        """
        ticket = self._send(InServiceRequested(root), root)
        await self._wait_settled(ticket, root, timeout)
        statuses = self._member_statuses(root)
        return self._engine.hierarchy_status(root).failed is None and all(
            status.state.in_service for status in statuses
        )

    async def take_out_of_service(
        self, root: str, *, fenced: bool = False, timeout: float | None = None
    ) -> bool:
        """Take ``root`` out of service and wait until the engine has nothing more to do for it.

        :returns: ``True`` once nothing of it is in service here; ``False`` if something still
            is: a member shared with a hierarchy that stays in service, or one whose remove
            failed (then its status says ``fencing_required``).
        :raises TimeoutError: it did not settle within ``timeout`` seconds.
        """
        ticket = self._send(OutOfServiceRequested(root, fenced=fenced), root)
        await self._wait_settled(ticket, root, timeout)
        return all(
            not status.state.in_service and not status.fencing_required
            for status in self._member_statuses(root)
        )

    def _member_statuses(self, root: str) -> list[ResourceStatus]:
        status = self._engine.resource_status
        return [status(tag) for tag in self._model.hierarchies[root].members]

    async def _wait_settled(self, ticket: int, root: str, timeout: float | None) -> None:
        """Wait until request ``ticket`` was applied and no member of ``root`` is acting.

        The engine starts every action a change allows in the same step that applied it, so
        when no member is busy after that, nothing more will happen to the hierarchy but
        periodic quickchecks (a remove that failed needs fencing, not time). Reads only the
        hierarchy's members: cheap for one hierarchy among 10,000 resources.
        """
        busy = self._busy

        def settled(_: object) -> bool:
            return self._applied >= ticket and busy[root] == 0

        await self._wait(settled, timeout)

    def snapshot(self) -> EngineSnapshot:
        """The engine's state now (frozen)."""
        return self._engine.snapshot()

    def status(self) -> dict[str, Any]:
        """The versioned status document (see ``docs/status.md``)."""
        import time  # noqa: PLC0415 - wall clock only for the document's timestamps

        now = anyio.current_time()
        return status_document(
            node=self.name,
            model=self._model,
            snapshot=self._engine.snapshot(),
            wall_now=time.time(),
            monotonic_now=now,
            uptime=now - self._started_at,
            engine_error=repr(self._engine_error) if self._engine_error else None,
        )

    def statistics(self) -> NodeStatistics:
        """Counters since the node started."""
        return NodeStatistics(
            actions_started=self._counters["started"],
            actions_finished=self._counters["finished"],
            actions_in_flight=len(self._scopes),
            batched_quickchecks=self._counters["batched"],
            events_published=self._counters["published"],
            subscribers=len(self._subscribers),
        )

    async def wait_until(
        self, predicate: Callable[[EngineSnapshot], bool], *, timeout: float | None = None
    ) -> EngineSnapshot:
        """Wait until ``predicate(snapshot)`` holds and return that snapshot.

        It builds a whole snapshot after every change: fine for tests and small nodes; with
        thousands of resources, follow :meth:`events` instead.

        :raises TimeoutError: it did not hold within ``timeout`` seconds.
        """
        found: list[EngineSnapshot] = []

        def check(_: object) -> bool:
            snapshot = self._engine.snapshot()
            if predicate(snapshot):
                found.append(snapshot)
                return True
            return False

        await self._wait(check, timeout)
        return found[-1]

    async def _wait(self, condition: Callable[[object], bool], timeout: float | None) -> None:
        with anyio.fail_after(timeout if timeout is not None else math.inf):
            while not condition(None):
                if self._engine_error is not None:
                    raise EngineFailed(
                        "this node stopped acting on its resources; the condition can no "
                        "longer come true"
                    ) from self._engine_error
                changed = self._changed
                await changed.wait()

    def events(self) -> EventStream:
        """Every notification from now on, in the order the engine made them.

        Use ``async for event in node.events():``; break out whenever you like (the stream
        unsubscribes when it is closed, exhausted or garbage collected), or hold it in a
        ``with`` block to unsubscribe at a known point.

        :raises EventsOverflowed: (from the iterator) the subscriber lagged more than
            ``events_buffer`` events behind.
        """
        send, receive = anyio.create_memory_object_stream[Notification](self._events_buffer)
        subscriber = _Subscriber(send)
        self._subscribers.append(subscriber)
        return EventStream(self, subscriber, receive)

    def _check_root(self, root: str) -> None:
        if root not in self._model.hierarchies:
            known = ", ".join(sorted(self._model.hierarchies)) or "none"
            raise ConfigError(
                f"no hierarchy is named {root!r}; hierarchies are named by their root's tag "
                f"(known: {known})"
            )
        if self._group is None:
            raise RuntimeError("the node is not running: use `async with Node(...)` first")

    # -----------------------------------------------------------------------------------------
    # The driver

    async def _drive(self) -> None:
        engine = self._engine
        inbox = self._inbox
        try:
            # Shielded: cancelling the code around `async with Node` must not stop the node
            # before __aexit__ has taken its hierarchies out. __aexit__ cancels this scope.
            with anyio.CancelScope(shield=True) as self._driver_scope:
                await self._drive_loop(engine, inbox)
        except EngineFailed as exc:
            await self._engine_failed(exc)
        finally:
            if not self._stopping and self._engine_error is None:
                # It ended on its own: this node can no longer act, so it says so to every
                # waiter and subscriber.
                self._engine_error = LifekitError("the node's driver stopped unexpectedly")
                self._end_streams()
            self._shutdown_done.set()
            self._notify_changed()

    async def _drive_loop(self, engine: Engine, inbox: MemoryObjectReceiveStream[Event]) -> None:
        while True:
            deadline = engine.next_deadline()
            event: Event | None = None
            with anyio.CancelScope(deadline=deadline if deadline is not None else math.inf):
                event = await inbox.receive()
            now = anyio.current_time()
            if event is not None:
                batch = [event]
                # Drain what is already queued so one engine pass handles a burst.
                while True:
                    try:
                        batch.append(inbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                outputs = []
                for item in batch:
                    if isinstance(item, ActionFinished):
                        for root in self._busy_roots.pop(item.command_id, ()):
                            self._busy[root] -= 1
                    try:
                        outputs += engine.handle(item, now)
                    except EngineUsageError as exc:
                        if not isinstance(item, ActionFinished):
                            # A request (or a late ActionStarted) the engine refuses,
                            # e.g. during shutdown, changes nothing; say so and go on.
                            _log.error("request refused: %s", exc)
                            continue
                        # A result the engine cannot read: its action still needs its
                        # one answer, or the resource would stay busy for ever.
                        _log.error("kit result refused, counted as a failure: %s", exc)
                        substitute = Result.soft_failure(f"invalid kit result: {exc}")
                        try:
                            outputs += engine.handle(
                                ActionFinished(item.command_id, substitute), now
                            )
                        except EngineUsageError as again:
                            # Not a bad result but a bad id: nothing waits on it.
                            _log.error("action result dropped: %s", again)
                outputs += engine.handle_timer(now)
                # Only requests hold tickets; action results are queued by the runtime.
                self._applied += sum(
                    1 for item in batch if not isinstance(item, ActionFinished | ActionStarted)
                )
            else:
                outputs = engine.handle_timer(now)
            self._dispatch(outputs, now)
            if engine.shutdown_completed:
                self._shutdown_done.set()

    async def _engine_failed(self, exc: EngineFailed) -> None:
        self._engine_error = exc.__cause__ or exc
        _log.critical(
            "the engine failed and this node stops acting on its resources: %s",
            self._engine_error,
            exc_info=self._engine_error,
        )
        for scope in self._scopes.values():
            scope.cancel()
        self._end_streams()
        self._shutdown_done.set()
        self._notify_changed()
        await self._power.engine_failed(str(self._engine_error))

    def _end_streams(self) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.send.close()

    def _dispatch(self, outputs: Sequence[object], now: float) -> None:
        batches: dict[tuple[str, float, bool], list[RunAction]] = {}
        roots_of = self._model.roots_of
        for output in outputs:
            if isinstance(output, RunAction):
                if output.action is not Action.QUICKCHECK or output.probe:
                    roots = roots_of[output.tag]
                    self._busy_roots[output.command_id] = roots
                    for root in roots:
                        self._busy[root] += 1
                if output.action is Action.QUICKCHECK and self._batchable(output.kind):
                    batches.setdefault((output.kind, output.timeout, output.probe), []).append(
                        output
                    )
                else:
                    self._start([output], now)
            elif isinstance(output, CancelAction):
                scope = self._scopes.get(output.command_id)
                if scope is not None:
                    scope.cancel()
            else:
                self._publish(output)  # type: ignore[arg-type]
        for commands in batches.values():
            if len(commands) > 1:
                self._counters["batched"] += 1
            self._start(commands, now)
        self._notify_changed()

    def _running_kits(self) -> KitRegistry:
        if self._kits is None:
            raise RuntimeError("the node is not running: use `async with Node(...)` first")
        return self._kits

    def _batchable(self, kind: str) -> bool:
        return type(self._running_kits().get(kind)).quickcheck_many is not Kit.quickcheck_many

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _publish(self, event: Notification) -> None:
        self._counters["published"] += 1
        _log_notification(event)
        # A copy: an EventStream collected during the loop must not shift it under our feet.
        for subscriber in tuple(self._subscribers):
            if subscriber.overflowed:
                continue
            try:
                subscriber.send.send_nowait(event)
            except anyio.WouldBlock:
                subscriber.overflowed = True
                subscriber.send.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # Its reader went away: forget it.
                self._subscribers.remove(subscriber)
        if isinstance(event, ShutdownCompleted):
            self._shutdown_done.set()

    def _start(self, commands: list[RunAction], now: float) -> None:
        # Shielded like the driver: only CancelAction, an engine failure or the node's final
        # exit cancel an action, never the caller's own cancellation.
        scope = anyio.CancelScope(shield=True)
        for command in commands:
            self._scopes[command.command_id] = scope
        # At most max_concurrent_actions tasks exist; the rest wait here as plain data rather
        # than as tasks parked on a lock (10,000 parked tasks cost more than the actions).
        # A command cancelled while queued still runs its task, which reports it cancelled.
        if self._running < self._max_running:
            self._spawn(commands, scope)
        else:
            self._queued.append((commands, scope))
            # Said at once, in the driver: its timeout must not run while it waits.
            for command in commands:
                self._engine.handle(ActionHeld(command.command_id), now)

    def _spawn(
        self, commands: list[RunAction], scope: anyio.CancelScope, *, held: bool = False
    ) -> None:
        if self._group is None:
            raise RuntimeError("the node is not running: use `async with Node(...)` first")
        if held:
            # Waiting for a slot is not the kit's slowness: its timeout starts now.
            for command in commands:
                with suppress(anyio.ClosedResourceError):
                    self._inbox_send.send_nowait(ActionStarted(command.command_id))
        self._running += 1
        self._counters["started"] += len(commands)
        self._group.start_soon(self._run_action, commands, scope)

    async def _run_action(self, commands: list[RunAction], scope: anyio.CancelScope) -> None:
        results: Mapping[str, Result] = {}
        first = commands[0]
        try:
            with scope:
                results = await self._call_kit(commands)
        finally:
            self._running -= 1
            if self._queued:
                self._spawn(*self._queued.popleft(), held=True)
            for command in commands:
                self._scopes.pop(command.command_id, None)
                result = results.get(command.tag)
                if result is None:
                    result = Result.soft_failure(
                        f"{first.action.value} was cancelled"
                        if scope.cancel_called
                        else f"kit {first.kind!r} gave no result for {command.tag!r}"
                    )
                self._counters["finished"] += 1
                # If the node is gone, nobody waits for this result any more.
                with suppress(anyio.ClosedResourceError):
                    self._inbox_send.send_nowait(ActionFinished(command.command_id, result))

    async def _call_kit(self, commands: list[RunAction]) -> Mapping[str, Result]:
        node_context = self._node_context
        if node_context is None:
            raise RuntimeError("the node is not running: use `async with Node(...)` first")
        first = commands[0]
        kit = self._running_kits().get(first.kind)
        resources = self._model.resources
        tag = first.tag if len(commands) == 1 else None
        # Contexts are immutable and few (per tag, timeout and probe flag): made once each,
        # not once per quickcheck.
        key = (tag, first.kind, first.timeout, first.probe)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = ActionContext(
                node=node_context,
                tag=tag,
                timeout=first.timeout,
                probe=first.probe,
                log=logging.LoggerAdapter(_kit_log, {"tag": tag or first.kind}),
            )
        log = ctx.log
        try:
            if len(commands) > 1:
                results = await kit.quickcheck_many([resources[c.tag] for c in commands], ctx)
                return {tag: _checked(kit, result) for tag, result in results.items()}
            resource = resources[first.tag]
            if first.action is Action.RESTORE:
                result = await kit.restore(resource, ctx)
            elif first.action is Action.REMOVE:
                if first.fenced:
                    result = await kit.remove_fenced(resource, ctx)
                else:
                    result = await kit.remove(resource, ctx)
            elif first.action is Action.RECOVER:
                result = await kit.recover(resource, ctx)
            elif self._batchable(first.kind):
                batch = await kit.quickcheck_many([resource], ctx)
                result = batch.get(first.tag, Result.soft_failure("no result from the kit"))
            else:
                result = await kit.quickcheck(resource, ctx)
            return {first.tag: _checked(kit, result)}
        except ConfigError as exc:
            log.error("%s: configuration error: %s", first.action.value, exc)  # noqa: TRY400
            return dict.fromkeys((c.tag for c in commands), Result.fatal(str(exc)))
        except (Exception, SystemExit) as exc:
            # The one broad catch: whatever a kit raises becomes a failure of that action, so
            # a kit bug can fail its resource but never the node. SystemExit too: a library
            # calling sys.exit() would otherwise escape asyncio's loop and end the process.
            # Cancellation and KeyboardInterrupt are not caught.
            log.exception("%s raised", first.action.value)
            return dict.fromkeys(
                (c.tag for c in commands), Result.soft_failure(f"kit raised {exc!r}")
            )


_kit_log = logging.getLogger("lifekit.kit")


def _checked(kit: Kit, result: object) -> Result:
    if isinstance(result, Result) and isinstance(result.outcome, Outcome):
        return result
    _log.error("kit %r returned %r, not a lifekit Result", kit.kind, result)
    return Result.soft_failure(f"kit {kit.kind!r} returned {result!r}, not a Result")


class EventStream:
    """An ordered stream of a node's notifications (see :meth:`Node.events`).

    A plain async iterator rather than an async generator, so breaking out of the loop needs
    no ``aclosing``: closing only unsubscribes.
    """

    def __init__(
        self,
        node: Node,
        subscriber: _Subscriber,
        receive: MemoryObjectReceiveStream[Notification],
    ) -> None:
        self._node = node
        self._subscriber = subscriber
        self._receive = receive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Notification:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            overflowed = self._subscriber.overflowed
            self.close()
            error = self._node._engine_error
            if error is not None:
                raise EngineFailed(
                    "the node stopped acting on its resources; no more events will come"
                ) from error
            if overflowed:
                raise EventsOverflowed(
                    f"an events() subscriber fell more than {self._node._events_buffer} "
                    "events behind and was dropped; consume events faster or raise "
                    "events_buffer"
                ) from None
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Notification:
        """The next event if one is waiting, without blocking.

        :raises anyio.WouldBlock: none is waiting.
        :raises anyio.EndOfStream: the stream ended (the node stopped, or it was closed).
        """
        try:
            return self._receive.receive_nowait()
        except anyio.ClosedResourceError:
            raise anyio.EndOfStream from None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        subscribers = self._node._subscribers
        if self._subscriber in subscribers:
            subscribers.remove(self._subscriber)
        self._subscriber.send.close()
        self._receive.close()

    def __del__(self) -> None:
        # Only close the streams: the garbage collector may run this in the middle of
        # _publish, which then forgets the closed subscriber itself.
        self._subscriber.send.close()
        self._receive.close()


def _log_notification(event: Notification) -> None:
    if isinstance(event, StateChanged):
        level = logging.WARNING if event.new is State.OSF else logging.INFO
        _log.log(
            level,
            "%s -> %s: %s",
            event.old.value,
            event.new.value,
            event.reason,
            extra={"tag": event.tag},
        )
    elif isinstance(event, HierarchyFailed):
        _log.error(
            "hierarchy failed (cause %s): %s%s",
            event.cause,
            event.reason,
            "; failover needed" if event.failover_needed else "",
            extra={"tag": event.root},
        )
    else:
        tag = getattr(event, "tag", None) or getattr(event, "root", None) or "-"
        _log.info("%s", type(event).__name__, extra={"tag": tag})


def _default_state_dir(name: str) -> Path:
    from lifekit._config import default_state_dir  # noqa: PLC0415 - one definition of it

    return default_state_dir(name)
