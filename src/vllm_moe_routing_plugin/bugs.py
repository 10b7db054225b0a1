# SPDX-License-Identifier: Apache-2.0
"""The catalogue of known bugs on the fused TRT-LLM MoE paths vLLM 0.16 - 0.33 take.

Each entry says what goes wrong, which routing methods and kernels it reaches
(as FlashInfer functions and as the plugin's targets, the vLLM classes that
call them), the layer shapes it reaches (its envelope), the releases affected
and the first one fixed, what the plugin does by default (``guard`` or
``warn``) and why, the upstream references, and when the entry can go. The
decision (``policy``), the reason vLLM prints for a refused layer, the log
line, ``status`` and the README's table are all read from here: adding a bug
is adding an entry, plus its tests. The evidence for each entry, read from the
released FlashInfer and vLLM wheels, is in docs/known-bugs.md.

Names are vLLM's ``RoutingMethodType`` member names and the plugin's target
names (``targets.TARGETS``); enum values move between vLLM releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    Action = Literal["guard", "warn"]

#: The routing methods this plugin lets the fused kernels do (softmax + top-k
#: + renormalise: Qwen3, Qwen3.5, Mixtral-style models).
RENORMALIZE_METHODS: tuple[str, ...] = ("Renormalize", "RenormalizeNaive")

FP8_TARGETS: tuple[str, ...] = (
    "TrtLlmFp8ExpertsMonolithic",
    "TrtLlmFp8Experts",
    "flashinfer_trtllm_moe._supports_routing_method",
)
BF16_TARGETS: tuple[str, ...] = (
    "TrtLlmBf16ExpertsMonolithic",
    "TrtLlmBf16Experts",
    "flashinfer_trtllm_moe._supports_routing_method_bf16",
)
NVFP4_TARGETS: tuple[str, ...] = (
    "TrtLlmNvFp4ExpertsMonolithic",
    "flashinfer_fp4_moe._supports_routing_method",
)
#: Every TRT-LLM monolithic routing check the plugin knows (``targets.TARGETS``).
MONOLITHIC_TARGETS: tuple[str, ...] = (
    "TrtLlmFp8ExpertsMonolithic",
    "TrtLlmFp8Experts",
    "TrtLlmBf16ExpertsMonolithic",
    "TrtLlmBf16Experts",
    "flashinfer_trtllm_moe._supports_routing_method_bf16",
    "flashinfer_trtllm_moe._supports_routing_method",
    "TrtLlmNvFp4ExpertsMonolithic",
    "flashinfer_fp4_moe._supports_routing_method",
    "TrtLlmMxfp4ExpertsMonolithic",
    "TrtLlmMxint4ExpertsMonolithic",
)


class Envelope:
    """The MoE layer shapes a bug reaches: experts_above < experts <=
    experts_at_most, with top_k < top_k_below (global experts, vLLM's
    ``moe_config.num_experts`` and ``experts_per_token``)."""

    __slots__ = ("experts_above", "experts_at_most", "top_k_below")

    def __init__(
        self, experts_above: int, experts_at_most: int, top_k_below: int
    ) -> None:
        self.experts_above = experts_above
        self.experts_at_most = experts_at_most
        self.top_k_below = top_k_below

    def contains(self, num_experts: int, top_k: int) -> bool:
        return (
            self.experts_above < num_experts <= self.experts_at_most
            and top_k < self.top_k_below
        )

    def __str__(self) -> str:
        return (
            f"{self.experts_above} < experts <= {self.experts_at_most} "
            f"with top_k < {self.top_k_below}"
        )


class VllmDefect:
    """A bug in vLLM's own code, found by probing it: the function vLLM calls
    a kernel through does not pass ``keyword``. ``callers`` maps a target name
    to that function, as an attribute path in the target's module
    (``"TrtLlmBf16Experts.apply"``). Probed in the loaded module, never by
    comparing vLLM version strings: dev builds and backports exist."""

    __slots__ = ("callers", "keyword")

    def __init__(self, keyword: str, callers: dict[str, str]) -> None:
        self.keyword = keyword
        self.callers = callers


class KnownBug:
    """One catalogue entry."""

    __slots__ = (
        "action", "affected", "defect", "envelope", "fixed_in", "id",
        "introduced_in", "kernels", "methods", "references", "remove_when",
        "targets", "title", "why", "wrong",
    )  # fmt: skip

    def __init__(
        self,
        *,
        id: str,  # the upstream issue or pull request, e.g. "flashinfer#2822"
        title: str,  # what goes wrong, one line
        wrong: str,  # what the kernel does, after "FlashInfer <version> "
        action: Action,  # what the plugin does where the entry reaches
        why: str,  # why that action and not the other
        methods: tuple[str, ...],  # RoutingMethodType names; () = every method
        kernels: tuple[str, ...],  # FlashInfer functions that have it
        targets: tuple[str, ...],  # the plugin's targets whose kernels have it
        envelope: Envelope | None,  # the layer shapes; None = every shape
        affected: str,  # the releases that have it, in words
        introduced_in: tuple[int, ...] = (),  # first FlashInfer release with it
        fixed_in: tuple[int, ...] | None = None,  # first FlashInfer release without it
        defect: VllmDefect | None = None,  # for a bug in vLLM's own code
        references: tuple[str, ...],  # upstream issues and pull requests
        remove_when: str,  # when the entry (and its guard) can be deleted
    ) -> None:
        self.id = id
        self.title = title
        self.wrong = wrong
        self.action = action
        self.why = why
        self.methods = methods
        self.kernels = kernels
        self.targets = targets
        self.envelope = envelope
        self.affected = affected
        self.introduced_in = introduced_in
        self.fixed_in = fixed_in
        self.defect = defect
        self.references = references
        self.remove_when = remove_when

    def replace(self, **changes: Any) -> KnownBug:
        """A copy with some fields changed (tests build entries this way)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return KnownBug(**{**fields, **changes})

    def __repr__(self) -> str:
        return f"KnownBug({self.id})"

    @property
    def fixed_in_text(self) -> str:
        if self.fixed_in is None:
            return self.affected
        return ".".join(str(part) for part in self.fixed_in)

    @property
    def guardable(self) -> bool:
        """Whether the plugin can refuse the layers it reaches: only a routing
        bug can be refused through vLLM's routing and config checks."""
        return bool(self.methods)

    @property
    def scope(self) -> str:
        return "all shapes" if self.envelope is None else str(self.envelope)

    def reaches_release(self, release: tuple[int, ...]) -> bool:
        """Whether a FlashInfer of this release (``Version.release``) has it;
        always True for a bug in vLLM's code (the probe decides there)."""
        if self.fixed_in is None:
            return True
        return self.introduced_in <= release < self.fixed_in


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
    methods=RENORMALIZE_METHODS,
    kernels=(
        "trtllm_bf16_moe",
        "trtllm_fp8_per_tensor_scale_moe",
        "trtllm_fp8_block_scale_moe",
        "trtllm_fp4_block_scale_moe",
        "trtllm_mxint4_block_scale_moe",
    ),
    targets=MONOLITHIC_TARGETS,
    # The two-stage warp top-k (flashinfer#1831) let uninitialised candidates
    # into the top-k for more than 128 experts and fewer than 10 picks.
    envelope=Envelope(experts_above=128, experts_at_most=512, top_k_below=10),
    # Older releases count as affected too, as they always have: no supported
    # vLLM pins one, and a guard costs them speed, never correctness.
    affected="0.5.0rc1 - 0.6.6 (since flashinfer#1831)",
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
        "DeepSeekV3 routing without expert groups (n_group <= 1: GLM-5.x, Kimi K2.6) "
        "gives NaN for a token whose selected sigmoid scores all underflow to 0"
    ),
    wrong="divides DeepSeekV3 routing weights by a zero sum",
    action="warn",
    why=(
        "input-dependent (every selected expert's logit below about -88); n_group, "
        "which decides the path, is not in vLLM's moe_config, so a guard would "
        "refuse DeepSeek-V3/R1 and Kimi K2 layers too"
    ),
    methods=("DeepSeekV3",),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    envelope=None,
    affected="< 0.6.15",
    fixed_in=(0, 6, 15),
    references=("flashinfer#3803", "flashinfer#3946"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.15",
)

