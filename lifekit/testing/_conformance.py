"""The kit conformance suite: the rules every kit must pass, run against its real actions.

Each rule is a short script of real kit calls on one resource, through a :class:`Host` (this
machine by default, a lab node when one is given), judged by the typed results. A rule that
fails says why in words that name the action and what it returned. Rules are independent: each
starts by removing the resource (its result ignored) and ends by removing it again, and with a
kit *factory* and a params *factory* every rule gets a fresh kit and a fresh resource, so one
broken behaviour fails one rule.

Nothing here imports pytest: an appliance can run :func:`run_conformance` on its own.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from lifekit.errors import ConfigError
from lifekit.kit import (
    ActionContext,
    Host,
    Kit,
    LocalHost,
    NodeContext,
    Outcome,
    Resource,
    Result,
    Schema,
    Timeouts,
)

__all__ = ["RULES", "ConformanceReport", "Rule", "RuleResult", "run_conformance"]

_log = logging.getLogger("lifekit.testing")

#: A kit object, or a callable returning a fresh one (a ``Kit`` subclass itself will do).
KitSource = Kit | Callable[[], Kit]
#: Resource parameters, or a callable returning fresh ones (e.g. a new temporary path).
ParamsSource = Mapping[str, Any] | Callable[[], Mapping[str, Any]]

_RUNNING = frozenset({Outcome.OK, Outcome.DEGRADED})
_STOPPED = frozenset({Outcome.OK, Outcome.NOT_RUNNING})
_NOT_RUNNING = frozenset({Outcome.NOT_RUNNING})
_ACTIONS = ("restore", "remove", "quickcheck", "recover", "remove_fenced")


@attrs.frozen
class Rule:
    """One conformance rule.

    :param id: stable identifier, used in test ids, ``rules=`` and failure messages.
    :param title: what the rule asks, in a few words.
    :param description: what exactly is run and what is expected.
    """

    id: str
    title: str
    description: str


#: Every rule, in the order they run.
RULES: tuple[Rule, ...] = (
    Rule(
        "schema-valid",
        "the kit's declarations are valid",
        "kind and description are set, the parameter schema has no problems, default "
        "timeouts are at least the minimum timeouts, and the given params (and missing-program "
        "params) pass the schema and Kit.validate.",
    ),
    Rule(
        "results-typed",
        "every action returns a lifekit Result",
        "restore, quickcheck (probe and not), quickcheck_many, recover, remove (twice) and "
        "remove_fenced each return a lifekit.kit.Result (quickcheck_many: one per resource). "
        "Raising is allowed (the runtime treats it as a soft failure); returning a string, "
        "None or a bool is not.",
    ),
    Rule(
        "restore-twice",
        "restore twice succeeds",
        "restore on a stopped resource, then restore again on the running one, both return "
        "ok or degraded, and a quickcheck then says ok or degraded.",
    ),
    Rule(
        "remove-twice",
        "remove twice succeeds",
        "after a restore, remove returns ok or not_running, and a second remove of the "
        "stopped resource does too.",
    ),
    Rule(
        "quickcheck-after-remove",
        "quickcheck after remove says not running",
        "after restore and remove, quickcheck and quickcheck_many say not_running.",
    ),
    Rule(
        "quickcheck-program-missing",
        "quickcheck with the managed program missing says not running",
        "with the missing-program params (the program the kit manages is not installed), "
        "quickcheck, as a probe and as a check, says not_running: not a failure, not an "
        "exception.",
    ),
    Rule(
        "restore-cancelled-cleanable",
        "a restore cancelled midway leaves nothing remove cannot clean",
        "a restore is cancelled after cancel_delay seconds (default: half of an uncancelled "
        "restore), as the runtime does at its timeout; then remove returns ok or not_running "
        "and quickcheck says what it says after a clean remove (not_running).",
    ),
    Rule(
        "timeouts-honoured",
        "a cancelled action returns promptly",
        "restore, quickcheck, recover and remove are each cancelled at once and halfway "
        "through, as the runtime does at their timeout; each must return within cancel_grace "
        "seconds. An action must not shield itself (anyio.CancelScope(shield=True)) around "
        "anything that waits.",
    ),
)

_RULES_BY_ID = {rule.id: rule for rule in RULES}


@attrs.frozen
class RuleResult:
    """How one rule went.

    :param rule: the rule.
    :param passed: whether the kit passed it.
    :param reason: why it failed (empty when it passed).
    :param notes: things worth knowing even when it passed (e.g. what could not be judged).
    :param duration: seconds the rule took.
    """

    rule: Rule
    passed: bool
    reason: str = ""
    notes: tuple[str, ...] = ()
    duration: float = 0.0

    @property
    def message(self) -> str:
        """``conformance rule 'ID' (TITLE) failed: REASON`` (or ``... passed``)."""
        head = f"conformance rule {self.rule.id!r} ({self.rule.title})"
        text = f"{head} passed" if self.passed else f"{head} failed: {self.reason}"
        if self.notes:
            text += " [" + "; ".join(self.notes) + "]"
        return text


@attrs.frozen
class ConformanceReport:
    """Every selected rule's result for one kit.

    :param kind: the kit's kind.
    :param host: the name of the host the actions ran on.
    :param results: one per selected rule, in :data:`RULES` order.
    :param errors: problems outside any rule (``Kit.open`` or ``Kit.close`` raised).
    """

    kind: str
    host: str
    results: tuple[RuleResult, ...]
    errors: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Every rule passed and the kit opened and closed cleanly."""
        return not self.errors and all(result.passed for result in self.results)

    @property
    def failures(self) -> tuple[RuleResult, ...]:
        """The rules that failed."""
        return tuple(result for result in self.results if not result.passed)

    def __getitem__(self, rule_id: str) -> RuleResult:
        for result in self.results:
            if result.rule.id == rule_id:
                return result
        ran = ", ".join(result.rule.id for result in self.results)
        raise KeyError(f"rule {rule_id!r} was not run (this report has: {ran})")

    def __str__(self) -> str:
        lines = [f"kit {self.kind!r} on host {self.host!r}:"]
        lines += [f"  {'PASS' if r.passed else 'FAIL'}  {r.message}" for r in self.results]
        lines += [f"  ERROR {error}" for error in self.errors]
        return "\n".join(lines)


