# SPDX-License-Identifier: Apache-2.0
"""Bringing one target in line with the decision: locate its check, choose
and install the replacement (``patches``), verify it, and say what happened.

``enable`` widens the routing check where it lacks a Renormalize method;
``guard`` wraps ``is_supported_config`` of the monolithic classes (layer-shape
aware), or narrows the module functions of vLLM 0.16 - 0.19 (which see no
shape). A target already answering what the decision wants is ``native`` and
left as it is. Each target is patched on its own: one that cannot be patched
is left as vLLM wrote it, the others are still patched.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import checks, patches
from .bugs import RENORMALIZE_METHODS, KnownBug
from .checks import RoutingCheck, Unrecognised, is_ours
from .errors import describe_error
from .patches import Patch, Patches
from .policy import Decision
from .targets import Target

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    #: What happened to a target in this process (the ``state`` of ``status``).
    State = Literal[
        "patched",
        "native",
        "absent",
        "not-probed",
        "untouched",
        "unrecognised",
        "failed",
    ]


class Outcome:
    """What happened to one target in this process. Mutable: undoing a patch
    makes it ``untouched`` again. A plain class: a dataclass is generated with
    ``exec`` when its module is imported, in every vLLM process that patches."""

    __slots__ = ("before", "bugs", "detail", "patch", "refused", "state", "target")

    def __init__(
        self,
        target: Target,
        state: State,
        detail: str = "",
        before: dict[str, tuple[str, ...]] | None = None,
        patch: Patch | Patches | None = None,
        refused: tuple[str, ...] = (),
        bugs: tuple[str, ...] = (),
    ) -> None:
        self.target = target
        self.state = state
        self.detail = detail
        self.before = before if before is not None else {}
        self.patch = patch
        self.refused = refused  # methods ``is_supported_config`` now refuses
        self.bugs = bugs  # ids of the catalogue entries that reach this target

    def __repr__(self) -> str:
        return f"Outcome({self.target.name!r}, {self.state!r}, {self.detail!r})"


def apply(target: Target, module: ModuleType, decision: Decision) -> Outcome:
    """Bring one target in line with the decision. Never raises."""
    try:
        found = checks.locate(target, module)
    except Unrecognised as exc:
        return Outcome(target, "unrecognised", f"left alone: {exc}")
    except Exception as exc:
        return Outcome(
            target, "failed", f"left alone: probing raised {describe_error(exc)}"
        )
    if found is None:
        return Outcome(target, "absent")
    try:
        before = found.accepted()
    except Exception as exc:
        return Outcome(
            target,
            "unrecognised",
            f"left alone: its check raised {describe_error(exc)}",
        )
    if not decision.acts:
        return Outcome(target, "untouched", before=before)
    accepted = {m for names in before.values() for m in names}
    reaching = _reaching(found, accepted, decision)
    bugs = tuple(
        f.bug.id for f in decision.findings if f.affected and f.bug.id in reaching
    )
    if is_ours(vars(found.owner).get(target.check)) or (
        target.owner is not None
        and is_ours(vars(found.owner).get("is_supported_config"))
    ):
        return Outcome(
            target, "patched", "already patched in this process", before, bugs=bugs
        )
    try:
        outcome = _bring_in_line(found, before, accepted, decision, reaching)
    except Unrecognised as exc:
        outcome = Outcome(target, "unrecognised", f"left alone: {exc}", before)
    except Exception as exc:
        outcome = Outcome(
            target, "failed", f"left alone: {describe_error(exc)}", before
        )
    outcome.bugs = bugs
    return outcome


def reaches(bug: KnownBug, found: RoutingCheck, accepted: set[str]) -> bool:
    """Whether a catalogue entry reaches this target, given the routing methods
    vLLM's own check accepts for it: the entry names the target, and vLLM lets
    a layer of one of its routing methods in (a bug that is not a routing bug
    reaches every layer of the target); for a bug in vLLM's code, probing the
    code finds it."""
    if found.target.name not in bug.targets:
        return False
    if bug.methods and not accepted.intersection(bug.methods):
        return False
    if bug.defect is not None:
        caller = bug.defect.callers.get(found.target.name)
        return checks.lacks_keyword(found.module, caller, bug.defect.keyword)
    return True


def _reaching(found: RoutingCheck, accepted: set[str], decision: Decision) -> set[str]:
    """The ids of the entries that reach this target, each probed once: the
    decision's findings this FlashInfer and GPU have, and the entries its
    guard holds."""
    candidates = {f.bug.id: f.bug for f in decision.findings if f.affected}
    if decision.guard is not None:
        candidates.update((bug.id, bug) for bug in decision.guard.bugs)
    return {
        bug_id for bug_id, bug in candidates.items() if reaches(bug, found, accepted)
    }


def _bring_in_line(
    found: RoutingCheck,
    before: dict[str, tuple[str, ...]],
    accepted: set[str],
    decision: Decision,
    reaching: set[str],
) -> Outcome:
    target = found.target
    lacking: list[str] = []
    if decision.action == "enable" and before:
        lacking = [
            m
            for m in RENORMALIZE_METHODS
            if any(m not in names for names in before.values())
        ]
    guard = decision.guard
    refused: tuple[str, ...] = ()
    if guard is not None:
        guard = guard.only(
            tuple(bug for bug in guard.bugs if bug.guardable and bug.id in reaching)
        )
        refused = tuple(m for m in guard.methods if m in accepted)
    if not lacking and not refused:
        return Outcome(target, "native", "", before)
    assert guard is not None or not refused
    if target.owner is None:
        assert guard is not None  # module functions accept Renormalize natively
        values = tuple(getattr(found.methods, m) for m in refused)
        narrowed = patches.narrowed_routing_function(target, found.check, values)
        single = patches.install(found.owner, target.check, narrowed, static=False)
        scope = "all shapes" if guard.forced else "all shapes: no shape visible"
        detail = f"{' '.join(f'-{m}' for m in refused)} ({scope})"
        return _verified(Outcome(target, "patched", detail, before, single), found)
    parts: list[Patch] = []
    details: list[str] = []
    try:
        if lacking:
            wanted = tuple(getattr(found.methods, m) for m in RENORMALIZE_METHODS)
            replacement = patches.widened_routing_check(target, found.check, wanted)
            parts.append(
                patches.install(found.owner, target.check, replacement, static=True)
            )
            details.append(" ".join(f"+{m}" for m in lacking))
            _verified(Outcome(target, "patched", "", before, parts[-1]), found)
        if refused:
            assert guard is not None
            original = _config_check(found)
            replacement = patches.guarded_config_check(original, guard)
            parts.append(
                patches.install(
                    found.owner, "is_supported_config", replacement, static=True
                )
            )
            details.append(
                f"{' '.join(f'-{m}' for m in refused)} for {guard.scope_of(refused)}"
            )
    except BaseException:
        for part in reversed(parts):
            part.undo()
        raise
    patch: Patch | Patches = parts[0] if len(parts) == 1 else Patches(tuple(parts))
    return Outcome(target, "patched", " ".join(details), before, patch, refused=refused)


def _config_check(found: RoutingCheck) -> Callable[..., Any]:
    """The class's ``is_supported_config``, checked to be the static method
    vLLM declares (``cls`` first), bound as vLLM calls it."""
    target = found.target
    raw = inspect.getattr_static(found.owner, "is_supported_config", None)
    if not isinstance(raw, staticmethod):
        raise Unrecognised(f"{target.owner}.is_supported_config is not a staticmethod")
    original: Callable[..., Any] = found.owner.is_supported_config
    parameters = list(inspect.signature(original).parameters)
    if len(parameters) < 2 or parameters[0] != "cls":
        raise Unrecognised(
            f"{target.owner}.is_supported_config does not take cls first"
        )
    return original


def _verified(outcome: Outcome, found: RoutingCheck) -> Outcome:
    """Re-read the patched routing check; undo if it does not answer as planned
    (an unexpected check must never be left half-changed)."""
    assert outcome.patch is not None
    try:
        table = found.reread().accepted()
    except Exception as exc:
        outcome.patch.undo()
        raise Unrecognised(f"patched check raised {describe_error(exc)}") from exc
    if set(table) != set(outcome.before):
        outcome.patch.undo()
        raise Unrecognised("patched check changed the supported quant schemes")
    return outcome


def accepted_after(outcome: Outcome) -> dict[str, tuple[str, ...]] | None:
    """What the target now accepts per quant scheme for the layers the
    decision concerns, or None when its module is not loaded. A guarded
    ``is_supported_config`` leaves the routing check as it was but refuses the
    guarded methods (inside the entries' envelopes, or everywhere)."""
    module = sys.modules.get(outcome.target.module)
    if module is None:
        return None
    found = checks.locate(outcome.target, module)
    if found is None:
        return None
    table = found.accepted()
    if outcome.patch is not None and "is_supported_config" in outcome.patch.attrs:
        table = {
            scheme: tuple(m for m in names if m not in outcome.refused)
            for scheme, names in table.items()
        }
    return table


def preview(
    target: Target, module: ModuleType, decision: Decision
) -> tuple[Outcome, dict[str, tuple[str, ...]] | None]:
    """What ``apply`` would do to ``target`` and what it would then accept,
    with vLLM left exactly as it was (``status`` shows it)."""
    outcome = apply(target, module, decision)
    try:
        after = accepted_after(outcome) if outcome.before else None
    finally:
        if outcome.patch is not None:
            outcome.patch.undo()
    return outcome, after
