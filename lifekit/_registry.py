"""Finding kits: pluggy, the ``lifekit.kits`` entry-point group, and plugins passed in directly.

Bundled kits and third-party kits are found the same way. A hook implementation that matches
no spec (a misspelt hook name) is an error, as in pytest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import pluggy

from lifekit import hookspecs
from lifekit.errors import KitError, KitNotFound
from lifekit.kit import Kit

__all__ = ["ENTRY_POINT_GROUP", "KitRegistry", "load_kits"]

#: The entry-point group kit packages register in.
ENTRY_POINT_GROUP = "lifekit.kits"


class KitRegistry:
    """The kits of one node, by kind."""

    def __init__(self, kits: Iterable[Kit]) -> None:
        by_kind: dict[str, Kit] = {}
        for kit in kits:
            if not isinstance(kit, Kit):
                raise KitError(
                    f"a lifekit_kits hook returned {kit!r}, which is not a lifekit.kit.Kit; "
                    "return instances of Kit subclasses"
                )
            if not kit.kind or not isinstance(kit.kind, str):
                raise KitError(f"kit {type(kit).__qualname__} does not set its `kind`")
            problems = kit.schema.problems()
            if problems:
                raise KitError(
                    f"kit {kit.kind!r} has an invalid parameter schema: " + "; ".join(problems)
                )
            if kit.kind in by_kind:
                raise KitError(
                    f"two kits provide kind {kit.kind!r}: {type(by_kind[kit.kind]).__module__} "
                    f"and {type(kit).__module__}; uninstall one of them"
                )
            by_kind[kit.kind] = kit
        self._kits = by_kind

    @property
    def kits(self) -> Mapping[str, Kit]:
        """Kits by kind."""
        return MappingProxyType(self._kits)

    def get(self, kind: str) -> Kit:
        """The kit for ``kind``.

        :raises KitNotFound: no installed kit provides it (the message lists what is).
        """
        try:
            return self._kits[kind]
        except KeyError:
            raise KitNotFound(kind, list(self._kits)) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._kits


def load_kits(
    *, node_name: str, plugins: Iterable[object] = (), entry_points: bool = True
) -> KitRegistry:
    """Collect kits from installed packages and from ``plugins``.

    :param node_name: passed to every ``lifekit_kits`` hook.
    :param plugins: extra plugin objects (modules or instances with ``@hookimpl`` functions),
        e.g. a kit defined in a test.
    :param entry_points: also load the ``lifekit.kits`` entry-point group.
    """
    manager = pluggy.PluginManager("lifekit")
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin)
    if entry_points:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise KitError(f"a kit package implements an unknown hook: {exc}") from exc
    kits: list[Kit] = []
    for returned in manager.hook.lifekit_kits(node_name=node_name):
        kits.extend(returned)
    return KitRegistry(kits)
