"""Run SCSI-3 reservation commands from inside a lab node, in one iSCSI session.

``python -m lifekit.lab._pr PORTAL TARGET INITIATOR STEPS_JSON`` logs in once, runs every step
in order on that one I_T nexus (tgt binds registrations to the session, so a register and the
preempt that needs it must share one), prints one JSON object per step and logs out. Steps:
``["register", key]``, ``["reserve", key, type]``, ``["preempt", key, victim, type]``,
``["release", key, type]``, ``["clear", key]``, ``["keys"]``, ``["reservation"]`` and
``["write", lba]`` (one block of zeros: a probe of write access). A step that fails prints its
error and stops the run with exit status 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lifekit.lab._iscsi import IscsiSession, ReservationType, ScsiError

__all__: list[str] = []


def _step(session: IscsiSession, step: list[Any]) -> dict[str, Any]:
    op, *args = step
    if op == "register":
        session.register(int(args[0]))
        return {}
    if op == "reserve":
        session.reserve(int(args[0]), ReservationType(int(args[1])))
        return {}
    if op == "preempt":
        done = session.preempt(int(args[0]), int(args[1]), ReservationType(int(args[2])))
        return {"action": getattr(done, "name", str(done))}
    if op == "release":
        session.release(int(args[0]), ReservationType(int(args[1])))
        return {}
    if op == "clear":
        session.clear(int(args[0]))
        return {}
    if op == "keys":
        generation, keys = session.read_keys()
        return {"generation": generation, "keys": keys}
    if op == "reservation":
        reservation = session.read_reservation()
        return {
            "generation": reservation.generation,
            "key": reservation.key,
            "type": None if reservation.type is None else int(reservation.type),
        }
    if op == "write":
        session.write(int(args[0]), bytes(session.block_size))
        return {}
    raise ValueError(f"unknown step {step!r}")


def main(argv: list[str]) -> int:
    """Run the steps; see the module docstring."""
    portal, target, initiator, steps = argv
    with IscsiSession(portal, target, initiator=initiator) as session:
        for step in json.loads(steps):
            try:
                result = _step(session, step)
            except ScsiError as exc:
                print(json.dumps({"step": step, "error": str(exc)}), flush=True)
                return 1
            print(json.dumps({"step": step, "ok": True, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
