# SPDX-License-Identifier: Apache-2.0
"""The catalogue of known bugs on the fused TRT-LLM MoE paths vLLM 0.16 - 0.34 take.

Each entry says what goes wrong, the MoE layers it hits (``Layers``: routing
methods, experts and top_k, expert groups, correction bias, the scale that
reaches the kernel), the kernels and the plugin's targets (the vLLM classes
that call them) that have it, the releases that have it (its install range),
what the plugin does by default for a layer it hits (``guard``, ``fix`` or
``warn``) and why, the upstream references, and when the entry can go. The
decision (``policy``), the reason vLLM prints for a refused layer, the log
lines, ``status`` and the README's table are all read from here: adding a bug
is adding an entry, plus its tests. The evidence for each entry, read from
the released FlashInfer and vLLM wheels, is in docs/known-bugs.md.

Three things, one name each: an entry's *install range* (``in_range``: this
FlashInfer has it, or this vLLM is in its defect's known range), the
*layers* it hits (``Layers.hits``), and the decision for one layer
(``policy.LayerCheck.judge``).

Methods are vLLM's ``RoutingMethodType`` member names; enum values move
between vLLM releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import targets as t
from .layers import LayerFacts

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    #: What the plugin does for a layer an entry hits: refuse the fused
    #: routing, pass vLLM's dropped value on (a backport), or only say so.
    DefaultAction = Literal["guard", "fix", "warn"]

#: The newest FlashInfer the catalogue's ranges were proven on: read from its
#: wheel's kernel sources (scripts/known_bug_evidence.py) and its routing
#: kernels run (docs/known-bugs.md). A newer one is decided from the ranges
#: all the same, and the decision says it is unproven.
NEWEST_PROVEN_FLASHINFER: tuple[int, ...] = (0, 7, 4)

#: The routing methods this plugin lets the fused kernels do (softmax + top-k
#: + renormalise: Qwen3, Qwen3.5, Mixtral-style models).
RENORMALIZE_METHODS: tuple[str, ...] = ("Renormalize", "RenormalizeNaive")

FP8_TARGETS: tuple[t.Target, ...] = (t.FP8_MONOLITHIC, t.FP8_0_17, t.FP8_FUNCTION)
BF16_TARGETS: tuple[t.Target, ...] = (
    t.BF16_MONOLITHIC,
    t.BF16_0_20,
    t.BF16_FUNCTION,
)
#: Every TRT-LLM monolithic routing check the plugin knows.
MONOLITHIC_TARGETS: tuple[t.Target, ...] = t.TARGETS


class Layers:
    """The MoE layers a bug hits, in the values vLLM builds a layer with.

    ``methods``: routing methods (empty: every layer of the kernel);
    ``experts``: ``(above, at_most)`` global experts; ``top_k_below``;
    ``groups``: ``"with"`` (``n_group > 1``) or ``"without"`` expert groups;
    ``bias``: only layers with a correction bias; ``scaled``: only layers whose
    ``routed_scaling_factor`` into the kernel is not 1 (models that scale the
    output themselves, as DeepSeek-V3, GLM and Kimi do in vLLM, pass 1).
    """

    __slots__ = ("bias", "experts", "groups", "methods", "scaled", "top_k_below")

    def __init__(
        self,
        methods: tuple[str, ...] = (),
        *,
        experts: tuple[int, int] | None = None,
        top_k_below: int | None = None,
        groups: Literal["with", "without"] | None = None,
        bias: bool = False,
        scaled: bool = False,
    ) -> None:
        self.methods = methods
        self.experts = experts
        self.top_k_below = top_k_below
        self.groups = groups
        self.bias = bias
        self.scaled = scaled

    def hits(self, layer: LayerFacts) -> bool | None:
        """Whether ``layer`` is one of these; None when a value that decides it
        is not visible (and nothing visible rules the layer out)."""
        answers: list[bool | None] = [
            self.methods == () or layer.method in self.methods
        ]
        if self.experts is not None:
            above, at_most = self.experts
            n = layer.num_experts
            answers.append(None if n is None else above < n <= at_most)
        if self.top_k_below is not None:
            k = layer.top_k
            answers.append(None if k is None else k < self.top_k_below)
        if self.groups is not None:
            grouped = layer.grouped
            wanted = self.groups == "with"
            answers.append(None if grouped is None else grouped == wanted)
        if self.bias:
            answers.append(layer.has_bias if layer.visible else None)
        if self.scaled:
            scale = layer.scale if layer.visible else None
            answers.append(None if scale is None else scale != 1.0)
        if False in answers:
            return False
        return None if None in answers else True

    @property
    def hidden(self) -> str:
        """The values that decide and that only the layer holds, in words."""
        names = []
        if self.groups is not None:
            names.append("n_group")
        if self.bias:
            names.append("its correction bias")
        if self.scaled:
            names.append("routed_scaling_factor")
        return ", ".join(names)

    def __str__(self) -> str:
        """``DeepSeekV3 layers without expert groups (n_group <= 1) with a
        correction bias``."""
        what = "/".join(self.methods) + " layers" if self.methods else "every layer"
        conditions = []
        if self.experts is not None:
            conditions.append(f"{self.experts[0]} < experts <= {self.experts[1]}")
        if self.top_k_below is not None:
            conditions.append(f"top_k < {self.top_k_below}")
        text = what + (f" with {' and '.join(conditions)}" if conditions else "")
        if self.groups == "with":
            text += " with expert groups (n_group > 1)"
        elif self.groups == "without":
            text += " without expert groups (n_group <= 1)"
        if self.bias:
            text += " with a correction bias"
        if self.scaled:
            text += " whose routed_scaling_factor into the kernel is not 1"
        return text


class KernelCall:
    """Where vLLM hands a layer's value to a kernel: the function at ``path``
    in the target's module (``"TrtLlmBf16ExpertsMonolithic.apply"``) and the
    function it calls there (``callee``: FlashInfer's kernel, or vLLM's helper
    around it)."""

    __slots__ = ("callee", "path")

    def __init__(self, path: str, callee: str) -> None:
        self.path = path
        self.callee = callee

    def __repr__(self) -> str:
        return f"KernelCall({self.path} -> {self.callee})"


class VllmDefect:
    """A bug in vLLM's own code: where vLLM calls a kernel (``callers``, per
    target), it does not pass the layer's ``keyword``.

    Its known range is data, as a FlashInfer bug's is: ``introduced_in`` (None:
    every supported release) up to ``fixed_in``, the first vLLM release that
    passes it (None: not fixed upstream). Inside that range the code of vLLM's
    caller is probed (``checks.probe_call``: it drops the value, passes it, or
    cannot be read), so a build with the fix backported is left alone; outside
    it nothing is probed: a probe confirms the range, it never widens it.
    ``unreadable`` is the entry's rule for a probe that cannot read the code
    (a call built with ``**kwargs``, a renamed function, no source) inside the
    range: ``"affected"`` (the range decides) or ``"unaffected"``.
    ``backported`` are the targets whose caller the plugin can fix
    (``patches.BACKPORTS``); ``note`` adds to the range in words."""

    __slots__ = (
        "backported", "callers", "fixed_in", "introduced_in", "keyword", "note",
        "unreadable",
    )  # fmt: skip

    def __init__(
        self,
        keyword: str,
        callers: dict[t.Target, KernelCall],
        *,
        introduced_in: tuple[int, ...] | None = None,
        fixed_in: tuple[int, ...] | None,
        unreadable: Literal["affected", "unaffected"],
        backported: tuple[t.Target, ...] = (),
        note: str = "",
    ) -> None:
        self.keyword = keyword
        self.callers = callers
        self.introduced_in = introduced_in
        self.fixed_in = fixed_in
        self.unreadable = unreadable
        self.backported = backported
        self.note = note

    def in_range(self, release: tuple[int, ...] | None) -> bool:
        """Whether vLLM of this release (``Version.release``; None: unknown,
        and then the probe alone decides) is in the known range."""
        if release is None:
            return True
        if self.introduced_in is not None and release < self.introduced_in:
            return False
        return self.fixed_in is None or release < self.fixed_in

    @property
    def affected(self) -> str:
        """``vLLM < 0.22.0``, ``vLLM >= 0.23.0 (not fixed upstream; ...)``."""
        parts = []
        if self.introduced_in is not None:
            parts.append(f">= {release_text(self.introduced_in)}")
        if self.fixed_in is not None:
            parts.append(f"< {release_text(self.fixed_in)}")
        text = "vLLM " + ", ".join(parts)
        notes = [] if self.fixed_in is not None else ["not fixed upstream"]
        if self.note:
            notes.append(self.note)
        return text + (f" ({'; '.join(notes)})" if notes else "")


def release_text(release: tuple[int, ...]) -> str:
    """``(0, 6, 7)`` -> ``0.6.7``."""
    return ".".join(str(part) for part in release)


class KnownBug:
    """One catalogue entry."""

    __slots__ = (
        "_hidden_action", "action", "defect", "fixed_in", "id", "introduced_by",
        "introduced_in", "kernels", "layers", "references", "remove_when",
        "targets", "title", "why", "wrong",
    )  # fmt: skip

    def __init__(
        self,
        *,
        id: str,  # the upstream issue or pull request, e.g. "flashinfer#2822"
        title: str,  # what goes wrong, one line
        wrong: str,  # what the kernel does, after "FlashInfer <version> "
        action: DefaultAction,  # what the plugin does for a layer the entry hits
        why: str,  # why that action and not another
        layers: Layers,  # the layers it hits
        kernels: tuple[str, ...],  # FlashInfer functions that have it
        targets: tuple[t.Target, ...],  # the plugin's targets whose kernels have it
        introduced_in: tuple[int, ...] | None = None,  # None: every older release
        introduced_by: str = "",  # the change that brought it, e.g. "flashinfer#1831"
        fixed_in: tuple[int, ...] | None = None,  # first FlashInfer release without it
        defect: VllmDefect | None = None,  # for a bug in vLLM's own code
        hidden_action: DefaultAction | None = None,  # where its values are hidden
        references: tuple[str, ...],  # upstream issues and pull requests
        remove_when: str,  # when the entry (and its guard) can be deleted
    ) -> None:
        self.id = id
        self.title = title
        self.wrong = wrong
        self.action = action
        self.why = why
        self.layers = layers
        self.kernels = kernels
        self.targets = targets
        self.introduced_in = introduced_in
        self.introduced_by = introduced_by
        self.fixed_in = fixed_in
        self.defect = defect
        self._hidden_action = hidden_action  # as given: None follows ``action``
        self.references = references
        self.remove_when = remove_when

    def replace(self, **changes: Any) -> KnownBug:
        """A copy with some fields changed (tests build entries this way); a
        hidden action not given follows the copy's action."""
        fields = {name.lstrip("_"): getattr(self, name) for name in self.__slots__}
        return KnownBug(**{**fields, **changes})

    @property
    def hidden_action(self) -> DefaultAction:
        """The action where the layer's deciding values are hidden."""
        return self._hidden_action or self.action

    def __repr__(self) -> str:
        return f"KnownBug({self.id})"

    @property
    def affected(self) -> str:
        """The install range in words, from the one place it is stated:
        ``>= 0.6.8, < 0.6.18 (since flashinfer#2803)``, ``< 0.6.7``,
        ``vLLM < 0.22.0``."""
        if self.defect is not None:
            return self.defect.affected
        assert self.fixed_in is not None
        text = f"< {release_text(self.fixed_in)}"
        if self.introduced_in is not None:
            text = f">= {release_text(self.introduced_in)}, {text}"
        if self.introduced_by:
            text += f" (since {self.introduced_by})"
        return text

    @property
    def fixed_in_text(self) -> str:
        """``0.6.7``; for a bug in vLLM's code ``vLLM 0.22.0`` or ``not yet``."""
        if self.defect is not None:
            fixed = self.defect.fixed_in
            return "not yet" if fixed is None else f"vLLM {release_text(fixed)}"
        assert self.fixed_in is not None
        return release_text(self.fixed_in)

    @property
    def guardable(self) -> bool:
        """Whether the plugin can refuse the layers it hits: only a routing
        bug can be refused through vLLM's routing and config checks."""
        return bool(self.layers.methods)

    @property
    def fixable(self) -> bool:
        """Whether the plugin has a backport of the upstream fix somewhere."""
        return self.defect is not None and bool(self.defect.backported)

    def in_range(
        self,
        flashinfer: tuple[int, ...] | None,
        *,
        vllm: tuple[int, ...] | None,
    ) -> bool:
        """Whether this install is in the entry's known range: for a
        FlashInfer bug, whether a FlashInfer of release ``flashinfer``
        (``Version.release``; None: unknown) has it; for a bug in vLLM's code,
        whether vLLM of release ``vllm`` is in the defect's range (None:
        unknown, the probe of vLLM's code alone decides)."""
        if self.defect is not None:
            return self.defect.in_range(vllm)
        if flashinfer is None or self.fixed_in is None:
            return False
        return (self.introduced_in or ()) <= flashinfer < self.fixed_in


