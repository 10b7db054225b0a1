# SPDX-License-Identifier: Apache-2.0
"""Bringing one target in line with the decision: locate its check, choose
and install the replacements (``patches``), verify them, and say what
happened.

``enable`` widens the routing check where it lacks a Renormalize method. Each
in-range catalogue entry whose kernel is behind a target, and whose routing
methods vLLM lets onto it, is planned there: ``guard`` and ``warn`` entries
put a layer check in front of the target (``is_supported_config`` of the
monolithic classes; the module functions of vLLM 0.16 - 0.19), which judges
each MoE layer vLLM builds; a ``fix`` entry applies its backport where the
plugin recognises vLLM's code, and guards where it does not. A target
already answering what the decision wants is ``native`` and left as it is.
Each target is patched on its own: one that cannot be patched is left as
vLLM wrote it, the others are still patched.

The layer classes (``targets.LAYER_CLASSES``) get the constructor that makes
the layer being built visible to the layer checks.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import checks, layers, patches
from .bugs import RENORMALIZE_METHODS, KnownBug
from .checks import RoutingCheck, Unrecognised, is_ours
from .decision import Decision
from .errors import describe_error
from .patches import Patch, Patches
from .policy import LayerCheck, Planned
from .targets import LayerClass, Target

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    from .policy import Done

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
    """What happened to one target (or layer class) in this process. Mutable:
    undoing a patch makes it ``untouched`` again. A plain class: a dataclass
    is generated with ``exec`` when its module is imported, in every vLLM
    process that patches."""

    __slots__ = ("before", "check", "detail", "patch", "state", "target")

    def __init__(
        self,
        target: Target | LayerClass,
        state: State,
        detail: str = "",
        before: dict[str, tuple[str, ...]] | None = None,
        patch: Patch | Patches | None = None,
        check: LayerCheck | None = None,
    ) -> None:
        self.target = target
        self.state = state
        self.detail = detail
        self.before = before if before is not None else {}
        self.patch = patch
        self.check = check  # the entries judged for each layer at this target

    def __repr__(self) -> str:
        return f"Outcome({self.target.name!r}, {self.state!r}, {self.detail!r})"

    @property
    def planned(self) -> tuple[Planned, ...]:
        return self.check.planned if self.check is not None else ()


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
    try:
        return _bring_in_line(found, before, decision)
    except Unrecognised as exc:
        return Outcome(target, "unrecognised", f"left alone: {exc}", before)
    except Exception as exc:
        return Outcome(target, "failed", f"left alone: {describe_error(exc)}", before)


def applies(bug: KnownBug, found: RoutingCheck, accepted: set[str]) -> bool:
    """Whether an in-range catalogue entry can hit layers at this target: its
    kernel is behind the target, vLLM's own check lets a layer of one of its
    routing methods in (an entry about every method: any layer), and, for a
    bug in vLLM's code, the code that calls the kernel drops the value (or
    cannot be read, where the entry's rule says so: ``VllmDefect.unreadable``)."""
    if found.target not in bug.targets:
        return False
    if bug.layers.methods and not accepted.intersection(bug.layers.methods):
        return False
    if bug.defect is not None:
        call = bug.defect.callers.get(found.target)
        if call is None:
            return False
        probe = checks.probe_call(found.module, call, bug.defect.keyword)
        return probe == "drops" or (
            probe == "unknown" and bug.defect.unreadable == "affected"
        )
    return True


#: What is done for a layer an entry hits, from the action asked for it.
_DONE: dict[str, Done] = {"guard": "guarded", "warn": "warned", "fix": "fixed"}


def _backport(found: RoutingCheck, bug: KnownBug) -> Patch | None:
    """The entry's backport installed at this target, or None where the
    plugin has none or does not recognise vLLM's code there."""
    if bug.defect is None or found.target not in bug.defect.backported:
        return None
    path = bug.defect.callers[found.target].path
    make = patches.BACKPORTS.get(path)
    owner_name, _, attr = path.rpartition(".")
    if make is None or owner_name != found.target.owner:
        return None
    try:
        replacement = make(getattr(found.owner, attr))
    except Unrecognised:
        return None
    return patches.install(found.owner, attr, replacement, static=False)


