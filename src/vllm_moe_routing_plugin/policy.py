# SPDX-License-Identifier: Apache-2.0
"""Facts + settings + the known-bug catalogue -> decisions.

Two decisions, both pure: ``decide`` once per process (the README's table,
"What the plugin decides", and which catalogue entries are in range of this
install, with the action for each), and ``LayerCheck.judge`` once per MoE
layer vLLM builds (which in-range entries hit that layer, and so whether its
fused routing is refused). Imports nothing from vLLM or FlashInfer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from .bugs import (
    KNOWN_BUGS,
    NEWEST_PROVEN_FLASHINFER,
    RENORMALIZE_METHODS,
    KnownBug,
    by_id,
    release_text,
)
from .decision import Decision, Finding, describe_gpus, not_acting
from .envs import KNOWN_BUGS_VAR, RENORMALIZE_VAR, Settings
from .facts import FLASHINFER, FLASHINFER_CUBIN, FLASHINFER_JIT_CACHE, VLLM, Facts
from .layers import LayerFacts
from .targets import NEWEST_PROVEN_VLLM, OLDEST_SUPPORTED_VLLM

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    from .envs import BugAction

    #: What was done for one entry at one target (a ``fix`` whose backport
    #: could not be applied there guards instead).
    Done = Literal["guarded", "fixed", "warned"]


class Planned:
    """One in-range entry at one target: what is done for the layers it hits
    there, and where their deciding values are hidden."""

    __slots__ = ("bug", "done", "hidden_done")

    def __init__(self, bug: KnownBug, done: Done, hidden_done: Done) -> None:
        self.bug = bug
        self.done = done
        self.hidden_done = hidden_done

    def __repr__(self) -> str:
        return f"Planned({self.bug.id}, {self.done!r})"


class Verdict:
    """One MoE layer against the entries planned at one target."""

    __slots__ = ("blind", "check", "fixed", "guarded", "layer", "refused", "warned")

    def __init__(self, layer: LayerFacts, check: LayerCheck) -> None:
        self.layer = layer
        self.check = check
        self.refused = False  # the fused routing is refused for this layer
        self.guarded: list[KnownBug] = []
        self.fixed: list[KnownBug] = []
        self.warned: list[KnownBug] = []
        self.blind: list[KnownBug] = []  # judged without the layer's own values

    def reason(self) -> str:
        """The sentence vLLM prints after "does not support the deployment
        configuration since"."""
        parts = []
        if self.check.refuses_renormalize and self.layer.method in RENORMALIZE_METHODS:
            methods = "/".join(RENORMALIZE_METHODS)
            parts.append(
                f"{RENORMALIZE_VAR}=disable refuses in-kernel {methods} routing"
            )
        for bug in self.guarded:
            if bug.defect is not None:
                what = f"FlashInfer's {'/'.join(bug.kernels)} {bug.wrong}"
                ref = bug.id
            else:
                what = f"FlashInfer {self.check.flashinfer} {bug.wrong}"
                ref = f"{bug.id}; fixed in {bug.fixed_in_text}"
            parts.append(f"{what} for {bug.layers} ({ref}; this layer: {self.facts()})")
        return "; ".join(parts)

    def facts(self) -> str:
        text = self.layer.describe()
        if self.blind:
            hidden = sorted({bug.layers.hidden for bug in self.blind})
            text += f"; its {', '.join(hidden)} not visible here"
        return text


