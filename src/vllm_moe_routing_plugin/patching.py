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
from types import ModuleType
from typing import Any, Literal

from . import checks, patches
from .bugs import RENORMALIZE_METHODS
from .checks import RoutingCheck, Unrecognised, is_ours
from .errors import describe_error
from .patches import Patch
from .policy import Decision, Guard
from .targets import Target

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

    __slots__ = ("before", "detail", "patch", "state", "target")

    def __init__(
        self,
        target: Target,
        state: State,
        detail: str = "",
        before: dict[str, tuple[str, ...]] | None = None,
        patch: Patch | None = None,
    ) -> None:
        self.target = target
        self.state = state
        self.detail = detail
        self.before = before if before is not None else {}
        self.patch = patch

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
    if is_ours(vars(found.owner).get(target.check)) or (
        target.owner is not None
        and is_ours(vars(found.owner).get("is_supported_config"))
    ):
        return Outcome(target, "patched", "already patched in this process", before)
    wanted = tuple(getattr(found.methods, m) for m in RENORMALIZE_METHODS)
    try:
        if decision.action == "enable":
            return _enable(found, before, wanted)
        assert decision.guard is not None
        return _guard(found, before, wanted, decision.guard)
    except Unrecognised as exc:
        return Outcome(target, "unrecognised", f"left alone: {exc}", before)
    except Exception as exc:
        return Outcome(target, "failed", f"left alone: {describe_error(exc)}", before)


def _enable(
    found: RoutingCheck, before: dict[str, tuple[str, ...]], wanted: tuple[Any, ...]
) -> Outcome:
    target = found.target
    lacking = sorted(
        {m for names in before.values() for m in RENORMALIZE_METHODS if m not in names},
        key=RENORMALIZE_METHODS.index,
    )
    if not before or not lacking:
        return Outcome(target, "native", "", before)
    replacement = patches.widened_routing_check(target, found.check, wanted)
    patch = patches.install(
        found.owner, target.check, replacement, static=target.owner is not None
    )
    detail = " ".join(f"+{m}" for m in lacking)
    return _verified(Outcome(target, "patched", detail, before, patch), found)


def _guard(
    found: RoutingCheck,
    before: dict[str, tuple[str, ...]],
    wanted: tuple[Any, ...],
    guard: Guard,
) -> Outcome:
    target = found.target
    accepted = sorted(
        {m for names in before.values() for m in RENORMALIZE_METHODS if m in names},
        key=RENORMALIZE_METHODS.index,
    )
    if not guard.everywhere:
        # Only the catalogue's entries whose kernels this target calls.
        reaching = tuple(bug for bug in guard.bugs if target.name in bug.targets)
        if not reaching:
            return Outcome(target, "native", "", before)
        guard = Guard(reaching, guard.flashinfer)
    if not accepted:
        return Outcome(target, "native", "", before)
    refused = " ".join(f"-{m}" for m in accepted)
    if target.owner is None:
        replacement = patches.narrowed_routing_function(target, found.check, wanted)
        patch = patches.install(found.owner, target.check, replacement, static=False)
        scope = "all shapes" if guard.everywhere else "all shapes: no shape visible"
        return _verified(
            Outcome(target, "patched", f"{refused} ({scope})", before, patch), found
        )
    raw = inspect.getattr_static(found.owner, "is_supported_config", None)
    if not isinstance(raw, staticmethod):
        raise Unrecognised(f"{target.owner}.is_supported_config is not a staticmethod")
    original = found.owner.is_supported_config
    parameters = list(inspect.signature(original).parameters)
    if len(parameters) < 2 or parameters[0] != "cls":
        raise Unrecognised(
            f"{target.owner}.is_supported_config does not take cls first"
        )
    replacement = patches.guarded_config_check(original, wanted, guard)
    patch = patches.install(
        found.owner, "is_supported_config", replacement, static=True
    )
    return Outcome(target, "patched", f"{refused} for {guard.scope}", before, patch)


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
    Renormalize methods (inside the guard's envelope, or everywhere)."""
    module = sys.modules.get(outcome.target.module)
    if module is None:
        return None
    found = checks.locate(outcome.target, module)
    if found is None:
        return None
    table = found.accepted()
    if outcome.patch is not None and outcome.patch.attr == "is_supported_config":
        table = {
            scheme: tuple(m for m in names if m not in RENORMALIZE_METHODS)
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
