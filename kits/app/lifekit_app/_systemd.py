"""Mode ``systemd``: the application is a systemd unit, driven through ``systemctl``.

* restore: ``systemctl start UNIT`` (a no-op on an active unit; it waits for the start job).
* remove: ``systemctl stop UNIT``, then ``systemctl reset-failed UNIT``. Stopping a unit that
  is not loaded fails with status 5 (the unit cannot be running): that is success here.
  ``stop`` leaves a failed unit in state ``failed``; ``reset-failed`` makes it ``inactive`` so
  that a quickcheck after remove says "not running", and clears the unit's start rate limit.
* quickcheck: ``systemctl is-active UNIT``, read by the state it prints (systemctl(1) advises
  reading states rather than its LSB exit codes); see :data:`STATES`. Exit status 4 means "no
  such unit": not running. A missing ``systemctl`` means no unit can be running: not running.
* recover: ``systemctl restart UNIT``.

Exit statuses of start, stop and restart use the action table of :mod:`lifekit_app._exitcodes`,
which lines up with systemctl's: 1 a failed job (soft), 4 permission denied, 5 no such unit,
3 not applicable (hard), 6 the unit failed to load (fatal: a broken unit file).

Untested against a real systemd (none runs where lifekit's tests run); the tests use a fake
``systemctl`` whose outputs are transcribed from systemctl(1) and systemd 252's source.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lifekit.errors import ProcessError
from lifekit.kit import ActionContext, Outcome, ProcessResult, Result
from lifekit_app._exitcodes import action_result
from lifekit_app._params import AppConfig

__all__ = ["STATES", "SystemdMode"]

_O = Outcome

#: The unit states ``is-active`` prints (systemd.unit ActiveState) -> outcome.
STATES: Mapping[str, Outcome] = MappingProxyType(
    {
        "active": _O.OK,
        "reloading": _O.OK,
        # systemd 257 and later, while a unit refreshes its mount namespace: still serving.
        "refreshing": _O.OK,
        # Starting: in service, not yet protected. A unit stuck here ends up "failed".
        "activating": _O.DEGRADED,
        "inactive": _O.NOT_RUNNING,
        # Older systemd printed "unknown" for a unit it could not find.
        "unknown": _O.NOT_RUNNING,
        # Ran and failed, is being stopped by someone else, or is being cleaned: not serving,
        # and a restart (recover) is the local repair.
        "failed": _O.SOFT_FAILURE,
        "deactivating": _O.SOFT_FAILURE,
        "maintenance": _O.SOFT_FAILURE,
    }
)

#: systemctl's exit status for "no such unit" (is-active) and "not loaded" (stop).
_NO_SUCH_UNIT = 4
_NOT_LOADED = 5


def _unit(config: AppConfig) -> str:
    if config.unit is None:  # pragma: no cover - parse() requires it
        raise AssertionError("unit is required in mode 'systemd'")
    return config.unit


class SystemdMode:
    """The actions of mode ``systemd``; stateless."""

    async def _systemctl(
        self, verb: str, config: AppConfig, ctx: ActionContext
    ) -> ProcessResult | Result:
        try:
            return await ctx.run([config.systemctl, verb, _unit(config)])
        except ProcessError as exc:
            return Result.hard_failure(f"systemctl {verb} {config.unit}: cannot run ({exc})")

    async def _action(self, verb: str, config: AppConfig, ctx: ActionContext) -> Result:
        process = await self._systemctl(verb, config, ctx)
        if isinstance(process, Result):
            return process
        return action_result(f"systemctl {verb} {config.unit}", process)

    async def restore(self, config: AppConfig, ctx: ActionContext) -> Result:
        """``systemctl start UNIT``."""
        return await self._action("start", config, ctx)

    async def recover(self, config: AppConfig, ctx: ActionContext) -> Result:
        """``systemctl restart UNIT``."""
        return await self._action("restart", config, ctx)

    async def remove(self, config: AppConfig, ctx: ActionContext) -> Result:
        """``systemctl stop UNIT`` then ``systemctl reset-failed UNIT``."""
        process = await self._systemctl("stop", config, ctx)
        if isinstance(process, Result):
            return process
        if process.returncode == _NOT_LOADED:
            return Result.ok(f"unit {config.unit} is not loaded: nothing to stop")
        stopped = action_result(f"systemctl stop {config.unit}", process)
        if stopped.outcome is not Outcome.OK:
            return stopped
        reset = await self._systemctl("reset-failed", config, ctx)
        if isinstance(reset, Result) or not reset.ok:
            # The unit is stopped; only its "failed" mark may remain. Not worth a failure.
            why = reset.reason if isinstance(reset, Result) else reset.summary()
            ctx.log.warning("systemctl reset-failed %s did not work: %s", config.unit, why)
        return stopped

    async def quickcheck(self, config: AppConfig, ctx: ActionContext) -> Result:
        """``systemctl is-active UNIT``, read by the state it prints."""
        unit = _unit(config)
        try:
            process = await ctx.run([config.systemctl, "is-active", unit])
        except ProcessError as exc:
            return Result.not_running(f"systemctl cannot run, so no unit can be running ({exc})")
        lines = process.text.strip().splitlines()
        state = lines[0].strip() if lines else ""
        what = f"unit {unit} is {state or 'in no state systemctl printed'}"
        if process.returncode == _NO_SUCH_UNIT:
            return Result.not_running(f"no such unit: {what} ({process.summary()})")
        outcome = STATES.get(state)
        if outcome is None:
            # Not a state this kit knows: fall back on the LSB status.
            if process.returncode == 0:
                outcome = _O.OK
            elif process.returncode == 3:
                outcome = _O.NOT_RUNNING
            else:
                outcome = _O.SOFT_FAILURE
        return Result(outcome, f"{what} ({process.summary()})")
