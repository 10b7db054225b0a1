# SPDX-License-Identifier: Apache-2.0
"""The INFO line each vLLM process logs: plugin, version, decision, reason
with its facts, and what happened to each target."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .about import PLUGIN

if TYPE_CHECKING:
    from .patching import Outcome
    from .policy import Decision


def target_part(outcomes: Iterable[Outcome], pending: Iterable[str] = ()) -> str:
    """What the line says about the targets; absent ones are left out."""
    parts = [describe(o) for o in outcomes if o.state not in ("absent", "untouched")]
    waiting = sorted(name.rsplit(".", 1)[-1] for name in pending)
    if waiting:
        parts.append(f"checked on import: {', '.join(waiting)}")
    return ", ".join(parts) if parts else "no TRT-LLM monolithic target in this vLLM"


def describe(outcome: Outcome) -> str:
    """``TrtLlmFp8ExpertsMonolithic +Renormalize +RenormalizeNaive``,
    ``TrtLlmBf16ExpertsMonolithic native``, ``X unrecognised (left alone: ...)``."""
    if outcome.state == "patched":
        return f"{outcome.target.name} {outcome.detail}"
    if outcome.detail:
        return f"{outcome.target.name} {outcome.state} ({outcome.detail})"
    return f"{outcome.target.name} {outcome.state}"


def decision_line(
    version: str,
    decision: Decision,
    outcomes: Iterable[Outcome] = (),
    pending: Iterable[str] = (),
) -> str:
    """The one INFO line each process logs, e.g. ``moe_routing 0.1.0: enable
    (flashinfer-python 0.6.7 >= 0.6.7; GPU 0-7 sm_100) - TrtLlmFp8ExpertsMonolithic
    +Renormalize +RenormalizeNaive``."""
    head = f"{PLUGIN} {version}: {decision.action} ({decision.reason})"
    tail = target_part(outcomes, pending) if decision.acts else "vLLM unchanged"
    line = f"{head} - {tail}"
    for note in decision.notes:
        line += f"; note: {note}"
    return line


def import_line(outcomes: Iterable[Outcome]) -> str:
    """The short line logged when a target module is imported after the
    decision line."""
    return f"{PLUGIN}: on import: {target_part(outcomes)}"
