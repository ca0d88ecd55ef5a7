"""The conformance suite judged on known kits: each broken kit fails exactly its own rule.

Everything runs for real: the kits' commands are real processes on this machine, the
cancellations are real anyio cancellations, on asyncio and on trio.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from lifekit.errors import ConfigError
from lifekit.kit import (
    ActionContext,
    Kit,
    LocalHost,
    NodeContext,
    ProcessResult,
    Resource,
    Result,
    SpawnedProcess,
    Timeouts,
)
from lifekit.testing import RULES, ConformanceReport, run_conformance
from tests.fixtures.broken_kits import (
    BROKEN_KITS,
    TEST_CANCEL_GRACE,
    FlagKit,
    flag_params,
    missing_flag_params,
)

pytestmark = pytest.mark.anyio

#: What each broken kit's failure must say after the rule's id and title.
EXPECTED_REASON = {
    "schema-valid": "schema: parameter 'retries': default 'three' is not an integer",
    "results-typed": "recover returned str 'recovered', not a lifekit Result",
    "restore-twice": "second restore (of a running resource) returned soft_failure:",
    "remove-twice": "second remove (of a stopped resource) returned soft_failure: rm exited",
    "quickcheck-after-remove": "quickcheck after remove returned ok:",
    "quickcheck-program-missing": "quickcheck (probe) with the program missing raised ProcessError",
    "restore-cancelled-cleanable": "the cancelled restore left something remove cannot clean",
    "timeouts-honoured": "recover cancelled after 0 s returned",
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


async def _run(kit: type[Kit] | Kit, tmp_path: Path, **options: object) -> ConformanceReport:
    return await run_conformance(
        kit,
        params=flag_params(tmp_path),
        missing_params=missing_flag_params(tmp_path),
        cancel_grace=TEST_CANCEL_GRACE,
        **options,  # type: ignore[arg-type]
    )


def test_there_is_one_broken_kit_per_rule() -> None:
    assert sorted(rule for _, rule in BROKEN_KITS) == sorted(rule.id for rule in RULES)


@pytest.mark.parametrize(("kit_class", "rule_id"), BROKEN_KITS, ids=[r for _, r in BROKEN_KITS])
async def test_a_broken_kit_fails_only_its_rule(
    kit_class: type[Kit], rule_id: str, tmp_path: Path
) -> None:
    report = await _run(kit_class, tmp_path)
    assert [result.rule.id for result in report.failures] == [rule_id], str(report)
    assert [result.rule.id for result in report.results] == [rule.id for rule in RULES]
    assert report.errors == ()
    assert not report.passed
    title = next(rule.title for rule in RULES if rule.id == rule_id)
    message = report[rule_id].message
    assert message.startswith(f"conformance rule {rule_id!r} ({title}) failed: "), message
    assert EXPECTED_REASON[rule_id] in message, message


async def test_the_reference_kit_passes_every_rule(tmp_path: Path) -> None:
    report = await _run(FlagKit, tmp_path)
    assert report.passed, str(report)
    assert report.kind == "flag"
    assert len(report.results) == len(RULES)
    assert "PASS  conformance rule 'remove-twice' (remove twice succeeds) passed" in str(report)


async def test_one_kit_object_is_opened_once_for_every_rule(tmp_path: Path) -> None:
    class CountingKit(FlagKit):
        def __init__(self) -> None:
            self.opened: list[NodeContext] = []
            self.closed = 0

        async def open(self, node: NodeContext) -> None:
            self.opened.append(node)

        async def close(self) -> None:
            self.closed += 1

    kit = CountingKit()
    report = await _run(kit, tmp_path, state_dir=tmp_path / "state", node_name="n1")
    assert report.passed, str(report)
    assert len(kit.opened) == 1
    assert kit.closed == 1
    assert kit.opened[0].name == "n1"
    assert kit.opened[0].state_dir == tmp_path / "state"


class RecordingHost:
    """A Host that runs commands here and remembers them (the seam a lab node plugs into)."""

    def __init__(self) -> None:
        self.name = "recorder"
        self.commands: list[tuple[str, ...]] = []
        self._local = LocalHost("recorder")

    async def run(
        self, argv: Sequence[str], **options: object
    ) -> ProcessResult:  # pragma: no cover - the signature is the Host protocol's
        self.commands.append(tuple(argv))
        return await self._local.run(argv, **options)  # type: ignore[arg-type]

    async def spawn(self, argv: Sequence[str], **options: object) -> SpawnedProcess:
        self.commands.append(tuple(argv))
        return await self._local.spawn(argv, **options)  # type: ignore[arg-type]


async def test_actions_run_on_the_given_host(tmp_path: Path) -> None:
    seen: list[NodeContext] = []

    class OpenedKit(FlagKit):
        async def open(self, node: NodeContext) -> None:
            seen.append(node)

    host = RecordingHost()
    report = await _run(OpenedKit, tmp_path, host=host, rules=["restore-twice"])
    assert report.passed, str(report)
    assert report.host == "recorder"
    assert seen[0].host is host
    assert seen[0].name == "recorder"
    assert [argv[0] for argv in host.commands].count("touch") == 1
    assert ("rm", "-f", str(tmp_path / "flag-0")) in host.commands


async def test_rules_selects_rules_and_an_unknown_rule_is_named(tmp_path: Path) -> None:
    report = await _run(FlagKit, tmp_path, rules=["timeouts-honoured", "schema-valid"])
    assert [result.rule.id for result in report.results] == ["schema-valid", "timeouts-honoured"]
    with pytest.raises(ValueError, match=r"unknown conformance rule\(s\) 'remove-twise'; valid"):
        await _run(FlagKit, tmp_path, rules=["remove-twise"])
    with pytest.raises(TypeError, match=r"write rules=\['schema-valid'\]"):
        await _run(FlagKit, tmp_path, rules="schema-valid")


async def test_without_missing_params_that_rule_fails_and_says_what_to_give(
    tmp_path: Path,
) -> None:
    report = await run_conformance(
        FlagKit, params=flag_params(tmp_path), rules=["quickcheck-program-missing"]
    )
    assert "no missing-program params were given: pass missing_params=" in str(report)
    assert not report.passed


async def test_params_that_do_not_validate_fail_with_the_schema_error(tmp_path: Path) -> None:
    report = await run_conformance(
        FlagKit, params={"path": "relative/flag"}, rules=["schema-valid", "restore-twice"]
    )
    for result in report.results:
        assert "the params do not validate: resource 'conformance': params.path: invalid " in (
            result.reason
        ), result.reason
        assert "(got 'relative/flag'); an absolute path" in result.reason
    assert issubclass(ConfigError, ValueError)


async def test_an_open_that_raises_is_reported(tmp_path: Path) -> None:
    class BrokenOpenKit(FlagKit):
        async def open(self, node: NodeContext) -> None:
            raise RuntimeError("storage session refused")

    report = await _run(BrokenOpenKit, tmp_path, rules=["schema-valid"])
    assert report.errors == ("BrokenOpenKit.open raised RuntimeError: storage session refused",)
    assert "could not open the kit" in report["schema-valid"].reason
    with pytest.raises(KeyError, match="rule 'remove-twice' was not run"):
        report["remove-twice"]


async def test_a_hung_action_fails_at_its_timeout(tmp_path: Path) -> None:
    class HungQuickcheckKit(FlagKit):
        async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    report = await _run(
        HungQuickcheckKit,
        tmp_path,
        rules=["quickcheck-after-remove"],
        timeouts=Timeouts(restore=5, remove=5, quickcheck=0.2, recover=5),
    )
    assert report["quickcheck-after-remove"].reason == (
        "quickcheck after remove did not return within its 0.2 s timeout"
    )


def test_the_report_is_keyed_and_printable() -> None:
    mapping: Mapping[str, str] = {rule.id: rule.title for rule in RULES}
    assert mapping["remove-twice"] == "remove twice succeeds"
    assert len(mapping) == len(RULES)
    logging.getLogger(__name__).debug("rules: %s", mapping)


async def test_a_validate_that_forgets_to_return_fails_schema_valid(tmp_path: Path) -> None:
    class ForgetfulKit(FlagKit):
        def validate(self, tag: str, params: Mapping[str, object]) -> Mapping[str, object]:
            return None  # type: ignore[return-value]  # the bug under test

    report = await _run(ForgetfulKit, tmp_path, rules=["schema-valid"])
    assert report["schema-valid"].reason == (
        "ForgetfulKit.validate returned None; return the params"
    )