class LayerCheck:
    """The entries planned at one target, judged for each layer vLLM asks it
    about (``patches.layer_config_check``, ``patches.layer_routing_function``)."""

    __slots__ = (
        "_verdicts", "failed", "flashinfer", "methods", "planned",
        "refuses_renormalize",
    )  # fmt: skip

    def __init__(
        self,
        planned: tuple[Planned, ...],
        refuses_renormalize: bool = False,  # VLLM_MOE_ROUTING_RENORMALIZE=disable
        flashinfer: str | None = None,
    ) -> None:
        self.planned = planned
        self.refuses_renormalize = refuses_renormalize
        self.flashinfer = flashinfer
        methods: set[str] = set(RENORMALIZE_METHODS) if refuses_renormalize else set()
        for plan in planned:
            methods.update(plan.bug.layers.methods)
        #: The routing methods some entry here concerns; None: every method.
        self.methods: frozenset[str] | None = (
            None
            if any(not plan.bug.layers.methods for plan in planned)
            else frozenset(methods)
        )
        self._verdicts: dict[LayerFacts, Verdict] = {}
        self.failed = False  # judging raised once (``patches`` warned)

    def __repr__(self) -> str:
        refuses = self.refuses_renormalize
        return f"LayerCheck({self.planned!r}, refuses_renormalize={refuses})"

    def judge(self, layer: LayerFacts) -> Verdict:
        """Which planned entries hit ``layer``, and whether its fused routing
        is refused. One verdict per kind of layer
        (it follows from the layer's values, and layers of one kind share one
        ``LayerFacts``: ``layers.facts``; vLLM builds tens of each)."""
        verdict = self._verdicts.get(layer)
        if verdict is None:
            verdict = self._judged(layer)
            if len(self._verdicts) < 1024:
                self._verdicts[layer] = verdict
        return verdict

    def _judged(self, layer: LayerFacts) -> Verdict:
        verdict = Verdict(layer, self)
        if self.refuses_renormalize and layer.method in RENORMALIZE_METHODS:
            verdict.refused = True
        for plan in self.planned:
            hit = plan.bug.layers.hits(layer)
            if hit is False:
                continue
            done = plan.done
            if hit is None:
                verdict.blind.append(plan.bug)
                done = plan.hidden_done
            if done == "guarded":
                verdict.guarded.append(plan.bug)
                verdict.refused = True
            elif done == "fixed":
                verdict.fixed.append(plan.bug)
            else:
                verdict.warned.append(plan.bug)
        return verdict


def parse_version(text: str | None) -> Version | None:
    """A version the gate can compare, or None (not installed, unparsable, or
    the ``0.0.0+unknown`` of a FlashInfer source tree without build metadata)."""
    if text is None:
        return None
    try:
        version = Version(text.strip())
    except InvalidVersion:
        return None
    if version.release == (0, 0, 0) or all(part == 0 for part in version.release):
        return None
    return version


def companion_notes(facts: Facts) -> tuple[str, ...]:
    """Companion-wheel problems worth a user's attention. A companion of
    another version stops FlashInfer 0.6.x from importing; 0.7.x ignores it
    and fetches or compiles the kernels itself (``flashinfer/jit/env.py`` of
    0.7.2.post1 and 0.7.4: "Ignoring incompatible flashinfer-cubin package"),
    so there it is a leftover to remove (no flashinfer-cubin 0.7.x is on
    PyPI; one installed for vLLM 0.19 stays behind on an upgrade)."""
    notes = []
    python = facts.version(FLASHINFER)
    if python is None:
        return ()
    parsed = parse_version(python)
    ignores = parsed is not None and parsed.release >= (0, 7)
    cubin = facts.version(FLASHINFER_CUBIN)
    if cubin is not None and cubin != python:
        notes.append(
            f"{FLASHINFER_CUBIN} {cubin} differs from {FLASHINFER} {python}: "
            + (
                "FlashInfer 0.7 ignores it and downloads its cubins when first "
                f"used (`pip uninstall {FLASHINFER_CUBIN}` removes the leftover)"
                if ignores
                else "FlashInfer 0.6.x refuses to import then (install both at "
                "the same version)"
            )
        )
    jit_cache = facts.version(FLASHINFER_JIT_CACHE)
    if jit_cache is not None and jit_cache.split("+", 1)[0] != python:
        notes.append(
            f"{FLASHINFER_JIT_CACHE} {jit_cache} does not match {FLASHINFER} "
            f"{python}: "
            + (
                "FlashInfer 0.7 ignores it and compiles its kernels when first "
                f"used (`pip uninstall {FLASHINFER_JIT_CACHE}` removes the leftover)"
                if ignores
                else "FlashInfer 0.6.x refuses to import then"
            )
        )
    return tuple(notes)


def _flashinfer_in_use(facts: Facts) -> tuple[Version | None, str]:
    """The FlashInfer version whose kernels run, and how it was found.

    A ``flashinfer-jit-cache`` wheel's prebuilt kernels are what run when it is
    installed, so the lower of it and ``flashinfer-python`` counts; except
    where FlashInfer ignores it: 0.7.x ignores a jit-cache of another version
    and compiles its own kernels (``flashinfer/jit/env.py``).
    """
    python_text = facts.version(FLASHINFER)
    if python_text is None:
        return None, f"{FLASHINFER} is not installed"
    python = parse_version(python_text)
    if python is None:
        return None, f"{FLASHINFER} version {python_text!r} cannot be compared"
    jit_text = facts.version(FLASHINFER_JIT_CACHE)
    if jit_text is None:
        return python, f"{FLASHINFER} {python_text}"
    jit = parse_version(jit_text)
    if jit is None:
        return None, f"{FLASHINFER_JIT_CACHE} version {jit_text!r} cannot be compared"
    if python.release >= (0, 7) and jit.public != python.public:
        return python, f"{FLASHINFER} {python_text} ({FLASHINFER_JIT_CACHE} ignored)"
    if jit < python:
        return (
            jit,
            f"{FLASHINFER_JIT_CACHE} {jit_text} (below {FLASHINFER} {python_text})",
        )
    return python, f"{FLASHINFER} {python_text}"


