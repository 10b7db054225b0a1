# SPDX-License-Identifier: Apache-2.0
"""The INFO line each vLLM process logs: plugin, version, decision, reason
with its facts, what happened to each target, and the known bugs that reach
this install with what was done about each; and the WARNING for a known bug
the plugin only warns about."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .about import PLUGIN
from .envs import KNOWN_BUGS_VAR

if TYPE_CHECKING:
    from .patching import Outcome
    from .policy import Decision, Finding

#: How the line says what was done about a known bug that reaches.
DONE = {"guard": "guarded", "warn": "warned", "none": "ignored"}


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


def reached(decision: Decision, outcomes: Iterable[Outcome]) -> list[Finding]:
    """The decision's findings that reach a target of these outcomes, in
    catalogue order."""
    ids = {bug_id for outcome in outcomes for bug_id in outcome.bugs}
    return [f for f in decision.findings if f.bug.id in ids]


def bugs_part(findings: Iterable[Finding]) -> str:
    """``known bugs: flashinfer#3803 warned, vllm#43769 guarded``, or ``""``."""
    parts = [f"{f.bug.id} {DONE[f.action]}" for f in findings]
    return f"known bugs: {', '.join(parts)}" if parts else ""


def warning(findings: Iterable[Finding]) -> str:
    """The WARNING for the known bugs that reach and are only warned about:
    one line, however many."""
    parts = []
    guardable = []
    for finding in findings:
        bug = finding.bug
        fixed = f"; fixed in FlashInfer {bug.fixed_in_text}" if bug.fixed_in else ""
        parts.append(f"{bug.id} ({bug.wrong}{fixed})")
        if bug.guardable:
            guardable.append(bug.id)
    line = f"{PLUGIN}: known bugs reach this install, vLLM left unchanged for them: "
    line += ", ".join(parts)
    if guardable:
        line += (
            f"; {KNOWN_BUGS_VAR}=<id>=guard keeps the layers a routing bug reaches "
            f"off the fused routing ({', '.join(guardable)})"
        )
    return line + "; docs/known-bugs.md"


def decision_line(
    version: str,
    decision: Decision,
    outcomes: Iterable[Outcome] = (),
    pending: Iterable[str] = (),
) -> str:
    """The one INFO line each process logs, e.g. ``moe_routing 0.1.0: enable
    (flashinfer-python 0.6.7 >= 0.6.7; GPU 0-7 sm_100) - TrtLlmFp8ExpertsMonolithic
    +Renormalize +RenormalizeNaive``."""
    outcomes = list(outcomes)
    head = f"{PLUGIN} {version}: {decision.action} ({decision.reason})"
    tail = target_part(outcomes, pending) if decision.acts else "vLLM unchanged"
    line = f"{head} - {tail}"
    known = bugs_part(reached(decision, outcomes))
    if known:
        line += f"; {known}"
    for note in decision.notes:
        line += f"; note: {note}"
    return line


def import_line(outcomes: Iterable[Outcome], decision: Decision) -> str:
    """The short line logged when a target module is imported after the
    decision line."""
    outcomes = list(outcomes)
    line = f"{PLUGIN}: on import: {target_part(outcomes)}"
    known = bugs_part(reached(decision, outcomes))
    return f"{line}; {known}" if known else line