class _RuleFailed(Exception):
    """Raised inside a rule: the reason it failed."""


def _describe(value: object) -> str:
    if isinstance(value, Result):
        return str(value)
    return f"{type(value).__name__} {value!r}, not a lifekit Result"


def _expect(value: object, allowed: frozenset[Outcome], what: str) -> Result:
    if not isinstance(value, Result):
        raise _RuleFailed(f"{what} returned {_describe(value)}")
    if value.outcome not in allowed:
        wanted = " or ".join(sorted(outcome.value for outcome in allowed))
        raise _RuleFailed(f"{what} returned {value} (expected {wanted})")
    return value


@attrs.frozen
class _Settings:
    tag: str
    timeouts: Timeouts | None
    cancel_delay: float | None
    cancel_grace: float


class _Harness:
    """One kit and one resource for one rule: runs actions the way the runtime does."""

    def __init__(
        self,
        kit: Kit,
        node: NodeContext,
        *,
        params: Mapping[str, Any],
        missing_params: Mapping[str, Any] | None,
        settings: _Settings,
    ) -> None:
        self.kit = kit
        self.node = node
        self.settings = settings
        self.params = params
        self.missing_params = missing_params
        self.timeouts = settings.timeouts or kit.default_timeouts
        self._resource: Resource | None = None

    def make_resource(self, params: Mapping[str, Any]) -> Resource:
        """Validate ``params`` the way the config loader does and build the resource."""
        tag = self.settings.tag
        try:
            validated = self.kit.schema.validate(tag, params)
            checked: object = self.kit.validate(tag, validated)
        except ConfigError as exc:
            raise _RuleFailed(f"the params do not validate: {exc}") from exc
        except Exception as exc:  # a kit's exception is a finding, not a crash of the suite
            raise _RuleFailed(
                f"{type(self.kit).__name__}.validate raised {type(exc).__name__}: {exc}; it "
                "should return the params or raise lifekit.errors.ParamError"
            ) from exc
        if not isinstance(checked, Mapping):
            raise _RuleFailed(
                f"{type(self.kit).__name__}.validate returned {checked!r}; return the params"
            )
        return Resource(tag=tag, kind=self.kit.kind, params=checked)

    @property
    def resource(self) -> Resource:
        """The resource under test (validated on first use)."""
        if self._resource is None:
            self._resource = self.make_resource(self.params)
        return self._resource

    def context(self, action: str, *, tag: str | None, probe: bool = False) -> ActionContext:
        """The context the runtime would pass to ``action``."""
        log = logging.LoggerAdapter(logging.getLogger("lifekit.kit"), {"tag": tag})
        return ActionContext(
            node=self.node, tag=tag, timeout=self._timeout(action), probe=probe, log=log
        )

    def _timeout(self, action: str) -> float:
        timeouts = self.timeouts
        return {
            "restore": timeouts.restore,
            "remove": timeouts.remove,
            "remove_fenced": timeouts.remove,
            "quickcheck": timeouts.quickcheck,
            "quickcheck_many": timeouts.quickcheck,
            "recover": timeouts.recover,
        }[action]

    async def _bounded(self, action: str, call: Awaitable[object], *, what: str) -> object:
        timeout = self._timeout(action)
        with anyio.move_on_after(timeout):
            return await call
        # Only this scope's own deadline ends the block without a return.
        raise _RuleFailed(f"{what} did not return within its {timeout:g} s timeout")

    async def call(
        self,
        action: str,
        resource: Resource | None = None,
        *,
        probe: bool = False,
        what: str | None = None,
    ) -> object:
        """Run one action to completion under its timeout and return what it returned.

        An exception from the kit fails the rule, naming the call as ``what`` (default: the
        action); cancellation is never caught.
        """
        resource = resource or self.resource
        method: Callable[[Resource, ActionContext], Awaitable[object]] = getattr(self.kit, action)
        ctx = self.context(action, tag=resource.tag, probe=probe)
        try:
            return await self._bounded(action, method(resource, ctx), what=what or action)
        except _RuleFailed:
            raise
        except Exception as exc:  # a kit's exception is a finding, not a crash of the suite
            raise _RuleFailed(f"{what or action} raised {type(exc).__name__}: {exc}") from exc

    async def expect(
        self,
        action: str,
        allowed: frozenset[Outcome],
        what: str,
        resource: Resource | None = None,
        *,
        probe: bool = False,
    ) -> Result:
        """Run an action and fail the rule unless it returns one of the ``allowed`` outcomes."""
        value = await self.call(action, resource, probe=probe, what=what)
        return _expect(value, allowed, what)

    async def call_many(self, resources: Sequence[Resource]) -> object:
        """Run ``quickcheck_many`` like the runtime's batched quickcheck."""
        ctx = self.context("quickcheck_many", tag=None)
        try:
            return await self._bounded(
                "quickcheck_many", self.kit.quickcheck_many(resources, ctx), what="quickcheck_many"
            )
        except _RuleFailed:
            raise
        except Exception as exc:  # a kit's exception is a finding, not a crash of the suite
            raise _RuleFailed(f"quickcheck_many raised {type(exc).__name__}: {exc}") from exc

    async def attempt(self, action: str) -> object:
        """Run an action for set-up or clean-up: whatever it returns or raises is ignored."""
        try:
            return await self.call(action)
        except _RuleFailed as exc:
            _log.debug("ignored during set-up/clean-up: %s", exc)
            return exc

    async def start(self, why: str) -> None:
        """Bring the resource in service as a rule's precondition."""
        result = await self.call("restore", what=f"restore ({why})")
        if not (isinstance(result, Result) and result.outcome in _RUNNING):
            raise _RuleFailed(f"restore ({why}) returned {_describe(result)}")