FLASHINFER_2822 = KnownBug(
    id="flashinfer#2822",
    title=(
        "Renormalize routing picks uninitialised experts when every router logit "
        "of a token is negative (0 % GSM8K on Qwen3.5-35B-A3B)"
    ),
    wrong="routes Renormalize wrongly",
    action="guard",
    why=(
        "silent wrong output for whole models in normal use; vLLM's config check "
        "sees the deciding shape"
    ),
    # The two-stage warp top-k (flashinfer#1831) let uninitialised candidates
    # into the top-k for more than 128 experts and fewer than 10 picks.
    layers=Layers(RENORMALIZE_METHODS, experts=(128, 512), top_k_below=10),
    kernels=(
        "trtllm_bf16_moe",
        "trtllm_fp8_per_tensor_scale_moe",
        "trtllm_fp8_block_scale_moe",
        "trtllm_fp4_block_scale_moe",
        "trtllm_mxint4_block_scale_moe",
    ),
    targets=MONOLITHIC_TARGETS,
    # Releases before flashinfer#1831 (0.5.0rc1) count as affected too: no
    # supported vLLM pins one, and a guard costs them speed, never correctness.
    introduced_by="flashinfer#1831, 0.5.0rc1",
    fixed_in=(0, 6, 7),
    references=(
        "flashinfer#2822",
        "flashinfer#2744",
        "vllm#37605",
        "vllm#38859",
    ),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.7",
)