FLASHINFER_3946 = KnownBug(
    id="flashinfer#3946",
    title=(
        "DeepSeekV3 routing with expert groups (n_group > 1: DeepSeek-V3/V3.1/V3.2) "
        "gives NaN for a token whose selected sigmoid scores all underflow to 0"
    ),
    wrong="divides grouped DeepSeekV3 routing weights by a zero sum",
    action="warn",
    why=(
        "input-dependent (every selected expert's logit below about -88); a guard "
        "would move every DeepSeekV3 layer off the fused kernel"
    ),
    methods=("DeepSeekV3",),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    envelope=None,
    affected="< 0.6.17",
    fixed_in=(0, 6, 17),
    references=("flashinfer#3946", "flashinfer#3803"),
    remove_when="no supported vLLM installs or allows a FlashInfer older than 0.6.17",
)

FLASHINFER_3875 = KnownBug(
    id="flashinfer#3875",
    title=(
        "DeepSeekV3 routing without expert groups and MiniMax2 routing recover the "
        "sigmoid as (sigmoid + bias) - bias, which rounds tiny scores to 0 under a "
        "large bias (GLM-5.2: scores ~1e-7, bias ~12): zero weights or NaN"
    ),
    wrong="loses small sigmoid scores under a large routing bias",
    action="warn",
    why=(
        "input- and weight-dependent (the bias magnitude is in the checkpoint); "
        "n_group is not in vLLM's moe_config, so a guard would refuse every "
        "DeepSeekV3 layer; GLM-5.x users should opt in to the guard"
    ),
    methods=("DeepSeekV3", "MiniMax2"),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    envelope=None,
    affected="0.6.8 - 0.6.17 (since flashinfer#2803)",
    introduced_in=(0, 6, 8),
    fixed_in=(0, 6, 18),
    references=("flashinfer#3875", "flashinfer#2803"),
    remove_when="no supported vLLM installs or allows a FlashInfer 0.6.8 - 0.6.17",
)

