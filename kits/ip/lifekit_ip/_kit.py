"""The ip kit's actions: restore, remove, quickcheck (batched), recover.

Every command runs on the node through the action context: ``ip`` (iproute2) to read and
change addresses, iputils ``arping -D`` to find an IPv4 duplicate, and this package's
:mod:`lifekit_ip._tool` (run with the node's Python) for the announcements (gratuitous ARP,
unsolicited neighbour advertisements) and the ping list.

State kept by one kit object (one per node, in memory): the background announcer of each
resource, stopped before the address is removed, and the time of each resource's last
announcement, for the periodic re-announcement. Losing it (a lifekit restart) only means one
announcement sooner than planned.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from lifekit.errors import ActionTimeout, ConfigError, ProcessError
from lifekit.kit import (
    ActionContext,
    Kit,
    ProcessResult,
    Resource,
    Result,
    SpawnedProcess,
    Timeouts,
)
from lifekit_ip._links import Addr, Link, Snapshot, longest, parse_addr_show, route_interfaces
from lifekit_ip._params import SCHEMA, IpConfig, parse

__all__ = ["IpKit"]

#: Bound on one ``ip`` or ``arping`` command: they answer in milliseconds unless the node is
#: in trouble, and the action's own timeout still applies.
_COMMAND_TIMEOUT = 10.0
#: How often restore looks at an IPv6 address while the kernel's DAD runs.
_DAD_POLL = 0.05
#: Longest wait for DAD (1 to 2 s with Linux's defaults: up to rtr_solicit_delay of random
#: delay, then dad_transmits probes retrans_time apart).
_DAD_LIMIT = 10.0
#: The node-side helper, run by path with -I -S: it needs only the standard library, and
#: ``-m lifekit_ip._tool`` would first import this package and lifekit (about 100 ms a run,
#: against 30 ms). The node shares this file system (a lab node) or is this machine.
_TOOL = (sys.executable, "-I", "-S", str(Path(__file__).with_name("_tool.py")))
_ARPING_REPLY = re.compile(r"reply from (\S+) \[([0-9A-Fa-f:]+)\]")


class _Stop(Exception):
    """Carries an action's result out of a helper."""

    def __init__(self, result: Result) -> None:
        super().__init__(str(result))
        self.result = result


def _summary(result: ProcessResult) -> str:
    lines = (result.error_text or result.text).strip().splitlines()
    tail = f": {lines[-1]}" if lines else ""
    return f"'{' '.join(result.argv)}' exited with status {result.returncode}{tail}"