async def _schema_valid(h: _Harness) -> list[str]:
    kit = h.kit
    problems: list[str] = []
    # Read as plain objects: a kit written without a type checker may set anything here.
    kind: object = kit.kind
    description: object = kit.description
    schema: object = kit.schema
    defaults: object = kit.default_timeouts
    minimums: object = kit.minimum_timeouts
    if not isinstance(kind, str) or not kind:
        problems.append("`kind` is not set (set kind = 'yourkind' on the class)")
    if not isinstance(description, str) or not description.strip():
        problems.append("`description` is empty (one paragraph for `lifekit kits` and the docs)")
    if not isinstance(schema, Schema):
        problems.append(f"`schema` is {schema!r}, not a lifekit.kit.Schema")
    else:
        problems += [f"schema: {problem}" for problem in schema.problems()]
    if not isinstance(defaults, Timeouts) or not isinstance(minimums, Timeouts):
        problems.append("`default_timeouts` and `minimum_timeouts` must be lifekit.kit.Timeouts")
    else:
        for action in ("restore", "remove", "quickcheck", "recover"):
            default, minimum = getattr(defaults, action), getattr(minimums, action)
            if default < minimum:
                problems.append(
                    f"default {action} timeout {default:g} s is below its minimum {minimum:g} s"
                )
    interval = kit.default_quickcheck_interval
    if not isinstance(interval, int | float) or not interval > 0:
        problems.append(f"default_quickcheck_interval must be > 0 seconds, got {interval!r}")
    if problems:
        raise _RuleFailed("; ".join(problems))
    h.make_resource(h.params)
    if h.missing_params is not None:
        try:
            h.make_resource(h.missing_params)
        except _RuleFailed as exc:
            raise _RuleFailed(f"missing-program params: {exc}") from exc
    return []


