# SPDX-License-Identifier: Apache-2.0
"""Facts + settings + the known-bug catalogue -> one decision.

Pure: imports nothing from vLLM or FlashInfer, and reads only what it is
handed (``decide``) or what the decision can use (``decide_here``). The
decision table is the README's ("What the plugin decides").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from .bugs import KNOWN_BUGS, RENORMALIZE_METHODS, KnownBug, by_id
from .envs import DISABLE_VAR, KNOWN_BUGS_VAR, RENORMALIZE_VAR, Settings
from .facts import (
    FLASHINFER,
    FLASHINFER_CUBIN,
    FLASHINFER_JIT_CACHE,
    Facts,
    Gpu,
    GpuReading,
)

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    Action = Literal["disabled", "not-applicable", "unknown", "enable", "guard"]
    #: What the plugin does where an entry reaches: refuse, log, or neither.
    BugAction = Literal["guard", "warn", "none"]

#: Compute capabilities FlashInfer's TRT-LLM-gen MoE kernels ship cubins for
#: and vLLM's ``_supports_current_device`` accepts (family 100: B200/GB200 are
#: 10.0, B300/GB300 are 10.3).
SUPPORTED_CAPABILITIES: tuple[tuple[int, int], ...] = ((10, 0), (10, 3))


class Guard:
    """Which MoE layers the fused kernels must not route, and why.

    ``bugs`` are the catalogue's entries to guard here; ``forced``
    (``VLLM_MOE_ROUTING_RENORMALIZE=disable``) refuses Renormalize /
    RenormalizeNaive for every layer shape as well.
    """

    __slots__ = ("bugs", "flashinfer", "forced")

    def __init__(
        self,
        bugs: tuple[KnownBug, ...],
        flashinfer: str | None = None,
        forced: bool = False,
    ) -> None:
        self.bugs = bugs
        self.flashinfer = flashinfer
        self.forced = forced

    @property
    def methods(self) -> tuple[str, ...]:
        """The routing methods refused for at least some layers."""
        names = list(RENORMALIZE_METHODS) if self.forced else []
        for bug in self.bugs:
            names.extend(m for m in bug.methods if m not in names)
        return tuple(names)

    def only(self, bugs: tuple[KnownBug, ...]) -> Guard:
        """The same guard with fewer entries (those reaching one target)."""
        return Guard(bugs, self.flashinfer, self.forced)

    def _reaching(self, method: str) -> tuple[KnownBug, ...]:
        return tuple(bug for bug in self.bugs if method in bug.methods)

    def refuses(
        self, num_experts: int | None, top_k: int | None, method: str = "Renormalize"
    ) -> bool:
        if self.forced and method in RENORMALIZE_METHODS:
            return True
        for bug in self._reaching(method):
            if bug.envelope is None or num_experts is None or top_k is None:
                return True
            if bug.envelope.contains(num_experts, top_k):
                return True
        return False

    def reason(
        self,
        num_experts: int | None = None,
        top_k: int | None = None,
        method: str = "Renormalize",
    ) -> str:
        """The sentence vLLM prints after "does not support the deployment
        configuration since"."""
        if self.forced and method in RENORMALIZE_METHODS:
            methods = "/".join(RENORMALIZE_METHODS)
            return f"{RENORMALIZE_VAR}=disable refuses in-kernel {methods} routing"
        shape = (
            f"{num_experts} experts, top_k {top_k}"
            if num_experts is not None and top_k is not None
            else "unknown layer shape"
        )
        parts = []
        for bug in self._reaching(method):
            if bug.defect is not None:
                parts.append(
                    f"FlashInfer's {'/'.join(bug.kernels)} {bug.wrong} for "
                    f"{method} routing ({bug.id}; this layer: {shape})"
                )
                continue
            where = "" if bug.envelope is None else f" for {bug.envelope}"
            parts.append(
                f"FlashInfer {self.flashinfer} {bug.wrong}{where} "
                f"({bug.id}; fixed in {bug.fixed_in_text}; this layer: {shape})"
            )
        return "; ".join(parts)

    def scope_of(self, methods: tuple[str, ...]) -> str:
        """The layers refused for these methods, in words."""
        if self.forced and set(methods) <= set(RENORMALIZE_METHODS):
            return "all shapes"
        scopes = [
            bug.scope for bug in self.bugs if any(m in bug.methods for m in methods)
        ]
        return "; ".join(dict.fromkeys(scopes)) or "no shape"

    @property
    def scope(self) -> str:
        return self.scope_of(RENORMALIZE_METHODS)