def _renormalize_bug(bug: KnownBug) -> bool:
    """Whether an entry is about the methods ``VLLM_MOE_ROUTING_RENORMALIZE``
    governs (flashinfer#2822): those follow that variable, not the per-entry one."""
    return any(m in RENORMALIZE_METHODS for m in bug.layers.methods)


def bug_settings(settings: Settings) -> tuple[dict[str, BugAction], tuple[str, ...]]:
    """The items of ``VLLM_MOE_ROUTING_KNOWN_BUGS`` that are honoured, and
    notes on the ones that cannot be."""
    asked: dict[str, BugAction] = {}
    notes = []
    for bug_id, action in settings.bug_actions:
        bug = by_id(bug_id)
        if bug is None:
            notes.append(f"{KNOWN_BUGS_VAR} names {bug_id}, not a known bug; ignored")
        elif _renormalize_bug(bug):
            notes.append(
                f"{KNOWN_BUGS_VAR} cannot set {bug_id}; {RENORMALIZE_VAR} governs it"
            )
        elif action == "guard" and not bug.guardable:
            notes.append(
                f"{KNOWN_BUGS_VAR}: {bug_id} cannot be guarded (not a routing bug); "
                f"it stays {bug.action}"
            )
        elif action == "fix" and not bug.fixable:
            notes.append(
                f"{KNOWN_BUGS_VAR}: {bug_id} has no fix the plugin can apply; "
                f"it stays {bug.action}"
            )
        else:
            asked[bug_id] = action
    return asked, tuple(notes)


def findings(
    version: Version | None,
    renormalize: BugAction,
    asked: Mapping[str, BugAction],
    *,
    vllm: Version | None,
) -> tuple[Finding, ...]:
    """Each catalogue entry against this FlashInfer (``version``; None:
    unknown) and this vLLM (``vllm``; None: unknown, where a bug in vLLM's
    code is then left to the probe) on an SM100/SM103 machine, with the action
    asked for it."""
    found = []
    release = version.release if version is not None else None
    vllm_release = defect_release(vllm)
    for bug in KNOWN_BUGS:
        in_range = bug.in_range(release, vllm=vllm_release)
        if _renormalize_bug(bug):
            found.append(Finding(bug, in_range, renormalize))
        elif bug.id in asked:
            # Asking for an entry's own action keeps what it does where the
            # layer's values are hidden; another action applies to both.
            action = asked[bug.id]
            hidden = bug.hidden_action if action == bug.action else action
            found.append(Finding(bug, in_range, action, hidden))
        else:
            found.append(Finding(bug, in_range, bug.action, bug.hidden_action))
    return tuple(found)


def defect_release(vllm: Version | None) -> tuple[int, ...] | None:
    """The release at which the known ranges of vLLM's defects are read; None
    (in range: the probe of vLLM's code decides) where the version does not
    say which code it is: a dev build (``0.22.0.dev3``, and ``0.1.devN`` from
    a checkout without tags, vllm#9119), a pre-release (``0.22.0rc1`` may
    predate the fix its release has), one older than the oldest supported.
    A local label (``+cu130``) names a build of the release: it counts."""
    if vllm is None or vllm.is_prerelease or vllm.release < OLDEST_SUPPORTED_VLLM:
        return None
    return vllm.release