FLASHINFER_3499 = KnownBug(
    id="flashinfer#3499",
    title=(
        "MiniMax2 routing ignores routed_scaling_factor (route scale hard-coded to "
        "1.0): wrong output for models whose router scale is not 1 (Step-3.7)"
    ),
    wrong="routes MiniMax2 with a route scale of 1.0",
    action="guard",
    why=(
        "silent wrong output for whole models; vLLM 0.22 - 0.24 map every "
        "sigmoid-with-bias router without expert groups to MiniMax2 whatever its "
        "scale, and the scale is not in moe_config, so every MiniMax2 layer is "
        "refused: vLLM then routes it itself, before the same TRT-LLM experts"
    ),
    methods=("MiniMax2",),
    kernels=(
        "trtllm_fp8_block_scale_moe",
        "trtllm_fp8_per_tensor_scale_moe",
        "trtllm_fp4_block_scale_moe",
    ),
    targets=MONOLITHIC_TARGETS,
    envelope=None,
    affected="0.6.8 - 0.6.12 (since flashinfer#2803)",
    introduced_in=(0, 6, 8),
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
    action="guard",
    why=(
        "silent wrong output for whole models; FlashInfer applies the scale only "
        "for DeepSeekV3 routing, whose models nearly all set one; the scale is not "
        "in moe_config, so every DeepSeekV3 layer of the BF16 kernel is refused"
    ),
    methods=("DeepSeekV3",),
    kernels=("trtllm_bf16_moe",),
    targets=BF16_TARGETS,
    envelope=None,
    affected="vLLM 0.16.0 - 0.20.2 as measured (0.21 not checked)",
    defect=VllmDefect(
        "routed_scaling_factor",
        {
            "TrtLlmBf16ExpertsMonolithic": "TrtLlmBf16ExpertsMonolithic.apply",
            "TrtLlmBf16Experts": "TrtLlmBf16Experts.apply",
            "flashinfer_trtllm_moe._supports_routing_method_bf16": (
                "flashinfer_fused_moe_bf16"
            ),
        },
    ),
    references=("vllm#43769",),
    remove_when="no supported vLLM calls trtllm_bf16_moe without routed_scaling_factor",
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
    methods=(),
    kernels=("trtllm_fp8_block_scale_moe", "trtllm_fp8_per_tensor_scale_moe"),
    targets=FP8_TARGETS,
    envelope=None,
    affected="<= 0.6.5",
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
    why="outputs are correct; the failure is a loud, allocator-dependent crash",
    methods=(),
    kernels=_SIGMOID_KERNELS,
    targets=MONOLITHIC_TARGETS,
    envelope=None,
    affected="< 0.6.16",
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
    methods=(),
    kernels=("trtllm_fp4_block_scale_moe", "trtllm_fp4_block_scale_routed_moe"),
    targets=NVFP4_TARGETS[:1],
    envelope=None,
    affected="0.6.16 - 0.6.17 (tile 192 advertised since flashinfer#4252)",
    introduced_in=(0, 6, 16),
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
    FLASHINFER_2642,
    FLASHINFER_4237,
    FLASHINFER_4486,
)


def by_id(bug_id: str) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.id == bug_id), None)