async def _results_typed(h: _Harness) -> list[str]:
    notes: list[str] = []
    bad: list[str] = []

    async def check(action: str, *, probe: bool = False) -> None:
        try:
            value = await h.call(action, probe=probe)
        except _RuleFailed as exc:
            notes.append(str(exc))
            return
        if not isinstance(value, Result):
            label = f"{action} (probe)" if probe else action
            bad.append(f"{label} returned {_describe(value)}")

    await h.attempt("remove")
    await check("restore")
    await check("quickcheck", probe=True)
    await check("quickcheck")
    try:
        many = await h.call_many([h.resource])
    except _RuleFailed as exc:
        notes.append(str(exc))
    else:
        if not isinstance(many, Mapping):
            bad.append(f"quickcheck_many returned {type(many).__name__} {many!r}, not a mapping")
        elif set(many) != {h.resource.tag}:
            bad.append(
                f"quickcheck_many returned results for {sorted(many)!r}, "
                f"expected exactly [{h.resource.tag!r}]"
            )
        elif not isinstance(value := many[h.resource.tag], Result):
            bad.append(f"quickcheck_many returned {_describe(value)} for {h.resource.tag!r}")
    await check("recover")
    await check("remove")
    await check("remove")
    await check("remove_fenced")
    if bad:
        raise _RuleFailed("; ".join(bad))
    return notes


async def _restore_twice(h: _Harness) -> list[str]:
    await h.attempt("remove")
    await h.expect("restore", _RUNNING, "first restore (of a stopped resource)")
    await h.expect("restore", _RUNNING, "second restore (of a running resource)")
    await h.expect("quickcheck", _RUNNING, "quickcheck after restoring twice")
    return []


async def _remove_twice(h: _Harness) -> list[str]:
    await h.attempt("remove")
    await h.start("to remove it")
    await h.expect("remove", _STOPPED, "first remove (of a running resource)")
    await h.expect("remove", _STOPPED, "second remove (of a stopped resource)")
    return []


async def _quickcheck_after_remove(h: _Harness) -> list[str]:
    await h.attempt("remove")
    await h.start("before removing it")
    result = await h.call("remove", what="remove after restore")
    if not (isinstance(result, Result) and result.outcome in _STOPPED):
        raise _RuleFailed(f"could not test: remove returned {_describe(result)}")
    await h.expect("quickcheck", _NOT_RUNNING, "quickcheck after remove")
    many = await h.call_many([h.resource])
    if not isinstance(many, Mapping) or h.resource.tag not in many:
        raise _RuleFailed(f"quickcheck_many after remove returned {many!r}")
    _expect(many[h.resource.tag], _NOT_RUNNING, "quickcheck_many after remove")
    return []


