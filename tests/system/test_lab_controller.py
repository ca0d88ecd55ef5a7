"""The lab's controller: a node's halt/reboot request and its watchdog become power loss."""

from __future__ import annotations

import sys
import time

import pytest

from lifekit.errors import LabError
from lifekit.lab import Lab, LabNode, LabWatchdog

pytestmark = pytest.mark.root

POWER = (
    "import anyio, sys\n"
    "from lifekit.lab import LabPowerControl\n"
    "anyio.run(getattr(LabPowerControl(), sys.argv[1]), 'asked by the test')\n"
)

FEEDER = (
    "import sys, time\n"
    "from lifekit.lab import LabWatchdog\n"
    "dog = LabWatchdog()\n"
    "dog.arm(float(sys.argv[1]))\n"
    "end = time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    dog.feed()\n"
    "    time.sleep(0.05)\n"
    "print('stopped feeding', flush=True)\n"
    "time.sleep(3600)\n"
)


def booted_at(node: LabNode) -> int:
    return node.init_pid()


def wait_power(node: LabNode, power: str, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while node.power != power:
        assert time.monotonic() < deadline, f"{node.name} did not become {power}"
        time.sleep(0.02)


def test_a_node_halting_itself_loses_power_and_a_reboot_boots_it(lifekit_lab: Lab) -> None:
    n1, n2 = lifekit_lab.node("n1"), lifekit_lab.node("n2")
    first = booted_at(n2)
    n2.spawn([sys.executable, "-c", POWER, "reboot"])

    def rebooted() -> bool:
        try:
            return n2.init_pid() != first
        except LabError:  # between the power loss and the boot
            return False

    # The reboot is a power loss (a new PID 1) followed by a boot.
    deadline = time.monotonic() + 10
    while not rebooted():
        assert time.monotonic() < deadline, "n2 did not reboot"
        time.sleep(0.02)

    n1.spawn([sys.executable, "-c", POWER, "halt"])
    wait_power(n1, "off")
    assert n2.is_on
    log = (lifekit_lab.directory / "logs" / "controller.log").read_text()
    assert "n1: poweroff (asked by the test)" in log
    assert "n2: reboot (asked by the test)" in log


def test_a_watchdog_that_is_not_fed_cuts_the_power(lifekit_lab: Lab) -> None:
    n1 = lifekit_lab.node("n1")
    feeder = n1.spawn([sys.executable, "-c", FEEDER, "0.5", "1.5"], output=n1.directory / "dog")
    started = time.monotonic()
    # Fed for 1.5 s with a 0.5 s timeout: still on past the timeout.
    time.sleep(1.0)
    assert n1.is_on
    wait_power(n1, "off")
    assert time.monotonic() - started >= 1.5
    assert "stopped feeding" in (n1.directory / "dog").read_text()
    assert feeder.wait(5) != 0
    assert (
        "n1: watchdog not fed for 0.5 s"
        in (lifekit_lab.directory / "logs" / "controller.log").read_text()
    )


def test_a_hung_node_is_reset_by_its_watchdog(lifekit_lab: Lab) -> None:
    n1 = lifekit_lab.node("n1")
    n1.spawn([sys.executable, "-c", FEEDER, "0.5", "3600"])
    time.sleep(0.8)
    assert n1.is_on
    n1.hang()  # the feeder stops with everything else
    wait_power(n1, "off")


def test_power_requests_off_a_lab_node_are_refused_clearly(tmp_path: object) -> None:
    with pytest.raises(LabError, match="no lab controller answers"):
        LabWatchdog().feed()


def test_a_watchdog_does_not_outlive_the_boot_that_armed_it(lifekit_lab: Lab) -> None:
    n1 = lifekit_lab.node("n1")
    log = lifekit_lab.directory / "logs" / "controller.log"
    n1.spawn([sys.executable, "-c", FEEDER, "0.5", "0.2"])
    n1.wait_for(lambda: "n1: watchdog armed" in log.read_text())
    n1.restart()  # an ordinary reset while the watchdog is armed and unfed
    time.sleep(1.5)
    assert n1.is_on
    assert (
        "watchdog of an earlier boot expired"
        in (lifekit_lab.directory / "logs" / "controller.log").read_text()
    )
