"""Testing tools for kit authors: the kit conformance suite and its pytest form.

Two ways to use it:

* programmatically, anywhere (no pytest needed)::

      report = await run_conformance(MyKit, params={...}, missing_params={...})
      assert report.passed, str(report)

* under pytest, one test per rule on asyncio and trio::

      from lifekit.testing import KitConformance

      class TestMyKit(KitConformance):
          kit_factory = MyKit
          ...

:class:`KitConformance` lives in the pytest plugin module and is imported on first use, so
importing :mod:`lifekit.testing` does not need pytest (appliance installs may not ship it).
See ``docs/kit-guide.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lifekit.testing._conformance import (
    RULES,
    ConformanceReport,
    Rule,
    RuleResult,
    run_conformance,
)

if TYPE_CHECKING:
    from lifekit.testing._plugin import KitConformance

__all__ = [
    "RULES",
    "ConformanceReport",
    "KitConformance",
    "Rule",
    "RuleResult",
    "run_conformance",
]


def __getattr__(name: str) -> Any:
    # KitConformance needs pytest; import it only when someone asks for it.
    if name == "KitConformance":
        try:
            from lifekit.testing._plugin import KitConformance  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            if exc.name != "pytest":
                raise
            raise ModuleNotFoundError(
                "lifekit.testing.KitConformance runs under pytest, which is not installed; "
                "install it with `pip install pytest`, or call run_conformance() directly",
                name="pytest",
            ) from exc
        return KitConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "KitConformance"])