async def _quickcheck_program_missing(h: _Harness) -> list[str]:
    if h.missing_params is None:
        raise _RuleFailed(
            "no missing-program params were given: pass missing_params= (in a KitConformance "
            "class, a `missing_params` fixture) with parameters under which the program the "
            "kit manages does not exist, or leave this rule out with rules="
        )
    missing = h.make_resource(h.missing_params)
    what = "quickcheck (probe) with the program missing"
    await h.expect("quickcheck", _NOT_RUNNING, what, missing, probe=True)
    await h.expect("quickcheck", _NOT_RUNNING, "quickcheck with the program missing", missing)
    return []


async def _restore_cancelled_cleanable(h: _Harness) -> list[str]:
    notes: list[str] = []
    await h.attempt("remove")
    started = anyio.current_time()
    await h.start("not cancelled, to time it")
    restore_time = anyio.current_time() - started
    plain = await h.call("remove", what="remove after a plain restore")
    if not (isinstance(plain, Result) and plain.outcome in _STOPPED):
        raise _RuleFailed(
            f"could not test: remove after a plain restore returned {_describe(plain)}"
        )
    baseline = await h.call("quickcheck", what="quickcheck after a plain remove")
    delay = h.settings.cancel_delay
    if delay is None:
        delay = restore_time / 2
    with anyio.move_on_after(delay) as scope:
        await h.attempt("restore")
    if not scope.cancelled_caught:
        notes.append(
            f"restore finished before it was cancelled at {delay:.3g} s; give a smaller "
            "cancel_delay to cancel it midway"
        )
    what = f"after a restore cancelled at {delay:.3g} s"
    removed = await h.expect("remove", _STOPPED, f"remove {what}")
    after = await h.call("quickcheck", what=f"quickcheck {what} and remove")
    if isinstance(baseline, Result) and baseline.outcome is not Outcome.NOT_RUNNING:
        notes.append(
            f"quickcheck says {baseline} even after a clean remove (see rule "
            "'quickcheck-after-remove'), so leftovers of the cancelled restore cannot be seen"
        )
        return notes
    if isinstance(after, Result) and after.outcome is not Outcome.NOT_RUNNING:
        raise _RuleFailed(
            f"{what}, remove returned {removed} but quickcheck then said {after} (after a clean "
            "remove it says not_running): the cancelled restore left something remove cannot "
            "clean"
        )
    _expect(after, _NOT_RUNNING, f"quickcheck {what} and remove")
    return notes


async def _timeouts_honoured(h: _Harness) -> list[str]:
    grace = h.settings.cancel_grace

    async def cancelled_at(action: str, prepare: str, deadline: float) -> None:
        await h.attempt(prepare)
        started = anyio.current_time()
        with anyio.move_on_after(deadline):
            await h.attempt(action)
        late = anyio.current_time() - started - deadline
        if late > grace:
            raise _RuleFailed(
                f"{action} cancelled after {deadline:.3g} s returned {late:.2f} s later "
                f"(allowed: {grace:g} s); the runtime cancels an action at its timeout and it "
                "must stop at once: do not shield it (anyio.CancelScope(shield=True)) around "
                "anything that waits"
            )

    for action in ("restore", "quickcheck", "recover", "remove"):
        # restore starts from a stopped resource, the others from a running one.
        prepare = "remove" if action == "restore" else "restore"
        await cancelled_at(action, prepare, 0.0)
        await h.attempt(prepare)
        started = anyio.current_time()
        await h.attempt(action)
        await cancelled_at(action, prepare, (anyio.current_time() - started) / 2)
    await h.attempt("remove")
    return []


