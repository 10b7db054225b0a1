# SPDX-License-Identifier: Apache-2.0
"""Facts + settings + the known-bug catalogue -> one decision.

Pure: imports nothing from vLLM or FlashInfer, and reads only what it is
handed (``decide``) or what the decision can use (``decide_here``). The
decision table is the README's ("What the plugin decides").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from packaging.version import InvalidVersion, Version

from .bugs import KNOWN_BUGS, RENORMALIZE_METHODS, KnownBug
from .envs import DISABLE_VAR, RENORMALIZE_VAR, Settings
from .facts import (
    FLASHINFER,
    FLASHINFER_CUBIN,
    FLASHINFER_JIT_CACHE,
    Facts,
    Gpu,
    GpuReading,
)

Action = Literal["disabled", "not-applicable", "unknown", "enable", "guard"]

#: Compute capabilities FlashInfer's TRT-LLM-gen MoE kernels ship cubins for
#: and vLLM's ``_supports_current_device`` accepts (family 100: B200/GB200 are
#: 10.0, B300/GB300 are 10.3).
SUPPORTED_CAPABILITIES: tuple[tuple[int, int], ...] = ((10, 0), (10, 3))


class Guard:
    """Which MoE layers the fused kernels must not route, and why.

    ``bugs`` empty means every shape (the forced ``disable``).
    """

    __slots__ = ("bugs", "flashinfer")

    def __init__(
        self, bugs: tuple[KnownBug, ...], flashinfer: str | None = None
    ) -> None:
        self.bugs = bugs
        self.flashinfer = flashinfer

    @property
    def everywhere(self) -> bool:
        return not self.bugs

    def refuses(self, num_experts: int | None, top_k: int | None) -> bool:
        if self.everywhere or num_experts is None or top_k is None:
            return True
        return any(bug.envelope.contains(num_experts, top_k) for bug in self.bugs)

    def reason(self, num_experts: int | None = None, top_k: int | None = None) -> str:
        """The sentence vLLM prints after "does not support the deployment
        configuration since"."""
        if self.everywhere:
            methods = "/".join(RENORMALIZE_METHODS)
            return f"{RENORMALIZE_VAR}=disable refuses in-kernel {methods} routing"
        shape = (
            f"{num_experts} experts, top_k {top_k}"
            if num_experts is not None and top_k is not None
            else "unknown layer shape"
        )
        return "; ".join(
            f"FlashInfer {self.flashinfer} {bug.wrong} for {bug.envelope} "
            f"({bug.id}; fixed in {bug.fixed_in_text}; this layer: {shape})"
            for bug in self.bugs
        )

    @property
    def scope(self) -> str:
        if self.everywhere:
            return "all shapes"
        return "; ".join(str(bug.envelope) for bug in self.bugs)


class Decision:
    """What the plugin does in this process, and why."""

    __slots__ = ("action", "guard", "notes", "reason")

    def __init__(
        self,
        action: Action,
        reason: str,
        guard: Guard | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.action = action
        self.reason = reason
        self.guard = guard
        self.notes = notes

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


def decide(facts: Facts, settings: Settings) -> Decision:
    """The decision table of the README, top row first."""
    notes = companion_notes(facts)
    if settings.disabled:
        return Decision("disabled", f"{DISABLE_VAR}=1", notes=notes)
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
    if settings.renormalize == "enable":
        return Decision(
            "enable", f"forced by {RENORMALIZE_VAR}=enable; {gpus}", notes=notes
        )
    if settings.renormalize == "disable":
        return Decision(
            "guard",
            f"forced by {RENORMALIZE_VAR}=disable; {gpus}",
            guard=Guard(bugs=(), flashinfer=str(version) if version else None),
            notes=notes,
        )
    if version is None:
        return Decision("unknown", f"{found}; {gpus}", notes=notes)
    bugs = tuple(bug for bug in KNOWN_BUGS if bug.reaches_release(version.release))
    if not bugs:
        floor = max(KNOWN_BUGS, key=lambda bug: bug.fixed_in).fixed_in_text
        return Decision("enable", f"{found} >= {floor}; {gpus}", notes=notes)
    floor = max(bugs, key=lambda bug: bug.fixed_in).fixed_in_text
    references = ", ".join(bug.id for bug in bugs)
    return Decision(
        "guard",
        f"{found} < {floor} ({references}); {gpus}",
        guard=Guard(bugs=bugs, flashinfer=str(version)),
        notes=notes,
    )


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
