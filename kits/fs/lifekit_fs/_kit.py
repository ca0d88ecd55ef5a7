"""The fs kit: restore, remove, fenced remove, quickcheck (batched) and recover of a mount.

Every look at the node goes through one helper run (:mod:`lifekit_fs._check`) that reads
mountinfo once and runs the probes that touch the filesystem in detached workers, so nothing
the kit does can block on a hung filesystem for longer than a deadline the resource sets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import anyio

from lifekit.errors import ActionTimeout, ProcessError
from lifekit.kit import (
    ActionContext,
    Kit,
    Outcome,
    ProcessResult,
    Resource,
    Result,
    Schema,
    Timeouts,
)
from lifekit_fs._mountinfo import Mount
from lifekit_fs._params import SCHEMA, FsConfig, parse

__all__ = ["FsKit"]

#: Options the kernel reports in mountinfo, so their presence can be verified after a mount.
_VERIFIABLE = frozenset(
    {
        "ro",
        "rw",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "nodev",
        "noexec",
        "nosuid",
        "sync",
        "dirsync",
        "lazytime",
    }
)
#: Seconds the mountinfo/holder helpers may run (they never touch a filesystem themselves).
_HELPER_TIMEOUT = 10.0
#: Seconds the fenced shutdown's ioctl gets before it is reported pending and left behind.
_SHUTDOWN_TIMEOUT = 2.0
#: Seconds between two looks at the holders while waiting for them to exit after a signal.
_HOLDER_POLL = 0.1


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(kept[-lines:])


def _failed(name: str, done: ProcessResult) -> str:
    """``name exited with status N: last line of stderr`` (argv[0] may be a host's wrapper)."""
    tail = _tail(done.error_text or done.text, 1)
    return f"{name} exited with status {done.returncode}" + (f": {tail}" if tail else "")


def _missing_options(config: FsConfig, mount: Mount) -> list[str]:
    """Requested options the kernel does not show for the mount (only the ones it reports)."""
    have = mount.options
    # key=value options are passed to mount but not compared: kernels normalize their
    # values (tmpfs shows size=1m as size=1024k), and a false alarm would fail over.
    missing = [option for option in config.options if option in _VERIFIABLE and option not in have]
    if "ro" not in config.options and "ro" in mount.mount_options + mount.super_options:
        missing.append("rw")  # mounted (or turned) read-only: errors=remount-ro fired
    return missing


class FsKit(Kit):
    """A filesystem mounted on one node at a time (``kind = "fs"``).

    A filesystem depends on the storage resource that gives it its device (a reservation, a
    replicated volume): :meth:`device_of` tells a hierarchy builder which device that is.
    """

    kind: ClassVar[str] = "fs"
    description: ClassVar[str] = (
        "A filesystem mounted on the node in service: fsck per policy (journal replay after a "
        "crash), mount with verified options, holders signalled on remove without ever "
        "blocking on a hung filesystem, a shutdown without I/O when fenced, and quickchecks "
        "(mounted, options, capacity, read or write probes) that can never hang the node."
    )
    schema: ClassVar[Schema] = SCHEMA
    default_timeouts: ClassVar[Timeouts] = Timeouts(
        restore=300.0, remove=60.0, quickcheck=20.0, recover=300.0
    )
    minimum_timeouts: ClassVar[Timeouts] = Timeouts(
        restore=5.0, remove=5.0, quickcheck=2.0, recover=5.0
    )
    default_quickcheck_interval: ClassVar[float] = 10.0

    def __init__(self) -> None:
        # Per node (one kit object per node): the device path each resource was mounted
        # from, and the probe worker left stuck in the kernel by the last check, if any.
        self._device_paths: dict[str, str] = {}
        self._stuck: dict[str, list[int]] = {}

    # --- parameters and dependencies ------------------------------------------------------

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Cross-field rules (see :func:`lifekit_fs._params.parse`)."""
        parse(tag, params)
        return params

    @staticmethod
    def device_of(resource: Resource) -> str:
        """The device the resource mounts, as configured (a path, ``UUID=`` or ``LABEL=``).

        A storage resource (a reservation, a replicated volume) providing this device is what
        the filesystem must depend on (``depends_on`` in its hierarchy).
        """
        return str(resource.params["device"])

    # --- node helpers ---------------------------------------------------------------------

    async def _helper(
        self, ctx: ActionContext, module: str, args: Sequence[str], *, input: bytes | None = None
    ) -> str:
        done = await ctx.run(
            [sys.executable, "-m", f"lifekit_fs.{module}", *args],
            input=input,
            timeout=_HELPER_TIMEOUT,
        )
        if done.returncode not in (0, 3):
            raise ProcessError(done.argv, done.returncode, done.error_text)
        return done.text

    async def _look(
        self,
        ctx: ActionContext,
        entries: Sequence[tuple[str, FsConfig, str | None]],
        *,
        probe: bool = False,
        list_mount_point: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """One run of the check helper for ``(tag, config, device path)`` entries."""
        requests = []
        longest = 0.0
        for tag, config, path in entries:
            wants_capacity = probe and bool(config.capacity_warn or config.capacity_error)
            depth = config.check_depth if probe else "mounted"
            requests.append(
                {
                    "tag": tag,
                    "mount_point": config.mount_point,
                    "device_path": path,
                    "fstype": config.fstype,
                    "depth": depth,
                    "capacity": wants_capacity,
                    "probe_timeout": config.probe_timeout,
                    "stuck": self._stuck.get(tag),
                    "list_mount_point": list_mount_point,
                }
            )
            longest = max(longest, config.probe_timeout)
        done = await ctx.run(
            [sys.executable, "-m", "lifekit_fs._check"],
            input=json.dumps({"resources": requests}).encode(),
            timeout=_HELPER_TIMEOUT + longest,
        )
        done.check()
        found: dict[str, dict[str, Any]] = json.loads(done.text)
        return found

    async def _resolve(self, config: FsConfig, ctx: ActionContext) -> tuple[str | None, str]:
        """The device's path on this node (``None`` for tmpfs), or ``(None, why not)``."""
        if not config.block:
            return None, ""
        if not config.by_name:
            return config.device, ""
        try:
            done = await ctx.run(["blkid", "-t", config.device, "-o", "device"], timeout=10.0)
        except (ProcessError, ActionTimeout) as exc:
            return None, f"cannot look up {config.device} with blkid: {exc}"
        paths = done.text.split()
        if not done.ok or not paths:
            return None, f"no device with {config.device} on node {ctx.node.name} (blkid)"
        if len(paths) > 1:
            return None, f"{config.device} names several devices: {', '.join(paths)}"
        return paths[0], ""

    @staticmethod
    def _ours(config: FsConfig, found: Mapping[str, Any]) -> tuple[Mount | None, Mount | None]:
        """(our mount at the mount point, a foreign one there) from the helper's findings."""
        mounts = [Mount.from_json(item) for item in found["mounts"]]
        if not mounts:
            return None, None
        top = mounts[-1]  # the last mounted one is what the path shows
        if config.block:
            devno = found.get("devno")
            mine = top.devno == devno if devno else top.fstype == config.fstype
        else:
            mine = top.fstype == "tmpfs" and top.source == config.device
        return (top, None) if mine else (None, top)

    # --- restore --------------------------------------------------------------------------

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        """fsck per policy, create the mount point, mount, verify the options (idempotent)."""
        config = parse(resource.tag, resource.params)
        path, why = await self._resolve(config, ctx)
        if config.block and path is None:
            return Result.hard_failure(why)
        found = (await self._look(ctx, [(resource.tag, config, path)], list_mount_point=True))[
            resource.tag
        ]
        if found.get("device_error"):
            return Result.hard_failure(found["device_error"])
        ours, foreign = self._ours(config, found)
        shown = config.device if path in (None, config.device) else f"{config.device} ({path})"
        if foreign is not None:
            return Result.hard_failure(
                f"{config.mount_point} is already mounted from {foreign.source} "
                f"({foreign.fstype}, device {foreign.devno}), not from {shown}: unmount it first"
            )
        if ours is not None:
            if path:
                self._device_paths[resource.tag] = path
            return await self._verify(config, ours, ctx, resource.tag, note="already mounted")
        elsewhere = [mp for mp in found.get("device_mounted_at", []) if mp != config.mount_point]
        if elsewhere:
            return Result.hard_failure(
                f"{shown} is already mounted at {', '.join(elsewhere)} on node "
                f"{ctx.node.name}; it must be mounted once, at {config.mount_point}"
            )
        if found.get("mount_point_entries"):
            return Result.hard_failure(
                f"mount point {config.mount_point} is not empty (it holds "
                f"{', '.join(found['mount_point_entries'])}); mounting would hide them"
            )
        if found.get("mount_point_exists") and found.get("mount_point_entries") is None:
            return Result.hard_failure(f"mount point {config.mount_point} is not a directory")
        notes = []
        if path is not None:
            failed, note = await self._fsck(config, path, ctx)
            if failed is not None:
                return failed
            if note:
                notes.append(note)
        await ctx.run(["mkdir", "-p", config.mount_point])
        argv = ["mount", "-t", config.fstype]
        if config.options:
            argv += ["-o", ",".join(config.options)]
        mounted = await ctx.run([*argv, path or config.device, config.mount_point])
        if not mounted.ok:
            return Result.soft_failure(
                f"mount of {shown} on {config.mount_point} failed: {_failed('mount', mounted)}"
            )
        if path:
            self._device_paths[resource.tag] = path
        found = (await self._look(ctx, [(resource.tag, config, path)]))[resource.tag]
        ours, foreign = self._ours(config, found)
        if ours is None:
            return Result.soft_failure(
                f"mount of {shown} on {config.mount_point} succeeded but mountinfo does not show "
                "it there"
            )
        return await self._verify(config, ours, ctx, resource.tag, note="; ".join(notes))

    async def _verify(
        self, config: FsConfig, mount: Mount, ctx: ActionContext, tag: str, *, note: str
    ) -> Result:
        missing = _missing_options(config, mount)
        if missing:
            return Result.soft_failure(
                f"{config.mount_point} is mounted without {', '.join(missing)} (mountinfo shows "
                f"{','.join(mount.mount_options)} {','.join(mount.super_options)})"
            )
        text = f"{mount.source} mounted on {config.mount_point} ({mount.fstype})"
        return Result.ok(f"{text}; {note}" if note else text)

    async def _fsck(
        self, config: FsConfig, path: str, ctx: ActionContext
    ) -> tuple[Result | None, str]:
        """Run the check the policy and type ask for; (a failure, or None) and a note."""
        if config.fsck == "never":
            return None, ""
        force = config.fsck == "force"
        if config.fstype in ("ext2", "ext3", "ext4"):
            # -p replays the journal and checks only when the fs is marked dirty, unless -f.
            argv = ["e2fsck", "-p", *(["-f"] if force else []), path]
        elif config.fstype == "vfat":
            argv = ["fsck.vfat", "-a", path]
        elif config.fstype == "xfs" and force:
            argv = ["xfs_repair", path]  # refuses a dirty log: then mount once to replay it
        elif config.fstype == "btrfs" and force:
            argv = ["btrfs", "check", "--readonly", path]
        else:
            return None, ""  # xfs and btrfs replay their logs at mount time
        done = await ctx.run(argv)
        output = _tail(done.text + "\n" + done.error_text)
        # e2fsck/fsck.vfat: 0 clean, 1 corrected, 2 corrected and "reboot" (only meaningful
        # for the root filesystem, which this never is); 4 and above: not repaired.
        fine = done.returncode in (0, 1, 2) if argv[0] != "xfs_repair" else done.returncode == 0
        if argv[0] == "btrfs":
            fine = done.returncode == 0
        if not fine:
            return (
                Result.hard_failure(
                    f"{argv[0]} on {path} exited with status {done.returncode}: {output}"
                ),
                "",
            )
        return None, f"{argv[0]}: {output}" if output else ""

    # --- remove ---------------------------------------------------------------------------

    async def _holders(self, config: FsConfig, ctx: ActionContext) -> tuple[list[int], str]:
        text = await self._helper(
            ctx, "_holders", [config.mount_point, "--timeout", str(_HELPER_TIMEOUT / 2)]
        )
        pids, described, partial = [], [], ""
        for line in text.splitlines():
            first, _, how = line.partition(" ")
            if first == "partial":
                partial = f" (the /proc walk was cut short at its deadline: {how})"
            elif first.isdigit():
                pids.append(int(first))
                described.append(f"{first} ({how})")
        return pids, ", ".join(described) + partial

    async def _signal_holders(
        self, config: FsConfig, ctx: ActionContext
    ) -> tuple[list[int], list[str]]:
        """Signal holders per policy; return those still there and what was done."""
        done: list[str] = []
        pids, described = await self._holders(config, ctx)
        for name in config.signals:
            if not pids:
                break
            await ctx.run(["kill", "-s", name, *map(str, pids)])
            done.append(f"sent SIG{name} to {described}")
            with anyio.move_on_after(config.holder_delay):
                while pids:
                    await anyio.sleep(_HOLDER_POLL)
                    pids, described = await self._holders(config, ctx)
            pids, described = await self._holders(config, ctx)
        if pids:
            done.append(f"still held by {described}")
        return pids, done

    async def _state(
        self, resource: Resource, ctx: ActionContext
    ) -> tuple[FsConfig, Mount | None, Mount | None]:
        config = parse(resource.tag, resource.params)
        path = self._device_paths.get(resource.tag)
        if path is None and config.block and not config.by_name:
            path = config.device
        found = (await self._look(ctx, [(resource.tag, config, path)]))[resource.tag]
        if found.get("device_error") and not found["mounts"]:
            return config, None, None
        ours, foreign = self._ours(config, found)
        return config, ours, foreign

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        """Signal holders per policy, unmount; lazily only as a reported last resort."""
        config, ours, foreign = await self._state(resource, ctx)
        if ours is None:
            self._stuck.pop(resource.tag, None)
            if foreign is not None:
                return Result.not_running(
                    f"{config.mount_point} is mounted from {foreign.source}, not from "
                    f"{config.device}: left alone"
                )
            return Result.not_running(f"{config.mount_point} is not mounted")
        _remaining, done = await self._signal_holders(config, ctx)
        try:
            unmounted = await ctx.run(
                ["umount", config.mount_point], timeout=config.unmount_timeout
            )
            failure = "" if unmounted.ok else f"umount: {_tail(unmounted.error_text, 1)}"
        except ActionTimeout:
            failure = f"umount did not finish within {config.unmount_timeout:g} s (hung storage?)"
        history = "; ".join(done)
        if not failure:
            self._stuck.pop(resource.tag, None)
            text = f"unmounted {config.mount_point}"
            return Result.ok(f"{text}; {history}" if history else text)
        if config.lazy_unmount:
            lazy = await ctx.run(["umount", "-l", config.mount_point])
            if lazy.ok:
                self._stuck.pop(resource.tag, None)
                return Result.degraded(
                    f"LAZY UNMOUNT of {config.mount_point} (last resort): {failure}; "
                    f"{history or 'no holder found'}; the filesystem is detached but stays "
                    "alive in the kernel until its holders exit"
                )
            failure += f"; umount -l failed too: {_failed('umount -l', lazy)}"
        return Result.hard_failure(
            f"cannot unmount {config.mount_point}: {failure}; {history or 'no holder found'}"
            + ("" if config.lazy_unmount else " (lazy_unmount is off)")
        )

    async def remove_fenced(self, resource: Resource, ctx: ActionContext) -> Result:
        """Shut the filesystem down without a log flush, stop its holders, detach it."""
        config, ours, _foreign = await self._state(resource, ctx)
        if ours is None:
            return Result.not_running(f"{config.mount_point} is not mounted")
        notes = []
        if config.fstype in ("ext4", "ext3", "xfs"):
            done = await ctx.run(
                [
                    sys.executable,
                    "-m",
                    "lifekit_fs._shutdown",
                    config.mount_point,
                    "--timeout",
                    str(_SHUTDOWN_TIMEOUT),
                ],
                timeout=_HELPER_TIMEOUT,
            )
            if done.returncode == 0:
                notes.append("shut down without log flush")
            elif done.returncode == 3:
                notes.append(
                    "shutdown issued (the ioctl is still in the kernel: its journal abort "
                    "record cannot reach the storage)"
                )
            else:
                notes.append(f"shutdown refused: {_tail(done.text + done.error_text)}")
        else:
            notes.append(f"{config.fstype} has no shutdown ioctl")
        _remaining, done_signals = await self._signal_holders(config, ctx)
        notes.extend(done_signals)
        # A plain umount may flush (and block on dead storage); detaching is what is wanted.
        detached = await ctx.run(["umount", "-l", config.mount_point], timeout=_HELPER_TIMEOUT)
        self._stuck.pop(resource.tag, None)
        if not detached.ok:
            return Result.hard_failure(
                f"cannot detach {config.mount_point}: {_failed('umount -l', detached)}; "
                + "; ".join(notes)
            )
        return Result.ok(f"detached {config.mount_point}: {'; '.join(notes)}")

    # --- quickcheck -----------------------------------------------------------------------

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        """Check one resource (see :meth:`quickcheck_many`)."""
        return (await self.quickcheck_many([resource], ctx))[resource.tag]

    async def quickcheck_many(
        self, resources: Sequence[Resource], ctx: ActionContext
    ) -> Mapping[str, Result]:
        """One helper run for every resource: mountinfo once, probes in parallel workers."""
        entries = []
        for resource in resources:
            config = parse(resource.tag, resource.params)
            path = self._device_paths.get(resource.tag)
            if path is None and config.block and not config.by_name:
                path = config.device
            entries.append((resource.tag, config, path))
        found = await self._look(ctx, entries, probe=True)
        return {tag: self._judge(tag, config, found[tag], ctx) for tag, config, _path in entries}

    def _judge(
        self, tag: str, config: FsConfig, found: Mapping[str, Any], ctx: ActionContext
    ) -> Result:
        ours, foreign = self._ours(config, found)
        if ours is None:
            self._stuck.pop(tag, None)
            if foreign is not None:
                return Result.not_running(
                    f"{config.mount_point} is mounted from {foreign.source}, not {config.device}"
                )
            return Result.not_running(f"{config.mount_point} is not mounted")
        missing = _missing_options(config, ours)
        if missing:
            return Result.soft_failure(
                f"{config.mount_point} lost options {', '.join(missing)} (mountinfo: "
                f"{','.join(ours.mount_options)} {','.join(ours.super_options)})"
            )
        probe = found.get("probe")
        if probe is None:
            return Result.ok()
        if probe.get("still_stuck"):
            pid = probe["stuck"][0]
            return Result.soft_failure(
                f"{config.mount_point} does not answer: the previous probe (pid {pid}) is "
                "still stuck in the kernel"
            )
        if probe.get("timeout"):
            self._stuck[tag] = probe["stuck"]
            return Result.soft_failure(
                f"{config.mount_point} does not answer: the {probe['step']} probe did not "
                f"finish within {config.probe_timeout:g} s (abandoned, pid {probe['stuck'][0]})"
            )
        self._stuck.pop(tag, None)
        if not probe.get("ok"):
            return Result.soft_failure(
                f"probe of {config.mount_point} failed: {probe.get('error', 'unknown error')}"
            )
        used = probe.get("used_percent")
        if used is not None:
            if config.capacity_error and used >= config.capacity_error:
                ctx.for_resource(tag).log.error(
                    "%s is %.1f%% full (capacity_error %d%%)",
                    config.mount_point,
                    used,
                    config.capacity_error,
                )
                return Result.degraded(
                    f"CAPACITY ERROR: {config.mount_point} is {used:.1f}% full (at or above "
                    f"capacity_error {config.capacity_error}%; {probe['free_bytes']} bytes free)"
                )
            if config.capacity_warn and used >= config.capacity_warn:
                return Result.degraded(
                    f"{config.mount_point} is {used:.1f}% full (at or above capacity_warn "
                    f"{config.capacity_warn}%; {probe['free_bytes']} bytes free)"
                )
        return Result.ok()

    # --- recover --------------------------------------------------------------------------

    async def recover(self, resource: Resource, ctx: ActionContext) -> Result:
        """Remount: ``mount -o remount`` to restore lost options, else unmount and restore."""
        config, ours, _foreign = await self._state(resource, ctx)
        if ours is not None and _missing_options(config, ours):
            options = ",".join(["remount", *config.options])
            done = await ctx.run(["mount", "-o", options, config.mount_point])
            if done.ok:
                result = await self.quickcheck(resource, ctx)
                if result.outcome in (Outcome.OK, Outcome.DEGRADED):
                    return result
        if ours is not None:
            removed = await self.remove(resource, ctx)
            if removed.is_failure:
                return removed
        return await self.restore(resource, ctx)
