"""The lab: a virtual cluster on one machine, for tests, kit authors, the demo and benchmarks.

Each node is a network namespace, a persistent private mount namespace, a UTS namespace and a
PID namespace, with its own ``/run`` and persistent directories; networks are bridges inside a
switch namespace; the shared LUN is an image file every node reaches through a loop device of
its own, or through its own iSCSI session to tgtd (the fenced path). Faults: power loss,
the death of one process, hang and thaw, cut links, partitions, impairments.

::

    from lifekit.lab import Lab, LabSpec

    with Lab(LabSpec(nodes=("n1", "n2"), networks=("public", "hb1"))) as lab:
        n1 = lab.node("n1")
        n1.run(["ip", "addr", "add", "10.88.1.50/24", "dev", "public"])
        lab.client.run(["ping", "-c1", "10.88.1.50"])
        n1.power_loss()

Needs root. ``lifekit lab doctor`` reports what is missing, ``lifekit lab bootstrap`` installs
it. See ``docs/lab.md``.
"""

from lifekit.lab._clean import clean, leftovers
from lifekit.lab._lab import Lab
from lifekit.lab._node import LabHost, LabNode, LabProcess
from lifekit.lab._power import LabPowerControl, LabWatchdog
from lifekit.lab._spec import LabSpec

__all__ = [
    "Lab",
    "LabHost",
    "LabNode",
    "LabPowerControl",
    "LabProcess",
    "LabSpec",
    "LabWatchdog",
    "clean",
    "leftovers",
]
