# SPDX-License-Identifier: Apache-2.0
"""The process's decision, and its first rows: where the plugin does not act.

``disabled`` and ``not-applicable`` follow from the settings and the GPUs
alone, so they are decided here, before the catalogue (``bugs``) and the
targets are imported: most vLLM processes run on GPUs the plugin does not
act on, and each pays ``register()``'s import time. ``policy.decide`` makes
the rest of the table, with the catalogue, and starts from these rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .envs import DISABLE_VAR, Settings
from .facts import Facts, Gpu, GpuReading

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    from .bugs import KnownBug
    from .envs import BugAction

    #: The process's decision (the log line's first word).
    DecisionAction = Literal["disabled", "not-applicable", "unknown", "enable", "guard"]

#: Compute capabilities FlashInfer's TRT-LLM-gen MoE kernels ship cubins for
#: and vLLM's ``_supports_current_device`` accepts (family 100: B200/GB200 are
#: 10.0, B300/GB300 are 10.3).
SUPPORTED_CAPABILITIES: tuple[tuple[int, int], ...] = ((10, 0), (10, 3))


class Finding:
    """One catalogue entry against this install: ``in_range`` when this
    FlashInfer has it, or, for a bug in vLLM's code, when this vLLM is in the
    defect's known range (``policy.defect_release``; probing vLLM's code, when its
    module is imported, then confirms it per target), and the action for the
    layers it hits (``hidden_action`` where the layer's deciding values are
    not visible)."""

    __slots__ = ("action", "bug", "hidden_action", "in_range")

    def __init__(
        self,
        bug: KnownBug,
        in_range: bool,
        action: BugAction,
        hidden_action: BugAction | None = None,
    ) -> None:
        self.bug = bug
        self.in_range = in_range
        self.action = action
        self.hidden_action = hidden_action or action

    def __repr__(self) -> str:
        return f"Finding({self.bug.id}, {self.in_range}, {self.action!r})"

    @property
    def acts(self) -> bool:
        return self.in_range and self.action != "ignore"


class Decision:
    """What the plugin does in this process, and why."""

    __slots__ = (
        "action", "findings", "flashinfer", "notes", "overridden", "reason",
        "refuses_renormalize",
    )  # fmt: skip

    def __init__(
        self,
        action: DecisionAction,
        reason: str,
        findings: tuple[Finding, ...] = (),
        *,
        flashinfer: str | None = None,  # the FlashInfer version that counts
        refuses_renormalize: bool = False,  # VLLM_MOE_ROUTING_RENORMALIZE=disable
        notes: tuple[str, ...] = (),  # what cannot be honoured: WARNINGs
        overridden: tuple[KnownBug, ...] = (),
    ) -> None:
        self.action = action
        self.reason = reason
        self.findings = findings
        self.flashinfer = flashinfer
        self.refuses_renormalize = refuses_renormalize
        self.notes = notes
        #: In-range Renormalize entries VLLM_MOE_ROUTING_RENORMALIZE=enable lets
        #: through: the fused kernels route their layers anyway.
        self.overridden = overridden

    def __repr__(self) -> str:
        return f"Decision({self.action!r}, {self.reason!r})"

    @property
    def acts(self) -> bool:
        """Whether the decision may change vLLM's routing checks."""
        return self.action in ("enable", "guard")

    @property
    def acting(self) -> tuple[Finding, ...]:
        """The in-range entries the plugin does something about."""
        return tuple(f for f in self.findings if f.acts)


def runs_fused_kernels(gpus: tuple[Gpu, ...]) -> bool:
    """Whether every visible GPU is one the TRT-LLM MoE kernels run on."""
    return bool(gpus) and all(g.capability in SUPPORTED_CAPABILITIES for g in gpus)


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


def disabled_by(settings: Settings) -> str:
    """What switched the plugin off, for the log line: the switch, or the
    value it could not read and took as set (the WARNING before says why)."""
    for reading in settings.readings:
        if reading.name == DISABLE_VAR and not reading.valid:
            return f"{DISABLE_VAR}={reading.raw!r}, taken as 1"
    return f"{DISABLE_VAR}=1"


def not_acting(
    facts: Facts, settings: Settings, notes: tuple[str, ...]
) -> Decision | None:
    """The table's first rows: ``disabled`` (the off switch), and
    ``not-applicable`` where no visible GPU, or not every one, runs the
    TRT-LLM MoE kernels; None where the plugin may act."""
    if settings.disabled:
        return Decision("disabled", disabled_by(settings), notes=notes)
    if not facts.gpus:
        return Decision(
            "not-applicable",
            f"no CUDA GPU visible ({facts.gpu_error or 'none reported'})",
            notes=notes,
        )
    if not runs_fused_kernels(facts.gpus):
        return Decision(
            "not-applicable",
            f"{describe_gpus(facts.gpus)}; the TRT-LLM MoE kernels run only on "
            "sm_100/sm_103",
            notes=notes,
        )
    return None


def decide_early(facts: Facts, settings: Settings) -> Decision | None:
    """``not_acting`` where neither the catalogue nor a version has anything
    to add: no ``VLLM_MOE_ROUTING_KNOWN_BUGS`` item to check against it (an
    unknown id is a WARNING on every path but ``disabled``) and no package
    versions read (``read_facts`` reads them only where the plugin may act;
    their companion-wheel notes are ``policy``'s). None: ``policy.decide``."""
    if facts.versions or (settings.bug_actions and not settings.disabled):
        return None
    return not_acting(facts, settings, ())


def read_facts(
    settings: Settings,
    read_gpus: Callable[[], GpuReading],
    read_versions: Callable[[], Mapping[str, str | None]],
) -> Facts:
    """Read only the facts the decision can use: a disabled plugin reads
    nothing, and package versions are read only where every GPU runs the
    fused kernels (elsewhere they decide nothing, and reading them costs
    ``register()`` time in every vLLM process)."""
    if settings.disabled:
        return Facts({}, ())
    gpus = read_gpus()
    versions: Mapping[str, str | None] = {}
    if runs_fused_kernels(gpus.gpus):
        versions = read_versions()
    return Facts(versions, gpus.gpus, gpus.error, gpus.failed)