def unproven_notes(vllm: Version | None, flashinfer: Version | None) -> tuple[str, ...]:
    """What the decision says of a vLLM or FlashInfer newer than the newest
    release the plugin was proven on: it still decides (targets are found by
    their shape, the known bugs from their ranges), and says so; nothing for
    a proven release. A dev build of the next release counts as newer; one
    whose version the ranges of vLLM's defects cannot place
    (``defect_release``) has them decided by the probe, and says so too."""
    notes = []
    placed = vllm is None or defect_release(vllm) is not None
    defects = (
        "vLLM defects from their known ranges"
        if placed
        else "vLLM defects by probing its code (a pre-release or build the "
        "known ranges cannot place)"
    )
    if vllm is not None and vllm.release > NEWEST_PROVEN_VLLM:
        notes.append(
            f"vLLM {vllm} is newer than the newest proven, "
            f"{release_text(NEWEST_PROVEN_VLLM)}: targets found by shape, {defects}"
        )
    elif not placed:
        notes.append(
            f"vLLM {vllm} is a pre-release or a build the known ranges cannot "
            "place: vLLM defects decided by probing its code"
        )
    if flashinfer is not None and flashinfer.release > NEWEST_PROVEN_FLASHINFER:
        notes.append(
            f"FlashInfer {flashinfer} is newer than the newest proven, "
            f"{release_text(NEWEST_PROVEN_FLASHINFER)}: known bugs from their ranges"
        )
    return tuple(notes)


def decide(facts: Facts, settings: Settings) -> Decision:
    """The decision table of the README, top row first (its first rows, where
    the plugin does not act: ``decision.not_acting``)."""
    notes = companion_notes(facts)
    asked: dict[str, BugAction] = {}
    if not settings.disabled:
        asked, setting_notes = bug_settings(settings)
        notes += setting_notes
    idle = not_acting(facts, settings, notes)
    if idle is not None:
        return idle
    decision = _acting_decision(facts, settings, asked, notes)
    decision.notes += ignored_notes(decision.findings, asked)
    return decision


def ignored_notes(
    found: tuple[Finding, ...], asked: Mapping[str, BugAction]
) -> tuple[str, ...]:
    """A WARNING for each in-range entry whose guard or fix
    ``VLLM_MOE_ROUTING_KNOWN_BUGS`` turns off: the layers it hits then run
    the kernel that gets them wrong, and the log should say so once."""
    return tuple(
        f"{KNOWN_BUGS_VAR}: {f.bug.id}=ignore lets {f.bug.layers} through "
        f"unguarded although this install is in its range ({f.bug.affected}): "
        f"{'/'.join(f.bug.kernels)} {f.bug.wrong} for them"
        for f in found
        if f.in_range
        and asked.get(f.bug.id) == "ignore"
        and f.bug.action in ("guard", "fix")
    )


def _acting_decision(
    facts: Facts,
    settings: Settings,
    asked: Mapping[str, BugAction],
    notes: tuple[str, ...],
) -> Decision:
    """The table's rows where every GPU runs the fused kernels."""
    gpus = describe_gpus(facts.gpus)
    version, found = _flashinfer_in_use(facts)
    shown = str(version) if version else None
    vllm = parse_version(facts.version(VLLM))
    unproven = unproven_notes(vllm, version)
    gpus = "; ".join((gpus, *unproven))
    if settings.renormalize == "enable":
        let_through = findings(version, "ignore", asked, vllm=vllm)
        overridden = tuple(
            f.bug for f in let_through if f.in_range and _renormalize_bug(f.bug)
        )
        over = ""
        if overridden:
            # A forced enable must not read as a vouch for a FlashInfer that
            # has the bug (a backported build may not: the user's call).
            over = f" over {', '.join(bug.id for bug in overridden)} ({found})"
        reason = f"forced by {RENORMALIZE_VAR}=enable{over}; {gpus}"
        return Decision(
            "enable",
            reason,
            let_through,
            flashinfer=shown,
            notes=notes,
            overridden=overridden,
        )
    if settings.renormalize == "disable":
        reason = f"forced by {RENORMALIZE_VAR}=disable; {gpus}"
        return Decision(
            "guard",
            reason,
            findings(version, "guard", asked, vllm=vllm),
            flashinfer=shown,
            refuses_renormalize=True,
            notes=notes,
        )
    if version is None:
        return Decision("unknown", f"{found}; {gpus}", notes=notes)
    found_all = findings(version, "guard", asked, vllm=vllm)
    renormalize = [f.bug for f in found_all if _renormalize_bug(f.bug)]
    in_range = [f.bug for f in found_all if _renormalize_bug(f.bug) and f.in_range]
    if not in_range:
        floor = max(renormalize, key=lambda bug: bug.fixed_in or ())
        reason = f"{found} >= {floor.fixed_in_text}; {gpus}"
        return Decision("enable", reason, found_all, flashinfer=shown, notes=notes)
    floor = max(in_range, key=lambda bug: bug.fixed_in or ())
    references = ", ".join(bug.id for bug in in_range)
    reason = f"{found} < {floor.fixed_in_text} ({references}); {gpus}"
    return Decision("guard", reason, found_all, flashinfer=shown, notes=notes)