_SIGMOID_KERNELS = (
    "trtllm_bf16_moe",
    "trtllm_fp8_block_scale_moe",
    "trtllm_fp8_per_tensor_scale_moe",
    "trtllm_fp4_block_scale_moe",
    "trtllm_mxint4_block_scale_moe",
)

FLASHINFER_3803 = KnownBug(
    id="flashinfer#3803",
    title=(
        "DeepSeekV3 routing without expert groups (n_group <= 1: GLM-4.5 - 4.7, "
        "GLM-5.x, Kimi-K2, Kimi-Linear) gives NaN for a token whose selected "
        "sigmoid scores are all 0"
    ),
    wrong="divides DeepSeekV3 routing weights by a zero sum",
    action="warn",
    why=(
        "input-dependent: on its own the sum is 0 only when every selected logit "
        "is below about -16 (where FlashInfer's fast-math sigmoid gives 0, "
        "measured on an H200); where FlashInfer 0.6.8 - 0.6.17 also cancels small "
        "scores under the bias (flashinfer#3875), the same layers give NaN in "
        "production (GLM-5.2, vllm#47367) and are guarded under that entry"
    ),
    layers=Layers(("DeepSeekV3",), groups="without"),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    fixed_in=(0, 6, 15),
    references=("flashinfer#3803", "vllm#47367", "flashinfer#3875", "flashinfer#3946"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.15",
)

FLASHINFER_3946 = KnownBug(
    id="flashinfer#3946",
    title=(
        "DeepSeekV3 routing with expert groups (n_group > 1: DeepSeek-V3/R1/V3.x) "
        "gives NaN for a token whose selected sigmoid scores are all 0"
    ),
    wrong="divides grouped DeepSeekV3 routing weights by a zero sum",
    action="warn",
    why=(
        "input-dependent (every selected expert's logit below about -16, where "
        "FlashInfer's fast-math sigmoid gives 0), and the grouped kernel weighs "
        "by the sigmoid it computed, without flashinfer#3875's (s + b) - b step, "
        "so only such tokens get 0/0; a guard would move every DeepSeek-V3 layer "
        "off the fused kernel for them"
    ),
    layers=Layers(("DeepSeekV3",), groups="with"),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    fixed_in=(0, 6, 17),
    references=("flashinfer#3946", "flashinfer#3803"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.17",
)

FLASHINFER_3875 = KnownBug(
    id="flashinfer#3875",
    title=(
        "DeepSeekV3 routing without expert groups and MiniMax2 routing recover the "
        "sigmoid as (sigmoid + bias) - bias, which rounds small scores to 0 under a "
        "large bias (GLM-5.2: scores ~1e-7, biases ~11 - 35): zero weights or NaN"
    ),
    wrong="loses small sigmoid scores under a large routing bias",
    action="guard",
    why=(
        "silent wrong output in production (GLM-5.2's '!!!!' output on vLLM 0.24, "
        "vllm#47367, sglang#30989): with biases of ~11 - 35 every small score "
        "becomes 0, and on FlashInfer < 0.6.15 the normalisation then divides 0 "
        "by 0 (flashinfer#3803). The bias magnitude is in the checkpoint, but "
        "every layer without expert groups that has a bias takes the cancelling "
        "path. Where n_group is hidden the entry only warns: a guard would then "
        "refuse DeepSeek-V3's grouped layers too"
    ),
    layers=Layers(("DeepSeekV3", "MiniMax2"), groups="without", bias=True),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    introduced_in=(0, 6, 8),
    introduced_by="flashinfer#2803",
    fixed_in=(0, 6, 18),
    hidden_action="warn",
    references=("flashinfer#3875", "vllm#47367", "sglang#30989", "flashinfer#2803"),
    remove_when="no supported vLLM installs or allows a FlashInfer 0.6.8 - 0.6.17",
)

FLASHINFER_3499 = KnownBug(
    id="flashinfer#3499",
    title=(
        "MiniMax2 routing ignores routed_scaling_factor (route scale hard-coded to "
        "1.0): wrong output for layers whose scale is not 1 (Step-3.5 / 3.7: 3.0)"
    ),
    wrong="routes MiniMax2 with a route scale of 1.0",
    action="guard",
    why=(
        "silent wrong output for whole models; vLLM 0.21 - 0.22 map every "
        "sigmoid-with-bias router without expert groups to MiniMax2 (0.23 - 0.30 "
        "only those with a scale of 1), and only the layers that pass a scale other "
        "than 1 into the kernel are wrong (Step-3.5; MiniMax-M2 passes none)"
    ),
    layers=Layers(("MiniMax2",), scaled=True),
    kernels=(
        "trtllm_fp8_block_scale_moe",
        "trtllm_fp8_per_tensor_scale_moe",
        "trtllm_fp4_block_scale_moe",
    ),
    targets=MONOLITHIC_TARGETS,
    introduced_in=(0, 6, 8),
    introduced_by="flashinfer#2803",
    fixed_in=(0, 6, 13),
    references=("flashinfer#3499", "flashinfer#2803"),
    remove_when="no supported vLLM installs or allows a FlashInfer 0.6.8 - 0.6.12",
)

VLLM_43769 = KnownBug(
    id="vllm#43769",
    title=(
        "vLLM's TRT-LLM BF16 MoE does not pass routed_scaling_factor to FlashInfer "
        "(GSM8K on GB200: Kimi-Linear-48B-A3B 0.378, Trinity-Mini 0.151)"
    ),
    wrong="is called by vLLM without routed_scaling_factor",
    action="fix",
    why=(
        "silent wrong output for layers that pass a scale other than 1 into the "
        "kernel (Trinity/AFMoE; Kimi-Linear and Ling from vLLM 0.20); DeepSeek-V3, "
        "Kimi-K2 and GLM pass 1. Where the upstream fix only passes on a value "
        "vLLM holds (0.20 - 0.21) the plugin backports it; elsewhere it guards"
    ),
    layers=Layers(("DeepSeekV3",), scaled=True),
    kernels=("trtllm_bf16_moe",),
    targets=BF16_TARGETS,
    defect=VllmDefect(
        "routed_scaling_factor",
        {
            t.BF16_MONOLITHIC: KernelCall(
                "TrtLlmBf16ExpertsMonolithic.apply", "trtllm_bf16_moe"
            ),
            t.BF16_0_20: KernelCall("TrtLlmBf16Experts.apply", "trtllm_bf16_moe"),
            t.BF16_FUNCTION: KernelCall(
                "flashinfer_fused_moe_bf16", "flashinfer_trtllm_bf16_moe"
            ),
        },
        # Every release before 0.22.0 drops it (read from each wheel,
        # scripts/layer_evidence.py); 0.22.0 passes it (vllm#43769).
        fixed_in=(0, 22, 0),
        unreadable="affected",
        backported=(t.BF16_0_20,),
    ),
    references=("vllm#43769",),
    remove_when="no supported vLLM calls trtllm_bf16_moe without routed_scaling_factor",
)

VLLM_32437 = KnownBug(
    id="vllm#32437",
    title=(
        "vLLM's TRT-LLM MXINT4 MoE calls FlashInfer with routed_scaling_factor=None "
        "(flashinfer_mxint4_moe.py), while its monolithic class accepts DeepSeekV3"
    ),
    wrong="is called by vLLM with routed_scaling_factor=None",
    action="guard",
    why=(
        "silent wrong output for DeepSeekV3 layers that pass a scale other than 1 "
        "into the kernel; the fix needs vLLM's helper to take the value, which is "
        "more than a backport should change"
    ),
    layers=Layers(("DeepSeekV3",), scaled=True),
    kernels=("trtllm_mxint4_block_scale_moe",),
    targets=(t.MXINT4_MONOLITHIC,),
    defect=VllmDefect(
        "routed_scaling_factor",
        {
            t.MXINT4_MONOLITHIC: KernelCall(
                "TrtLlmMxint4ExpertsMonolithic.apply", "flashinfer_trtllm_mxint4_moe"
            )
        },
        # The class, 0.23.0 on (0.19 - 0.22 call the kernel with no routing
        # check); 0.34.0's MXINT4 files are 0.33.0's.
        introduced_in=(0, 23, 0),
        fixed_in=None,
        unreadable="affected",
        note="0.19 - 0.22 call the kernel with no routing check",
    ),
    references=("vllm#32437", "vllm#43769", "vllm#44007"),
    remove_when="no supported vLLM calls trtllm_mxint4_block_scale_moe without it",
)

FLASHINFER_2642 = KnownBug(
    id="flashinfer#2642",
    title=(
        "int32 overflow of the permuted index in the activation kernel: illegal "
        "memory access at large token counts x top_k x intermediate size"
    ),
    wrong="overflows an int32 index",
    action="warn",
    why="fails loudly (a CUDA error stops the engine), never silently wrong",
    layers=Layers(),
    kernels=("trtllm_fp8_block_scale_moe", "trtllm_fp8_per_tensor_scale_moe"),
    targets=FP8_TARGETS,
    fixed_in=(0, 6, 6),
    references=("flashinfer#2642", "flashinfer#2643"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.6",
)

FLASHINFER_4237 = KnownBug(
    id="flashinfer#4237",
    title=(
        "the routed batched GEMMs read one int32 past the route map: flaky illegal "
        "memory access, outputs always correct"
    ),
    wrong="reads one element past the route map",
    action="warn",
    why=(
        "outputs are correct; the failure is a loud, allocator-dependent crash. "
        "Not a routing bug: the allocation is in prepare_routing_common, shared "
        "with the pre-routed kernels of the modular classes guarded layers fall "
        "back to, so refusing a layer would not avoid it"
    ),
    layers=Layers(),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    fixed_in=(0, 6, 16),
    references=("flashinfer#4237", "flashinfer#4288"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.16",
)

FLASHINFER_4486 = KnownBug(
    id="flashinfer#4486",
    title=(
        "per-token NVFP4 MoE (vLLM's online NVFP4 quantization) picks tile-192 "
        "kernels that give NaN (GSM8K 0.0 on B200)"
    ),
    wrong="has NaN-producing tile-192 per-token NVFP4 kernels",
    action="warn",
    why=(
        "not a routing bug: it reaches the modular NVFP4 class too, which the "
        "plugin does not patch, and only layers quantized online to NVFP4"
    ),
    layers=Layers(),
    kernels=("trtllm_fp4_block_scale_moe", "trtllm_fp4_block_scale_routed_moe"),
    targets=(t.NVFP4_MONOLITHIC,),
    introduced_in=(0, 6, 16),
    introduced_by="flashinfer#4252",
    fixed_in=(0, 6, 18),
    references=("flashinfer#4486", "flashinfer#4563", "flashinfer#4741"),
    remove_when="no supported vLLM installs or allows a FlashInfer 0.6.16 - 0.6.17",
)

KNOWN_BUGS: tuple[KnownBug, ...] = (
    FLASHINFER_2822,
    FLASHINFER_3803,
    FLASHINFER_3946,
    FLASHINFER_3875,
    FLASHINFER_3499,
    VLLM_43769,
    VLLM_32437,
    FLASHINFER_2642,
    FLASHINFER_4237,
    FLASHINFER_4486,
)


def by_id(bug_id: str) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.id == bug_id), None)
