"""lifekit's pytest plugin (the ``pytest11`` entry point) and :class:`KitConformance`.

The plugin adds these fixtures:

* ``lifekit_host``: the :class:`~lifekit.kit.Host` conformance tests run kit actions on (this
  machine by default). Override it in a ``conftest.py`` to run every :class:`KitConformance`
  class on another host, e.g. a lab node (``lab.node("n1").host()``).
* ``lifekit_lab_factory``: makes :class:`~lifekit.lab.Lab` s (``factory(nodes=("n1", "n2"))``
  or ``factory(LabSpec(...))``), each up when returned and torn down after the test, even when
  it fails.
* ``lifekit_lab``: one default lab (three nodes, ``public`` and ``hb1``, a client, a 64 MiB
  LUN).

The lab fixtures need root and the lab's packages. Without them they skip, saying what is
missing and how to get it (``lifekit lab bootstrap``); when the environment variable ``CI`` is
set they fail instead, because a CI run that skips them proves nothing.

:class:`KitConformance` turns the conformance suite into one pytest test per rule for a kit
author's test module. This module imports pytest; :mod:`lifekit.testing` itself does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from lifekit.kit import Host, Kit, LocalHost, Timeouts
from lifekit.testing._conformance import run_conformance, select_rules

if TYPE_CHECKING:
    from lifekit.lab import Lab, LabSpec

__all__ = ["KitConformance", "lifekit_host", "lifekit_lab", "lifekit_lab_factory"]


@pytest.fixture
def lifekit_host() -> Host:
    """The host conformance tests run kit actions on: this machine (override to change)."""
    return LocalHost()


def _require_lab() -> None:
    from lifekit.lab._bootstrap import problems  # noqa: PLC0415 - only lab users pay for it

    unmet = problems()
    if unmet:
        message = "the lab cannot run here:\n  " + "\n  ".join(unmet)
        if os.environ.get("CI"):
            pytest.fail(message + "\n(CI is set: lab tests must run, not skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def lifekit_lab_factory() -> Iterator[Callable[..., Lab]]:
    """Make labs for one test: ``factory(spec)`` or ``factory(**LabSpec fields)``.

    Each lab is up when returned and torn down after the test, whatever happens in it.
    """
    _require_lab()
    from lifekit.lab import Lab, LabSpec  # noqa: PLC0415

    labs: list[Lab] = []

    def make(spec: LabSpec | None = None, /, **fields: Any) -> Lab:
        lab = Lab(spec if spec is not None else LabSpec(**fields))
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.down()
            except Exception as exc:  # noqa: BLE001 - tear down every lab, then report all
                errors.append(f"{lab.name}: {exc}")
        if errors:
            pytest.fail("lab teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def lifekit_lab(lifekit_lab_factory: Callable[..., Lab]) -> Lab:
    """A default lab for one test: n1, n2, n3, networks public and hb1, a client, a LUN."""
    return lifekit_lab_factory()


class KitConformance:
    """Subclass this in a test module to run the conformance suite over your kit.

    Each rule of :data:`~lifekit.testing.RULES` becomes one test,
    ``test_conformance[<backend>-<rule id>]``, on asyncio and on trio; a failing one says
    ``conformance rule '<id>' (<title>) failed: <reason>``. Give the kit and its parameters::

        class TestEchoKit(KitConformance):
            kit_factory = EchoKit

            @pytest.fixture
            def params(self, tmp_path):
                return {"port": free_port()}

            @pytest.fixture
            def missing_params(self):
                return {"port": free_port(), "command": ["/nonexistent/echo-server"]}

    Fixtures to override: ``kit`` (default: ``kit_factory()``), ``params`` (required),
    ``missing_params`` (parameters under which the managed program is missing), ``host``
    (default: the plugin's ``lifekit_host``), ``state_dir`` (default: a temporary directory),
    ``anyio_backend`` (default: asyncio and trio). Class attributes tune the suite:
    :attr:`rules`, :attr:`cancel_delay`, :attr:`cancel_grace`, :attr:`timeouts`, :attr:`tag`.
    """

    #: A callable returning a fresh kit (the kit class itself will do).
    kit_factory: ClassVar[Callable[[], Kit] | None] = None
    #: Ids of the rules to run (default: all). Leaving a rule out should be rare and explained.
    rules: ClassVar[Sequence[str] | None] = None
    #: Seconds after which ``restore-cancelled-cleanable`` cancels a restore
    #: (default: half an uncancelled restore).
    cancel_delay: ClassVar[float | None] = None
    #: Seconds a cancelled action may take to return (``timeouts-honoured``).
    cancel_grace: ClassVar[float] = 2.0
    #: Per-action timeouts (default: the kit's ``default_timeouts``).
    timeouts: ClassVar[Timeouts | None] = None
    #: The tag of the resource the rules drive.
    tag: ClassVar[str] = "conformance"

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """One test per selected rule (pytest calls this for the class's tests)."""
        if "conformance_rule" in metafunc.fixturenames:
            ids = [rule.id for rule in select_rules(type(self).rules)]
            metafunc.parametrize("conformance_rule", ids, ids=ids)

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """Run every rule on both anyio backends."""
        backend: str = request.param
        return backend

    @pytest.fixture
    def kit(self) -> Kit:
        """A fresh kit for one test (default: ``kit_factory()``)."""
        factory = type(self).kit_factory
        if factory is None:
            raise TypeError(
                f"{type(self).__name__} gives no kit: set `kit_factory = YourKit` on the class "
                "or override the `kit` fixture"
            )
        return factory()

    @pytest.fixture
    def params(self) -> Mapping[str, Any]:
        """The parameters of the resource the rules drive (override this)."""
        raise TypeError(
            f"{type(self).__name__} gives no params: override the `params` fixture to return "
            "the parameters of a resource the rules may start and stop"
        )

    @pytest.fixture
    def missing_params(self) -> Mapping[str, Any] | None:
        """Parameters under which the managed program is missing (override this)."""
        return None

    @pytest.fixture
    def host(self, lifekit_host: Host) -> Host:
        """Where the kit's commands run (default: the ``lifekit_host`` fixture)."""
        return lifekit_host

    @pytest.fixture
    def state_dir(self, tmp_path: Path) -> Path:
        """The kit's state directory for one test."""
        return tmp_path / "kit-state"

    @pytest.mark.anyio
    async def test_conformance(
        self,
        conformance_rule: str,
        *,
        kit: Kit,
        params: Mapping[str, Any],
        missing_params: Mapping[str, Any] | None,
        host: Host,
        state_dir: Path,
    ) -> None:
        """Run one rule over the kit; fail with the rule's id, title and reason."""
        cls = type(self)
        report = await run_conformance(
            kit,
            params=params,
            missing_params=missing_params,
            host=host,
            tag=cls.tag,
            rules=[conformance_rule],
            state_dir=state_dir,
            timeouts=cls.timeouts,
            cancel_delay=cls.cancel_delay,
            cancel_grace=cls.cancel_grace,
        )
        (result,) = report.results
        problems = [] if result.passed else [result.message]
        problems += [f"conformance rule {conformance_rule!r}: {e}" for e in report.errors]
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