class IpKit(Kit):
    """A virtual IP address (IPv4 or IPv6) on one of the node's interfaces."""

    kind = "ip"
    description = (
        "A virtual IP address (IPv4 or IPv6): refused when another host already answers for it "
        "(arping -D / DAD), added with ip, announced with gratuitous ARP or unsolicited "
        "neighbour advertisements, checked for presence, DAD state, link carrier and an "
        "optional ping list (one address listing per check cycle for all addresses), and "
        "moved to a backup interface when its link goes down."
    )
    schema = SCHEMA
    default_timeouts = Timeouts(restore=30.0, remove=15.0, quickcheck=10.0, recover=30.0)
    # DAD alone takes up to 2 s; below these an action would time out on a healthy node.
    minimum_timeouts = Timeouts(restore=3.0, remove=1.0, quickcheck=1.0, recover=3.0)
    default_quickcheck_interval = 5.0

    def __init__(self) -> None:
        self._announcers: dict[str, SpawnedProcess] = {}
        self._announced: dict[str, float] = {}

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check the parameters together; the address comes back in canonical form."""
        config = parse(tag, params)
        return {**params, "address": config.cidr}

    async def close(self) -> None:
        """Stop every background announcer."""
        for tag in list(self._announcers):
            await self._stop_announcer(tag)

    # --- actions -----------------------------------------------------------------------------

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        """Refuse a duplicate, add the address, announce it (idempotent)."""
        return await self._act(resource, ctx, recovering=False)

    async def recover(self, resource: Resource, ctx: ActionContext) -> Result:
        """Re-add and re-announce; move to a backup interface if the link is down."""
        return await self._act(resource, ctx, recovering=True)

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        """Delete exactly this address from the interfaces it may be on (idempotent)."""
        try:
            config = parse(resource.tag, resource.params)
        except ConfigError as exc:
            return Result.fatal(str(exc))
        await self._stop_announcer(resource.tag)
        self._announced.pop(resource.tag, None)
        try:
            snapshot = await self._snapshot(ctx)
            removed = []
            for link, _ in self._held(config, snapshot):
                await self._delete(ctx, config, link.name)
                removed.append(link.name)
        except _Stop as stop:
            return stop.result
        if not removed:
            return Result.ok(f"{config.cidr} is not on this node")
        return Result.ok(f"removed {config.cidr} from {', '.join(removed)}")

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        """Check one address (see :meth:`quickcheck_many`)."""
        results = await self.quickcheck_many([resource], ctx)
        return results[resource.tag]

    async def quickcheck_many(
        self, resources: Sequence[Resource], ctx: ActionContext
    ) -> Mapping[str, Result]:
        """Check every address with one ``ip -j addr show`` (and one ping process, if any).

        Present, not tentative or DAD-failed, link up (administratively up, carrier, not
        LOWERLAYERDOWN), ping list answering. Read-only, except the periodic re-announcement
        of healthy addresses that are due (one announcing process for all of them).
        """
        results: dict[str, Result] = {}
        configs: dict[str, IpConfig] = {}
        for resource in resources:
            try:
                configs[resource.tag] = parse(resource.tag, resource.params)
            except ConfigError as exc:
                results[resource.tag] = Result.fatal(str(exc))
        try:
            snapshot = await self._snapshot(ctx)
        except _Stop as stop:
            return {**results, **dict.fromkeys(configs, stop.result)}
        healthy: dict[str, tuple[IpConfig, Link]] = {}
        for tag, config in configs.items():
            result, link = self._check_one(config, snapshot)
            if link is None:
                results[tag] = result
            else:
                healthy[tag] = (config, link)
                results[tag] = result
        await self._ping(ctx, healthy, results)
        if not ctx.probe:
            await self._reannounce(ctx, healthy, results)
        return results

    # --- restore and recover -----------------------------------------------------------------

    async def _act(self, resource: Resource, ctx: ActionContext, *, recovering: bool) -> Result:
        try:
            config = parse(resource.tag, resource.params)
        except ConfigError as exc:
            return Result.fatal(str(exc))
        try:
            return await self._bring_up(config, ctx, recovering=recovering)
        except _Stop as stop:
            return stop.result

    async def _bring_up(self, config: IpConfig, ctx: ActionContext, *, recovering: bool) -> Result:
        snapshot = await self._snapshot(ctx)
        candidates = await self._interfaces(config, ctx, snapshot)
        names = [link.name for link in candidates]
        for link, addr in snapshot.holders(config.ip):
            if addr.prefixlen != config.prefixlen:
                raise _Stop(
                    Result.hard_failure(
                        f"{config.ip}/{addr.prefixlen} is already on {link.name} of node "
                        f"{ctx.node.name}, not this resource's {config.cidr}: another "
                        "configuration owns it; remove it or give the same prefix"
                    )
                )
            if link.name not in names:
                raise _Stop(
                    Result.hard_failure(
                        f"{config.cidr} is already on {link.name} of node {ctx.node.name}, "
                        f"which is not one of this resource's interfaces ({', '.join(names)})"
                    )
                )
        stale: list[str] = []
        for link, addr in self._held(config, snapshot):
            if not addr.dadfailed and link.down_reason() is None:
                if addr.tentative and config.dad == "wait":
                    await self._wait_dad(ctx, config, link.name)
                await self._announce(ctx, config, link.name)
                verb = "was healthy" if recovering else "already there"
                return Result.ok(f"{config.cidr} on {link.name} ({verb}; re-announced)")
            stale.append(link.name)  # on a dead link, or refused by DAD
        target = next((link for link in candidates if link.down_reason() is None), None)
        if target is None:
            # Left as it is: nothing here can help, the hierarchy fails over.
            reasons = "; ".join(str(link.down_reason()) for link in candidates)
            backups = "" if config.backup_interfaces else " and no backup_interfaces are set"
            raise _Stop(
                Result.hard_failure(
                    f"cannot bring {config.cidr} up on node {ctx.node.name}: {reasons}{backups}"
                )
            )
        for name in stale:
            await self._delete(ctx, config, name)
        moved_from = next((name for name in stale if name != target.name), "")
        if config.version == 4 and config.dad == "wait":
            await self._refuse_ipv4_duplicate(ctx, config, target.name)
        await self._add(ctx, config, target)
        if config.version == 6 and config.dad == "wait":
            await self._wait_dad(ctx, config, target.name)
        await self._announce(ctx, config, target.name)
        where = f"on {target.name}"
        if target is not candidates[0]:
            where += f" (backup interface; {candidates[0].down_reason()})"
        if moved_from:
            return Result.ok(f"moved {config.cidr} from {moved_from} to {where[3:]}")
        return Result.ok(f"added {config.cidr} {where}")

    async def _interfaces(
        self, config: IpConfig, ctx: ActionContext, snapshot: Snapshot
    ) -> list[Link]:
        """The resource's interface, then its backups that exist, as links."""
        primary = await self._primary(config, ctx, snapshot)
        links = [primary]
        for name in config.backup_interfaces:
            link = snapshot.link(name)
            if link is None:
                ctx.log.warning(
                    "backup interface %r does not exist on node %s", name, ctx.node.name
                )
            elif link.name not in [known.name for known in links]:
                links.append(link)
        return links

    async def _primary(self, config: IpConfig, ctx: ActionContext, snapshot: Snapshot) -> Link:
        if config.interface is not None:
            link = snapshot.link(config.interface)
            if link is None:
                raise _Stop(
                    Result.fatal(
                        f"interface {config.interface!r} does not exist on node "
                        f"{ctx.node.name} (its interfaces: {', '.join(snapshot.names())}); fix "
                        f"the 'interface' parameter of {config.tag!r}"
                    )
                )
            return link
        names = longest(
            [(length, link.name) for length, link in snapshot.subnet_holders(config.address)]
        )
        if not names:
            family = "-4" if config.version == 4 else "-6"
            routes = await self._command(ctx, ["ip", "-j", family, "route", "show"])
            names = longest(route_interfaces(routes.text, config.address))
        if len(names) > 1:
            raise _Stop(
                Result.fatal(
                    f"several interfaces of node {ctx.node.name} hold the subnet of "
                    f"{config.cidr}: {', '.join(names)}; set the 'interface' parameter"
                )
            )
        link = snapshot.link(names[0]) if names else None
        if link is None:
            raise _Stop(
                Result.fatal(
                    f"no interface of node {ctx.node.name} has an address or a route in the "
                    f"subnet of {config.cidr} (interfaces: {', '.join(snapshot.names())}); set "
                    "the 'interface' parameter"
                )
            )
        return link

    def _held(self, config: IpConfig, snapshot: Snapshot) -> list[tuple[Link, Addr]]:
        """Where this resource's exact address is, on the interfaces it may use."""
        allowed = None
        if config.interface is not None:
            allowed = {config.interface, *config.backup_interfaces}
        found = []
        for link, addr in snapshot.holders(config.ip):
            if addr.prefixlen != config.prefixlen:
                continue
            if allowed is None or link.name in allowed or set(link.altnames) & allowed:
                found.append((link, addr))
        return found

    async def _refuse_ipv4_duplicate(
        self, ctx: ActionContext, config: IpConfig, iface: str
    ) -> None:
        # iputils arping -D: probes from 0.0.0.0, exit 1 when someone answers.
        result = await self._command(
            ctx, ["arping", "-D", "-c", "2", "-w", "1", "-I", iface, config.ip], check=False
        )
        if result.ok:
            return
        reply = _ARPING_REPLY.search(result.text)
        if reply is None:
            raise _Stop(Result.soft_failure(f"duplicate check failed: {_summary(result)}"))
        raise _Stop(
            Result.hard_failure(
                f"refusing to add {config.cidr} on {iface} of node {ctx.node.name}: another "
                f"host (MAC {reply.group(2).lower()}) already answers for {config.ip} "
                "(arping -D)"
            )
        )

    async def _add(self, ctx: ActionContext, config: IpConfig, link: Link) -> None:
        argv = ["ip", "addr", "add", config.cidr]
        if config.version == 4:
            argv += ["brd", "+"]
        argv += ["dev", link.name]
        if config.label is not None:
            label = f"{link.name}:{config.label.split(':', 1)[1]}"
            if len(label.encode()) > 15:
                ctx.log.warning(
                    "label %r is too long on %s: added without a label", label, link.name
                )
            else:
                argv += ["label", label]
        if config.dad == "skip" and config.version == 6:
            argv.append("nodad")
        result = await self._command(ctx, argv, check=False)
        if not result.ok and "File exists" not in result.error_text:
            raise _Stop(Result.soft_failure(f"could not add {config.cidr}: {_summary(result)}"))

    async def _delete(self, ctx: ActionContext, config: IpConfig, iface: str) -> None:
        result = await self._command(
            ctx, ["ip", "addr", "del", config.cidr, "dev", iface], check=False
        )
        if not result.ok and "Cannot assign requested address" not in result.error_text:
            raise _Stop(Result.soft_failure(f"could not delete {config.cidr}: {_summary(result)}"))

    async def _wait_dad(self, ctx: ActionContext, config: IpConfig, iface: str) -> None:
        with anyio.move_on_after(_DAD_LIMIT):
            while True:
                listing = await self._command(ctx, ["ip", "-j", "addr", "show", "dev", iface])
                link = parse_addr_show(listing.text).link(iface)
                addr = None if link is None else link.find(config.ip)
                if addr is None:
                    raise _Stop(
                        Result.soft_failure(f"{config.cidr} vanished from {iface} during DAD")
                    )
                if addr.dadfailed:
                    await self._delete(ctx, config, iface)
                    raise _Stop(
                        Result.hard_failure(
                            f"refusing {config.cidr} on {iface} of node {ctx.node.name}: "
                            f"duplicate address detection failed, another host already "
                            f"answers for {config.ip} (removed it again)"
                        )
                    )
                if not addr.tentative:
                    return
                await anyio.sleep(_DAD_POLL)
        raise _Stop(
            Result.soft_failure(
                f"{config.cidr} on {iface} is still tentative after {_DAD_LIMIT:g} s of DAD "
                "(is the link up?)"
            )
        )

    # --- announcements -----------------------------------------------------------------------

    async def _announce(self, ctx: ActionContext, config: IpConfig, iface: str) -> None:
        """First announcement now; the others from a background process the kit owns."""
        await self._stop_announcer(config.tag)
        self._announced[config.tag] = anyio.current_time()
        if config.announce_count == 0:
            return
        # Not iputils "arping -U": it waits a whole interval (1 s) after its last packet before
        # it exits, which would add a second to every restore. The helper sends the same
        # gratuitous ARP request (or, for IPv6, an unsolicited NA) and returns at once.
        argv = [*_TOOL, "announce", "--count", "1", iface, config.ip]
        result = await self._command(ctx, argv, check=False)
        if not result.ok:
            raise _Stop(
                Result.soft_failure(f"could not announce {config.cidr}: {_summary(result)}")
            )
        if config.announce_count > 1:
            interval = f"{config.announce_interval:g}"
            self._announcers[config.tag] = await ctx.host.spawn(
                [
                    *_TOOL,
                    "announce",
                    "--count",
                    str(config.announce_count - 1),
                    "--interval",
                    interval,
                    "--delay",
                    interval,
                    iface,
                    config.ip,
                ],
                log=ctx.log,
            )

    async def _stop_announcer(self, tag: str) -> None:
        process = self._announcers.pop(tag, None)
        if process is not None and process.returncode is None:
            await process.stop(grace=1.0)

    async def _reannounce(
        self,
        ctx: ActionContext,
        healthy: Mapping[str, tuple[IpConfig, Link]],
        results: dict[str, Result],
    ) -> None:
        now = anyio.current_time()
        due = [
            (tag, config, link)
            for tag, (config, link) in healthy.items()
            if config.reannounce_interval > 0
            and results[tag].outcome.value == "ok"
            and now - self._announced.get(tag, -float("inf")) >= config.reannounce_interval
        ]
        if not due:
            return
        argv = [*_TOOL, "announce", "--count", "1"]
        for _, config, link in due:
            argv += [link.name, config.ip]
        result = await self._command(ctx, argv, check=False)
        for tag, config, _ in due:
            self._announced[tag] = now
            if not result.ok:
                results[tag] = Result.degraded(
                    f"{config.cidr} is up but its re-announcement failed: {_summary(result)}"
                )

    # --- quickcheck --------------------------------------------------------------------------

    def _check_one(self, config: IpConfig, snapshot: Snapshot) -> tuple[Result, Link | None]:
        """The result for one address; the link too when it is healthy so far."""
        held = self._held(config, snapshot)
        if not held:
            where = config.interface or "any interface"
            if config.interface is not None and snapshot.link(config.interface) is None:
                where = f"{config.interface} (no such interface on this node)"
            others = [
                f"{link.name} (/{addr.prefixlen})" for link, addr in snapshot.holders(config.ip)
            ]
            also = f"; {config.ip} is on {', '.join(others)}, not owned by it" if others else ""
            return Result.not_running(f"{config.cidr} is not on {where}{also}"), None
        link, addr = held[0]
        if addr.dadfailed:
            return (
                Result.soft_failure(
                    f"{config.cidr} on {link.name}: duplicate address detection failed (another "
                    "host answers for it)"
                ),
                None,
            )
        if addr.tentative:
            return Result.degraded(f"{config.cidr} on {link.name} is tentative (DAD running)"), None
        down = link.down_reason()
        if down is not None:
            return Result.soft_failure(f"{config.cidr} on {link.name}: {down}"), None
        if (
            config.interface is not None
            and link.name != (snapshot.link(config.interface) or link).name
        ):
            return Result.ok(f"{config.cidr} on backup interface {link.name}"), link
        return Result.ok(f"{config.cidr} on {link.name}"), link

    async def _ping(
        self,
        ctx: ActionContext,
        healthy: Mapping[str, tuple[IpConfig, Link]],
        results: dict[str, Result],
    ) -> None:
        pinged = {tag: config for tag, (config, _) in healthy.items() if config.ping_list}
        if not pinged:
            return
        timeout = max(config.ping_timeout for config in pinged.values())
        argv = [*_TOOL, "ping", "--timeout", f"{timeout:g}"]
        for config in pinged.values():
            for target in config.ping_list:
                argv += [config.ip, target]
        result = await self._command(ctx, argv, check=False, timeout=timeout + _COMMAND_TIMEOUT)
        if not result.ok:
            for tag in pinged:
                results[tag] = Result.soft_failure(f"ping list not checked: {_summary(result)}")
            return
        answers: dict[str, float | None] = json.loads(result.text)
        for tag, config in pinged.items():
            times = [answers.get(f"{config.ip} {target}") for target in config.ping_list]
            if not any(rtt is not None and rtt <= config.ping_timeout for rtt in times):
                results[tag] = Result.soft_failure(
                    f"{config.cidr}: none of the ping list answered within "
                    f"{config.ping_timeout:g} s ({', '.join(config.ping_list)})"
                )

    # --- commands ----------------------------------------------------------------------------

    async def _snapshot(self, ctx: ActionContext) -> Snapshot:
        listing = await self._command(ctx, ["ip", "-j", "addr", "show"])
        try:
            return parse_addr_show(listing.text)
        except ValueError as exc:
            raise _Stop(Result.soft_failure(f"cannot read 'ip -j addr show': {exc}")) from exc

    async def _command(
        self,
        ctx: ActionContext,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = _COMMAND_TIMEOUT,
    ) -> ProcessResult:
        """Run a command on the node; a failure to run it becomes a soft failure."""
        try:
            result = await ctx.run(argv, timeout=timeout)
        except (ProcessError, ActionTimeout) as exc:
            raise _Stop(
                Result.soft_failure(f"{argv[0]} cannot run on node {ctx.node.name}: {exc}")
            ) from exc
        if check and not result.ok:
            raise _Stop(Result.soft_failure(_summary(result)))
        return result
