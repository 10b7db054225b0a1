# SPDX-License-Identifier: Apache-2.0
"""Where each vLLM release keeps a TRT-LLM monolithic routing check, as data.

Targets are found by probing modules and attributes (``checks.locate``),
never by comparing vLLM version strings: dev builds and backports exist. A
release that lacks a target is simply without it (``absent``). The names of
quant keys and routing methods are vLLM's; their values move between
releases, so they are looked up by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

FUSED_MOE = "vllm.model_executor.layers.fused_moe"
QUANT_UTILS = "vllm.model_executor.layers.quantization.utils.quant_utils"
CONFIG = f"{FUSED_MOE}.config"

Scheme = tuple["str | None", "str | None"]  # names of vLLM QuantKey constants
#: How vLLM calls the check: a ``@staticmethod`` ``(method, weight_key,
#: activation_key)``, a module function ``(method)``, or the 0.16 module
#: function ``(weight_key, activation_key, method)``.
if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    Call = Literal["method", "function", "keys-first-function"]

#: The newest vLLM release the targets, layer classes and the catalogue's vLLM
#: defects were proven on (tests/test_contract.py, tests/test_layers.py). A
#: newer one is still decided for (targets are found by their shape), and the
#: decision says it is unproven.
NEWEST_PROVEN_VLLM: tuple[int, ...] = (0, 34, 0)
#: The oldest supported vLLM release: a version below it does not say which
#: code it is (a build from a checkout without tags reports ``0.1.devN``).
OLDEST_SUPPORTED_VLLM: tuple[int, ...] = (0, 16, 0)

FP8_BLOCK: Scheme = ("kFp8Static128BlockSym", "kFp8Dynamic128Sym")
MXFP8: Scheme = ("kMxfp8Static", "kMxfp8Dynamic")
FP8_PER_TENSOR: Scheme = ("kFp8StaticTensorSym", "kFp8StaticTensorSym")
NVFP4: Scheme = ("kNvfp4Static", "kNvfp4Dynamic")
MXFP4: Scheme = ("kMxfp4Static", None)
MXFP4_MXFP8: Scheme = ("kMxfp4Static", "kMxfp8Dynamic")
MXINT4: Scheme = ("kInt4Static32", None)
UNQUANTIZED: Scheme = (None, None)

SCHEME_LABELS: dict[Scheme, str] = {
    FP8_BLOCK: "fp8-block",
    MXFP8: "mxfp8",
    FP8_PER_TENSOR: "fp8-per-tensor",
    NVFP4: "nvfp4",
    MXFP4: "mxfp4",
    MXFP4_MXFP8: "mxfp4-mxfp8",
    MXINT4: "mxint4",
    UNQUANTIZED: "bf16",
}


class Target:
    """One routing check of one vLLM release family."""

    __slots__ = ("call", "check", "module", "owner", "releases", "schemes")

    def __init__(
        self,
        module: str,
        owner: str | None,  # class name; None for a module-level function
        check: str,  # attribute holding the routing check
        call: Call,
        schemes: tuple[Scheme, ...],
        releases: str,  # the vLLM releases that have it (documentation only)
    ) -> None:
        self.module = module
        self.owner = owner
        self.check = check
        self.call = call
        self.schemes = schemes
        self.releases = releases

    def __repr__(self) -> str:
        return f"Target({self.name})"

    @property
    def name(self) -> str:
        if self.owner is not None:
            return self.owner
        return f"{self.module.rsplit('.', 1)[-1]}.{self.check}"

    @property
    def path(self) -> str:
        inner = f"{self.owner}.{self.check}" if self.owner else self.check
        return f"{self.module}.{inner}"


FP8_MONOLITHIC = Target(
    f"{FUSED_MOE}.experts.trtllm_fp8_moe",
    "TrtLlmFp8ExpertsMonolithic",
    "_supports_routing_method",
    "method",
    (FP8_BLOCK, MXFP8, FP8_PER_TENSOR),
    "0.18-0.34",
)
FP8_0_17 = Target(
    f"{FUSED_MOE}.experts.trtllm_fp8_moe",
    "TrtLlmFp8Experts",
    "_supports_routing_method",
    "method",
    (FP8_BLOCK, FP8_PER_TENSOR),
    "0.17",
)
BF16_MONOLITHIC = Target(
    f"{FUSED_MOE}.experts.trtllm_bf16_moe",
    "TrtLlmBf16ExpertsMonolithic",
    "_supports_routing_method",
    "method",
    (UNQUANTIZED,),
    "0.26-0.34",
)
BF16_0_20 = Target(
    f"{FUSED_MOE}.experts.trtllm_bf16_moe",
    "TrtLlmBf16Experts",
    "_supports_routing_method",
    "method",
    (UNQUANTIZED,),
    "0.20-0.25",
)
BF16_FUNCTION = Target(
    f"{FUSED_MOE}.flashinfer_trtllm_moe",
    None,
    "_supports_routing_method_bf16",
    "function",
    (UNQUANTIZED,),
    "0.16-0.19",
)
FP8_FUNCTION = Target(
    f"{FUSED_MOE}.flashinfer_trtllm_moe",
    None,
    "_supports_routing_method",
    "keys-first-function",
    (FP8_BLOCK, FP8_PER_TENSOR),
    "0.16",
)
# The other fused kernels share the routing code the bugs live in
# (trtllm_fp4_block_scale_moe for NVFP4 and MXFP4 weights,
# trtllm_mxint4_block_scale_moe). The LoRA experts (TrtLlmBf16LoRAExperts,
# TrtLlmMxfp4LoRAExperts) are modular: vLLM routes and calls the pre-routed
# kernels, which the routing bugs do not reach.
NVFP4_MONOLITHIC = Target(
    f"{FUSED_MOE}.experts.trtllm_nvfp4_moe",
    "TrtLlmNvFp4ExpertsMonolithic",
    "_supports_routing_method",
    "method",
    (NVFP4,),
    "0.17-0.34",
)
NVFP4_FUNCTION = Target(
    "vllm.model_executor.layers.quantization.utils.flashinfer_fp4_moe",
    None,
    "_supports_routing_method",
    "function",
    (NVFP4,),
    "0.15-0.16",
)
MXFP4_MONOLITHIC = Target(
    f"{FUSED_MOE}.experts.trtllm_mxfp4_moe",
    "TrtLlmMxfp4ExpertsMonolithic",
    "_supports_routing_method",
    "method",
    (MXFP4, MXFP4_MXFP8),
    "0.19-0.34",
)
MXINT4_MONOLITHIC = Target(
    f"{FUSED_MOE}.experts.trtllm_mxint4_moe",
    "TrtLlmMxint4ExpertsMonolithic",
    "_supports_routing_method",
    "method",
    (MXINT4,),
    "0.23-0.34",
)

TARGETS: tuple[Target, ...] = (
    FP8_MONOLITHIC,
    FP8_0_17,
    BF16_MONOLITHIC,
    BF16_0_20,
    BF16_FUNCTION,
    FP8_FUNCTION,
    NVFP4_MONOLITHIC,
    NVFP4_FUNCTION,
    MXFP4_MONOLITHIC,
    MXINT4_MONOLITHIC,
)


class LayerClass:
    """The vLLM class whose constructor builds one MoE layer's experts and,
    inside it, asks the backend oracle for their kernel (``quant_method``).
    Its instance holds the layer's routing values before the oracle runs."""

    __slots__ = ("module", "owner", "releases")

    def __init__(self, module: str, owner: str, releases: str) -> None:
        self.module = module
        self.owner = owner
        self.releases = releases  # documentation only

    def __repr__(self) -> str:
        return f"LayerClass({self.owner})"

    @property
    def name(self) -> str:
        return self.owner

    @property
    def path(self) -> str:
        return f"{self.module}.{self.owner}"


#: Where each vLLM release builds a MoE layer (from 0.24 ``layer.FusedMoE`` is
#: a factory function that builds a ``RoutedExperts``).
LAYER_CLASSES: tuple[LayerClass, ...] = (
    LayerClass(f"{FUSED_MOE}.layer", "FusedMoE", "0.16-0.23"),
    LayerClass(f"{FUSED_MOE}.routed_experts", "RoutedExperts", "0.24-0.34"),
)


def target_modules(targets: Iterable[Target] = TARGETS) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.module for t in targets))


def defined_names(module: str, targets: Iterable[Target] = TARGETS) -> tuple[str, ...]:
    """The classes and functions of ``module`` that hold a target's check."""
    return tuple(t.owner or t.check for t in targets if t.module == module)
