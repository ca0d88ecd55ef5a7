"""Mode ``commands``: the application is driven by start, stop and check argv commands.

LifeKeeper's Generic Application kit and an LSB init script in one: lifekit runs the commands
through the action context's runner (never a shell) and reads their exit statuses with the
tables in :mod:`lifekit_app._exitcodes`.

* restore runs ``check`` first and only runs ``start`` when the application is not already
  running: a non-idempotent start script must not start a second copy.
* remove always runs ``stop``: running it once too often is harmless, and skipping it because
  ``check`` said "not running" could leave a hung half of the application behind.
* recover runs ``recover`` if given, else ``stop`` then ``start`` (a restart, as Pacemaker does):
  a failed check often means a hung application, which ``start`` alone would leave hung.

A program that cannot be started at all (missing, not executable, bad ``cwd``) means "not
running" for a check (the application cannot be running without it) and a hard failure for an
action (retrying on this node cannot help).
"""

from __future__ import annotations

from lifekit.errors import ProcessError
from lifekit.kit import ActionContext, Outcome, Result
from lifekit_app._exitcodes import action_result, check_result
from lifekit_app._params import AppConfig

__all__ = ["CommandsMode"]


def _argv(config: AppConfig, name: str) -> tuple[str, ...]:
    argv: tuple[str, ...] | None = getattr(config, name)
    if argv is None:  # pragma: no cover - parse() requires it
        raise AssertionError(f"{name} is required in mode 'commands'")
    return argv


class CommandsMode:
    """The actions of mode ``commands``; stateless."""

    async def _check(self, config: AppConfig, ctx: ActionContext) -> Result:
        argv = _argv(config, "check")
        try:
            process = await ctx.run(argv, env=config.env, cwd=config.cwd)
        except ProcessError as exc:
            return Result.not_running(f"check: not running ({exc})")
        return check_result("check", process)

    async def _action(self, name: str, config: AppConfig, ctx: ActionContext) -> Result:
        try:
            process = await ctx.run(_argv(config, name), env=config.env, cwd=config.cwd)
        except ProcessError as exc:
            return Result.hard_failure(f"{name}: cannot run ({exc})")
        return action_result(name, process)

    async def quickcheck(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Run ``check`` and map its exit status."""
        return await self._check(config, ctx)

    async def restore(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Run ``start`` unless ``check`` says the application already runs."""
        found = await self._check(config, ctx)
        if found.outcome is Outcome.OK:
            return Result.ok(f"already running ({found.reason})")
        if found.outcome is Outcome.DEGRADED:
            return found
        return await self._action("start", config, ctx)

    async def remove(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Run ``stop``."""
        return await self._action("stop", config, ctx)

    async def recover(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Run ``recover``, or ``stop`` then ``start``."""
        if config.recover is not None:
            return await self._action("recover", config, ctx)
        stopped = await self._action("stop", config, ctx)
        if stopped.outcome is not Outcome.OK:
            return Result(stopped.outcome, f"recover: {stopped.reason}")
        return await self._action("start", config, ctx)