_RULE_FUNCTIONS: dict[str, Callable[[_Harness], Awaitable[list[str]]]] = {
    "schema-valid": _schema_valid,
    "results-typed": _results_typed,
    "restore-twice": _restore_twice,
    "remove-twice": _remove_twice,
    "quickcheck-after-remove": _quickcheck_after_remove,
    "quickcheck-program-missing": _quickcheck_program_missing,
    "restore-cancelled-cleanable": _restore_cancelled_cleanable,
    "timeouts-honoured": _timeouts_honoured,
}


def select_rules(rules: Iterable[str] | None) -> tuple[Rule, ...]:
    """The rules named by id (all of them for ``None``), in :data:`RULES` order.

    :raises ValueError: an id is not a rule's (the message lists the valid ones).
    """
    if rules is None:
        return RULES
    if isinstance(rules, str):
        raise TypeError(
            f"rules must be a list of rule ids, got the string {rules!r}; write rules=[{rules!r}]"
        )
    wanted = list(rules)
    unknown = [rule_id for rule_id in wanted if rule_id not in _RULES_BY_ID]
    if unknown:
        raise ValueError(
            f"unknown conformance rule(s) {', '.join(map(repr, unknown))}; "
            f"valid rules: {', '.join(_RULES_BY_ID)}"
        )
    return tuple(rule for rule in RULES if rule.id in wanted)


def _fresh(source: ParamsSource) -> Mapping[str, Any]:
    return source() if callable(source) else source


async def _run_rule(
    rule: Rule,
    kit: Kit,
    node: NodeContext,
    *,
    params: ParamsSource,
    missing_params: ParamsSource | None,
    settings: _Settings,
) -> RuleResult:
    started = anyio.current_time()
    harness = _Harness(
        kit,
        node,
        params=_fresh(params),
        missing_params=None if missing_params is None else _fresh(missing_params),
        settings=settings,
    )
    try:
        notes = await _RULE_FUNCTIONS[rule.id](harness)
    except _RuleFailed as exc:
        return RuleResult(rule, False, str(exc), duration=anyio.current_time() - started)
    finally:
        # Leave nothing running, whatever the rule found (the result is the rules' business).
        if rule.id != "schema-valid":
            await harness.attempt("remove")
    return RuleResult(rule, True, notes=tuple(notes), duration=anyio.current_time() - started)


async def _open(kit: Kit, node: NodeContext) -> str | None:
    try:
        await kit.open(node)
    except Exception as exc:  # noqa: BLE001 - reported as a finding about the kit
        return f"{type(kit).__name__}.open raised {type(exc).__name__}: {exc}"
    return None


async def _close(kit: Kit) -> str | None:
    try:
        await kit.close()
    except Exception as exc:  # noqa: BLE001 - reported as a finding about the kit
        return f"{type(kit).__name__}.close raised {type(exc).__name__}: {exc}"
    return None


class _Run:
    """The rules of one :func:`run_conformance` call, and what they found."""

    def __init__(
        self, *, params: ParamsSource, missing_params: ParamsSource | None, settings: _Settings
    ) -> None:
        self.params = params
        self.missing_params = missing_params
        self.settings = settings
        self.kind = ""
        self.results: list[RuleResult] = []
        self.errors: list[str] = []

    async def rule(self, rule: Rule, kit: Kit, node: NodeContext) -> None:
        self.results.append(
            await _run_rule(
                rule,
                kit,
                node,
                params=self.params,
                missing_params=self.missing_params,
                settings=self.settings,
            )
        )

    async def with_kit(self, kit: Kit, node: NodeContext, rules: Sequence[Rule]) -> None:
        """One kit object for every rule: opened once and closed once, as on a node."""
        self.kind = kit.kind
        error = await _open(kit, node)
        if error is not None:
            self.errors.append(error)
            self.results += [
                RuleResult(r, False, f"could not open the kit: {error}") for r in rules
            ]
            return
        try:
            for rule in rules:
                await self.rule(rule, kit, node)
        finally:
            if (error := await _close(kit)) is not None:
                self.errors.append(error)

    async def with_factory(
        self,
        factory: Callable[[], Kit],
        node_for: Callable[[Rule], NodeContext],
        rules: Sequence[Rule],
    ) -> None:
        """A fresh kit object (and state directory) for each rule."""
        for rule in rules:
            kit = factory()
            if not isinstance(kit, Kit):
                raise TypeError(
                    f"the kit factory {factory!r} returned {kit!r}, not a lifekit.kit.Kit"
                )
            self.kind = kit.kind
            node = node_for(rule)
            error = await _open(kit, node)
            if error is not None:
                self.errors.append(error)
                self.results.append(RuleResult(rule, False, f"could not open the kit: {error}"))
                continue
            try:
                await self.rule(rule, kit, node)
            finally:
                if (error := await _close(kit)) is not None:
                    self.errors.append(error)