class Finding:
    """One catalogue entry against this install, as far as the decision can
    tell: ``affected`` when this FlashInfer and GPU have it (for a bug in
    vLLM's code, the GPU alone: probing vLLM's code, when its module is
    imported, decides), and what the plugin does where it reaches a target."""

    __slots__ = ("action", "affected", "bug")

    def __init__(self, bug: KnownBug, affected: bool, action: BugAction) -> None:
        self.bug = bug
        self.affected = affected
        self.action = action

    def __repr__(self) -> str:
        return f"Finding({self.bug.id}, {self.affected}, {self.action!r})"


class Decision:
    """What the plugin does in this process, and why."""

    __slots__ = ("action", "findings", "guard", "notes", "reason")

    def __init__(
        self,
        action: Action,
        reason: str,
        guard: Guard | None = None,
        notes: tuple[str, ...] = (),
        findings: tuple[Finding, ...] = (),
    ) -> None:
        self.action = action
        self.reason = reason
        self.guard = guard
        self.notes = notes
        self.findings = findings

    def __repr__(self) -> str:
        return f"Decision({self.action!r}, {self.reason!r})"

    @property
    def acts(self) -> bool:
        """Whether the decision may change vLLM's routing checks."""
        return self.action in ("enable", "guard")


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


def describe_gpus(gpus: tuple[Gpu, ...]) -> str:
    """``GPU 0-7 sm_100``, ``GPU 0 sm_90, 1 sm_100``: consecutive GPUs of one
    capability are folded into a range."""
    groups: list[tuple[int, int, tuple[int, int]]] = []
    for gpu in gpus:
        if (
            groups
            and groups[-1][2] == gpu.capability
            and groups[-1][1] + 1 == gpu.ordinal
        ):
            first, _, capability = groups[-1]
            groups[-1] = (first, gpu.ordinal, capability)
        else:
            groups.append((gpu.ordinal, gpu.ordinal, gpu.capability))
    parts = [
        (f"{first}-{last}" if first != last else f"{first}") + f" sm_{major}{minor}"
        for first, last, (major, minor) in groups
    ]
    return "GPU " + ", ".join(parts)


def companion_notes(facts: Facts) -> tuple[str, ...]:
    """Companion-wheel problems worth a user's attention."""
    notes = []
    python = facts.version(FLASHINFER)
    cubin = facts.version(FLASHINFER_CUBIN)
    if python is not None and cubin is not None and cubin != python:
        notes.append(
            f"{FLASHINFER_CUBIN} {cubin} differs from {FLASHINFER} {python}: "
            "FlashInfer 0.6.x refuses to import then (install both at the same version)"
        )
    jit_cache = facts.version(FLASHINFER_JIT_CACHE)
    if python is not None and jit_cache is not None:
        jit_public = jit_cache.split("+", 1)[0]
        if jit_public != python:
            notes.append(
                f"{FLASHINFER_JIT_CACHE} {jit_cache} does not match {FLASHINFER} "
                f"{python}: FlashInfer 0.6.x refuses to import then"
            )
    return tuple(notes)


