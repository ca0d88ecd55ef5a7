"""What a command's exit status means: the app kit's contract with the commands it runs.

Two tables, after LSB init scripts and Pacemaker's OCF resource agents:

* a *check* (``check``, the quickcheck of mode ``commands`` and the extra check of mode
  ``supervised``) answers "what state is it in?": 0 running; 1, 3 and 7 not running (pgrep
  finding nothing, LSB ``status``, OCF ``monitor``); 190 degraded (OCF_DEGRADED); 2, 4 and 5
  hard failures (OCF_ERR_ARGS, OCF_ERR_PERM, OCF_ERR_INSTALLED); 6 fatal (OCF_ERR_CONFIGURED);
  anything else, a death by signal included, a soft failure.
* an *action* (``start``, ``stop``, ``recover``, and ``systemctl start|stop|restart``) answers
  "did it work?": 0 ok; 2, 3, 4 and 5 hard failures (OCF_ERR_ARGS, OCF_ERR_UNIMPLEMENTED,
  OCF_ERR_PERM, OCF_ERR_INSTALLED: retrying on this node cannot help); 6 fatal; anything else
  (1, OCF_ERR_GENERIC, above all) a soft failure.

Every reason names the command and its last line of standard error
(:meth:`~lifekit.kit.ProcessResult.summary`), so an operator sees why without the logs.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from types import MappingProxyType

from lifekit.kit import Outcome, ProcessResult, Result

__all__ = ["ACTION_CODES", "CHECK_CODES", "action_result", "check_result"]

_O = Outcome

#: Exit status of a check -> (outcome, meaning).
CHECK_CODES: Mapping[int, tuple[Outcome, str]] = MappingProxyType(
    {
        0: (_O.OK, "running"),
        1: (_O.NOT_RUNNING, "not running"),
        3: (_O.NOT_RUNNING, "not running"),
        7: (_O.NOT_RUNNING, "not running"),
        190: (_O.DEGRADED, "degraded (OCF_DEGRADED)"),
        2: (_O.HARD_FAILURE, "invalid arguments (OCF_ERR_ARGS)"),
        4: (_O.HARD_FAILURE, "insufficient privileges (OCF_ERR_PERM)"),
        5: (_O.HARD_FAILURE, "not installed (OCF_ERR_INSTALLED)"),
        6: (_O.FATAL, "not configured (OCF_ERR_CONFIGURED)"),
    }
)

#: Exit status of an action -> (outcome, meaning).
ACTION_CODES: Mapping[int, tuple[Outcome, str]] = MappingProxyType(
    {
        0: (_O.OK, "ok"),
        2: (_O.HARD_FAILURE, "invalid arguments (OCF_ERR_ARGS)"),
        3: (_O.HARD_FAILURE, "not implemented (OCF_ERR_UNIMPLEMENTED)"),
        4: (_O.HARD_FAILURE, "insufficient privileges (OCF_ERR_PERM)"),
        5: (_O.HARD_FAILURE, "not installed (OCF_ERR_INSTALLED)"),
        6: (_O.FATAL, "not configured (OCF_ERR_CONFIGURED)"),
    }
)


def _other(returncode: int) -> tuple[Outcome, str]:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return _O.SOFT_FAILURE, f"killed by {name}"
    return _O.SOFT_FAILURE, "failed"


def _result(what: str, process: ProcessResult, table: Mapping[int, tuple[Outcome, str]]) -> Result:
    outcome, meaning = table.get(process.returncode) or _other(process.returncode)
    return Result(outcome, f"{what}: {meaning} ({process.summary()})")


def check_result(what: str, process: ProcessResult) -> Result:
    """Read a finished check's exit status as the resource's state.

    :param what: the command's role for the reason, e.g. ``"check"``.
    """
    return _result(what, process, CHECK_CODES)


def action_result(what: str, process: ProcessResult) -> Result:
    """Read a finished start, stop or recover command's exit status as success or failure.

    :param what: the command's role for the reason, e.g. ``"start"``.
    """
    return _result(what, process, ACTION_CODES)