async def run_conformance(
    kit: KitSource,
    *,
    params: ParamsSource,
    missing_params: ParamsSource | None = None,
    host: Host | None = None,
    tag: str = "conformance",
    rules: Iterable[str] | None = None,
    state_dir: str | Path | None = None,
    node_name: str | None = None,
    timeouts: Timeouts | None = None,
    cancel_delay: float | None = None,
    cancel_grace: float = 2.0,
) -> ConformanceReport:
    """Run the conformance rules against a kit's real actions and report every rule.

    :param kit: a kit object (opened once, used for every rule, closed at the end, as a node
        does) or a factory such as the kit class (a fresh, opened and closed kit per rule).
    :param params: the parameters of the resource the rules drive, or a callable returning
        fresh ones for each rule (so a rule's leftovers cannot affect the next one).
    :param missing_params: parameters under which the managed program is missing (or a
        callable returning them); needed by ``quickcheck-program-missing``.
    :param host: where the kit's commands run (default: :class:`~lifekit.kit.LocalHost`); a
        lab node works the same. The kit sees it as ``NodeContext.host``.
    :param tag: the resource's tag.
    :param rules: ids of the rules to run (default: all of :data:`RULES`).
    :param state_dir: the kit's state directory (default: a temporary one, removed after).
    :param node_name: the node's name (default: the host's name).
    :param timeouts: per-action timeouts (default: the kit's ``default_timeouts``); an action
        running past its timeout fails the rule.
    :param cancel_delay: seconds after which ``restore-cancelled-cleanable`` cancels its
        restore (default: half the time an uncancelled restore took).
    :param cancel_grace: seconds a cancelled action may take to return
        (``timeouts-honoured``).
    :raises ValueError: an unknown rule id.
    :raises TypeError: ``kit`` or ``host`` is not what it should be.
    """
    selected = select_rules(rules)
    host = host if host is not None else LocalHost()
    if not isinstance(host, Host):
        raise TypeError(
            f"host must implement lifekit.kit.Host (a name, async run and spawn), got {host!r}"
        )
    if not isinstance(kit, Kit) and not callable(kit):
        raise TypeError(f"kit must be a lifekit.kit.Kit or a callable returning one, got {kit!r}")
    if not cancel_grace > 0:
        raise ValueError(f"cancel_grace must be > 0 seconds, got {cancel_grace!r}")
    settings = _Settings(
        tag=tag, timeouts=timeouts, cancel_delay=cancel_delay, cancel_grace=cancel_grace
    )
    owned_dir = state_dir is None
    base = Path(tempfile.mkdtemp(prefix="lifekit-conformance-") if owned_dir else str(state_dir))
    name = node_name or host.name

    def node_for(directory: Path) -> NodeContext:
        directory.mkdir(parents=True, exist_ok=True)
        return NodeContext(
            name=name, host=host, state_dir=directory, log=logging.getLogger("lifekit.kit")
        )

    run = _Run(params=params, missing_params=missing_params, settings=settings)
    try:
        if isinstance(kit, Kit):
            await run.with_kit(kit, node_for(base), selected)
        else:
            await run.with_factory(kit, lambda rule: node_for(base / rule.id), selected)
    finally:
        if owned_dir:
            # The kit's state files are small; removing them cannot block for long.
            shutil.rmtree(base, ignore_errors=True)
    return ConformanceReport(
        kind=run.kind, host=host.name, results=tuple(run.results), errors=tuple(run.errors)
    )