def _flashinfer_in_use(facts: Facts) -> tuple[Version | None, str]:
    """The FlashInfer version whose kernels run, and how it was found.

    A ``flashinfer-jit-cache`` wheel's prebuilt kernels are what run when it is
    installed, so the lower of it and ``flashinfer-python`` counts.
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
    if jit < python:
        return (
            jit,
            f"{FLASHINFER_JIT_CACHE} {jit_text} (below {FLASHINFER} {python_text})",
        )
    return python, f"{FLASHINFER} {python_text}"


def runs_fused_kernels(gpus: tuple[Gpu, ...]) -> bool:
    """Whether every visible GPU is one the TRT-LLM MoE kernels run on."""
    return bool(gpus) and all(g.capability in SUPPORTED_CAPABILITIES for g in gpus)


def _renormalize_bug(bug: KnownBug) -> bool:
    """Whether an entry is about the methods ``VLLM_MOE_ROUTING_RENORMALIZE``
    governs (flashinfer#2822): those follow that variable, not the per-entry one."""
    return any(m in RENORMALIZE_METHODS for m in bug.methods)


def bug_setting_notes(settings: Settings) -> tuple[str, ...]:
    """What cannot be honoured in ``VLLM_MOE_ROUTING_KNOWN_BUGS``."""
    return _bug_settings(settings)[1]


def unaffected_findings() -> tuple[Finding, ...]:
    """Every entry, none of them affecting this install (a decision that
    reads no versions: disabled, not applicable, unknown)."""
    return tuple(Finding(bug, False, "none") for bug in KNOWN_BUGS)


def _bug_settings(settings: Settings) -> tuple[dict[str, str], tuple[str, ...]]:
    """The per-entry actions the user asked for, and notes on the ones that
    cannot be honoured."""
    asked: dict[str, str] = {}
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
        else:
            asked[bug_id] = action
    return asked, tuple(notes)


#: What the plugin does for an entry, from the action asked for it.
_DOES: dict[str, BugAction] = {"guard": "guard", "warn": "warn", "ignore": "none"}


def _findings(
    version: Version | None, renormalize_guarded: bool, asked: Mapping[str, str]
) -> tuple[Finding, ...]:
    """Each catalogue entry against this FlashInfer on an SM100/SM103 machine."""
    found = []
    for bug in KNOWN_BUGS:
        # A bug in vLLM's code has no FlashInfer range: probing decides.
        affected = bug.fixed_in is None or (
            version is not None and bug.reaches_release(version.release)
        )
        action: BugAction
        if _renormalize_bug(bug):
            action = "guard" if renormalize_guarded else "none"
        else:
            action = _DOES[asked.get(bug.id, bug.action)]
        found.append(Finding(bug, affected, action))
    return tuple(found)


def _acting(
    action: Action,
    reason: str,
    findings: tuple[Finding, ...],
    flashinfer: str | None,
    notes: tuple[str, ...],
    renormalize: tuple[KnownBug, ...] = (),
    forced: bool = False,
) -> Decision:
    """An ``enable`` or ``guard`` decision, guarding the Renormalize entries
    given and every other affected entry whose action is ``guard``."""
    others = tuple(
        f.bug
        for f in findings
        if f.affected and f.action == "guard" and not _renormalize_bug(f.bug)
    )
    bugs = renormalize + others
    guard = Guard(bugs, flashinfer, forced) if bugs or forced else None
    return Decision(action, reason, guard=guard, notes=notes, findings=findings)


def decide(facts: Facts, settings: Settings) -> Decision:
    """The decision table of the README, top row first."""
    notes = companion_notes(facts)
    if settings.disabled:
        return Decision("disabled", f"{DISABLE_VAR}=1", notes=notes)
    asked, setting_notes = _bug_settings(settings)
    notes += setting_notes
    if not facts.gpus:
        return Decision(
            "not-applicable",
            f"no CUDA GPU visible ({facts.gpu_error or 'none reported'})",
            notes=notes,
        )
    gpus = describe_gpus(facts.gpus)
    if not runs_fused_kernels(facts.gpus):
        return Decision(
            "not-applicable",
            f"{gpus}; the TRT-LLM MoE kernels run only on sm_100/sm_103",
            notes=notes,
        )
    version, found = _flashinfer_in_use(facts)
    shown = str(version) if version else None
    if settings.renormalize == "enable":
        findings = _findings(version, False, asked)
        reason = f"forced by {RENORMALIZE_VAR}=enable; {gpus}"
        return _acting("enable", reason, findings, shown, notes)
    if settings.renormalize == "disable":
        findings = _findings(version, True, asked)
        reason = f"forced by {RENORMALIZE_VAR}=disable; {gpus}"
        return _acting("guard", reason, findings, shown, notes, forced=True)
    if version is None:
        return Decision("unknown", f"{found}; {gpus}", notes=notes)
    all_renormalize = tuple(bug for bug in KNOWN_BUGS if _renormalize_bug(bug))
    renormalize = tuple(
        bug for bug in all_renormalize if bug.reaches_release(version.release)
    )
    findings = _findings(version, bool(renormalize), asked)
    if not renormalize:
        floor = max(all_renormalize, key=lambda bug: bug.fixed_in or ())
        reason = f"{found} >= {floor.fixed_in_text}; {gpus}"
        return _acting("enable", reason, findings, shown, notes)
    floor = max(renormalize, key=lambda bug: bug.fixed_in or ())
    references = ", ".join(bug.id for bug in renormalize)
    reason = f"{found} < {floor.fixed_in_text} ({references}); {gpus}"
    return _acting("guard", reason, findings, shown, notes, renormalize)


def decide_here(
    settings: Settings,
    read_gpus: Callable[[], GpuReading],
    read_versions: Callable[[], Mapping[str, str | None]],
) -> tuple[Facts, Decision]:
    """Read only the facts the decision can use, then decide: a disabled
    plugin reads nothing, and package versions are read only where every GPU
    runs the fused kernels (elsewhere they decide nothing, and reading them
    costs ``register()`` time in every vLLM process)."""
    found = Facts({}, ())
    if not settings.disabled:
        gpus = read_gpus()
        versions: Mapping[str, str | None] = {}
        if runs_fused_kernels(gpus.gpus):
            versions = read_versions()
        found = Facts(versions, gpus.gpus, gpus.error, gpus.failed)
    return found, decide(found, settings)
