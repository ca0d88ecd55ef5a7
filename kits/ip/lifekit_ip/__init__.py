"""lifekit's virtual IP address kit: ``kind = "ip"``, IPv4 and IPv6.

Like Pacemaker's IPaddr2 and LifeKeeper's IP kit, built so that their users' complaints do not
happen here: the interface is found from the node's addresses and routes (altnames, VLANs and
bonds are interface names like any other), a duplicate address is refused before it is added
(``arping -D`` for IPv4, the kernel's DAD for IPv6), the move is announced (gratuitous ARP,
unsolicited neighbour advertisement) and may be re-announced periodically, quickcheck sees a
link without carrier (``NO-CARRIER``, ``LOWERLAYERDOWN``) and a tentative or DAD-failed
address, one ``ip -j addr show`` checks every address of the node, and recover moves the
address to a backup interface when its link is down.

Registered exactly as a third-party kit is: the distribution's ``lifekit.kits`` entry point
names this module, whose :func:`lifekit_kits` hook returns a fresh :class:`IpKit`. Only
lifekit's public API is used. The reference is ``docs/ip-kit.md``.
"""

from __future__ import annotations

from lifekit.kit import Kit, hookimpl
from lifekit_ip._kit import IpKit

__all__ = ["IpKit", "lifekit_kits"]


@hookimpl
def lifekit_kits(node_name: str) -> list[Kit]:
    """Return a fresh :class:`IpKit` for the node (kit objects are never shared by nodes).

    :param node_name: the node the kit is for (the ip kit needs nothing from it).
    """
    return [IpKit()]
