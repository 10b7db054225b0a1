# SPDX-License-Identifier: Apache-2.0
"""The catalogue of known routing bugs of FlashInfer's fused TRT-LLM MoE kernels.

Each entry says what goes wrong, which routing methods and kernels it reaches
(as FlashInfer functions and as the vLLM classes that call them), the layer
shapes it reaches (its envelope), the FlashInfer releases affected and the
first one fixed, the upstream references, and when the entry can go. The
decision (``policy``), the reason vLLM prints for a refused layer, the log
line, ``status`` and the README's table are all read from here: adding a bug
is adding an entry, plus its tests.

Names are vLLM's ``RoutingMethodType`` member names and the plugin's target
names (``targets.TARGETS``); enum values move between vLLM releases.
"""

from __future__ import annotations

from typing import Any

#: The routing methods this plugin lets the fused kernels do (softmax + top-k
#: + renormalise: Qwen3, Qwen3.5, Mixtral-style models).
RENORMALIZE_METHODS: tuple[str, ...] = ("Renormalize", "RenormalizeNaive")

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


class KnownBug:
    """One catalogue entry."""

    __slots__ = (
        "affected", "envelope", "fixed_in", "id", "kernels", "methods",
        "references", "remove_when", "targets", "title", "wrong",
    )  # fmt: skip

    def __init__(
        self,
        *,
        id: str,  # the upstream issue, e.g. "flashinfer#2822"
        title: str,  # what goes wrong, one line
        wrong: str,  # what the kernel does, after "FlashInfer <version> "
        methods: tuple[str, ...],  # RoutingMethodType names it reaches
        kernels: tuple[str, ...],  # FlashInfer functions whose routing has it
        targets: tuple[str, ...],  # the plugin's targets whose kernels have it
        envelope: Envelope,
        affected: str,  # the FlashInfer releases that have it
        fixed_in: tuple[int, ...],  # the first FlashInfer release without it
        references: tuple[str, ...],  # upstream issues and pull requests
        remove_when: str,  # when the entry (and its guard) can be deleted
    ) -> None:
        self.id = id
        self.title = title
        self.wrong = wrong
        self.methods = methods
        self.kernels = kernels
        self.targets = targets
        self.envelope = envelope
        self.affected = affected
        self.fixed_in = fixed_in
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
        return ".".join(str(part) for part in self.fixed_in)

    def reaches_release(self, release: tuple[int, ...]) -> bool:
        """Whether a FlashInfer of this release (``Version.release``) has it."""
        return release < self.fixed_in


FLASHINFER_2822 = KnownBug(
    id="flashinfer#2822",
    title=(
        "Renormalize routing picks uninitialised experts when every router logit "
        "of a token is negative (0 % GSM8K on Qwen3.5-35B-A3B)"
    ),
    wrong="routes Renormalize wrongly",
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

KNOWN_BUGS: tuple[KnownBug, ...] = (FLASHINFER_2822,)