def _bring_in_line(
    found: RoutingCheck, before: dict[str, tuple[str, ...]], decision: Decision
) -> Outcome:
    target = found.target
    accepted = {m for names in before.values() for m in names}
    lacking: list[str] = []
    if decision.action == "enable" and before:
        lacking = [
            m
            for m in RENORMALIZE_METHODS
            if any(m not in names for names in before.values())
        ]
    parts: list[Patch] = []
    details: list[str] = []
    try:
        planned: list[Planned] = []
        for finding in decision.acting:
            bug = finding.bug
            if not applies(bug, found, accepted):
                continue
            done, hidden_done = _DONE[finding.action], _DONE[finding.hidden_action]
            if "fixed" in (done, hidden_done):
                backport = _backport(found, bug)
                if backport is not None:
                    parts.append(backport)
                    details.append(f"{backport.attr} backported")
                fix: Done = "fixed" if backport else "guarded"
                done = fix if done == "fixed" else done
                hidden_done = fix if hidden_done == "fixed" else hidden_done
            planned.append(Planned(bug, done, hidden_done))
        refuses = decision.refuses_renormalize and bool(
            accepted.intersection(RENORMALIZE_METHODS)
        )
        if lacking:
            wanted = tuple(getattr(found.methods, m) for m in RENORMALIZE_METHODS)
            replacement = patches.widened_routing_check(target, found.check, wanted)
            parts.append(
                patches.install(found.owner, target.check, replacement, static=True)
            )
            details.append(" ".join(f"+{m}" for m in lacking))
            _verified(found, before, parts[-1])
        check = None
        if planned or refuses:
            check = LayerCheck(tuple(planned), refuses, decision.flashinfer)
            parts.append(_layer_check(found, check))
            details.append("checks each layer")
    except BaseException:
        for part in reversed(parts):
            part.undo()
        raise
    if not parts:
        return Outcome(target, "native", "", before)
    patch: Patch | Patches = parts[0] if len(parts) == 1 else Patches(tuple(parts))
    return Outcome(target, "patched", ", ".join(details), before, patch, check)


def _layer_check(found: RoutingCheck, check: LayerCheck) -> Patch:
    """Put the layer check in front of the target: the class's
    ``is_supported_config``, or the module function itself."""
    target = found.target
    if target.owner is None:
        replacement = patches.layer_routing_function(
            target, found.check, check, found.scheme_of
        )
        return patches.install(found.owner, target.check, replacement, static=False)
    original = _config_check(found)
    replacement = patches.layer_config_check(target, original, check, found.scheme_of)
    return patches.install(found.owner, "is_supported_config", replacement, static=True)


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


def _verified(
    found: RoutingCheck, before: dict[str, tuple[str, ...]], patch: Patch
) -> None:
    """Re-read the widened routing check; undo if it does not answer as
    planned (an unexpected check must never be left half-changed)."""
    try:
        table = found.reread().accepted()
    except Exception as exc:
        patch.undo()
        raise Unrecognised(f"patched check raised {describe_error(exc)}") from exc
    if set(table) != set(before):
        patch.undo()
        raise Unrecognised("patched check changed the supported quant schemes")


#: What a layer class left alone means for the layer checks.
_BLIND = "the known bugs are judged without the layers' own values"


def watch_layers(
    layer_class: LayerClass,
    module: ModuleType,
    on_built: Callable[[layers.Build], None],
) -> Outcome:
    """Make the layers ``layer_class`` builds visible to the layer checks.
    Never raises."""
    try:
        owner = checks.locate_layer_class(layer_class, module)
    except Unrecognised as exc:
        return Outcome(layer_class, "unrecognised", f"left alone: {exc}; {_BLIND}")
    except Exception as exc:
        return Outcome(
            layer_class,
            "failed",
            f"left alone: probing raised {describe_error(exc)}; {_BLIND}",
        )
    if owner is None:
        return Outcome(layer_class, "absent")
    if is_ours(vars(owner)["__init__"]):
        return Outcome(layer_class, "patched", "already patched in this process")
    try:
        replacement = patches.layer_constructor(vars(owner)["__init__"], on_built)
        patch = patches.install(owner, "__init__", replacement, static=False)
    except Exception as exc:
        detail = f"left alone: {describe_error(exc)}; {_BLIND}"
        return Outcome(layer_class, "failed", detail)
    return Outcome(layer_class, "patched", "layers visible", patch=patch)


def accepted_after(outcome: Outcome) -> dict[str, tuple[str, ...]] | None:
    """What the target's routing check accepts now per quant scheme, or None
    when its module is not loaded (the layer check refuses some of these for
    the layers its entries hit: ``Outcome.planned``)."""
    if not isinstance(outcome.target, Target):
        return None
    module = sys.modules.get(outcome.target.module)
    if module is None:
        return None
    found = checks.locate(outcome.target, module)
    if found is None:
        return None
    if found.target.owner is None and outcome.patch is not None:
        # The module function is the layer check itself: ask vLLM's own.
        original = getattr(found.check, checks.MARKER, found.check)
        found = RoutingCheck(
            found.target, module, found.owner, original, found.methods, found.schemes
        )
    return found.accepted()


def preview(
    target: Target, module: ModuleType, decision: Decision
) -> tuple[Outcome, dict[str, tuple[str, ...]] | None]:
    """What ``apply`` would do to ``target`` and what its routing check would
    then accept, with vLLM left exactly as it was (``status`` shows it)."""
    outcome = apply(target, module, decision)
    try:
        after = accepted_after(outcome) if outcome.before else None
    finally:
        if outcome.patch is not None:
            outcome.patch.undo()
    return outcome, after
