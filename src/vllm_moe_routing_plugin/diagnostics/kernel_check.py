# SPDX-License-Identifier: Apache-2.0
"""The fused kernels themselves, on an SM100/SM103 GPU: each monolithic
FlashInfer TRT-LLM MoE kernel (routing in the kernel) against its pre-routed
twin fed the reference routing, on the same inputs and weights.

The pairs, from ``flashinfer.fused_moe``:

* ``trtllm_bf16_moe`` / ``trtllm_bf16_routed_moe`` (the routed twin is in
  0.6.6, not in 0.6.4)
* ``trtllm_fp8_block_scale_moe`` / ``trtllm_fp8_block_scale_routed_moe``
  (DeepSeek FP8 blocks of 128, the path vLLM's ``TrtLlmFp8Experts*`` take)
* ``trtllm_fp8_per_tensor_scale_moe`` / ``trtllm_fp8_per_tensor_scale_routed_moe``
  (the routed twin is in 0.6.18, not in 0.6.14)

A pair whose routed twin is missing is "not run", with its name.

The two calls of a pair share every argument but the routing, so their outputs
agree per token (cosine) exactly when the kernel routed as the reference did.
Where the FlashInfer version has ``routing_replay_out`` (0.6.8+), the experts
the kernel selected are compared directly too. Arguments are passed by name,
and only those the installed version's function declares (``keywords``): the
signatures differ between releases (``routing_replay_out``, the pair form of
``topk_ids`` and the routed twins came at different times).

Nothing here runs outside SM100/SM103, the GPUs on which vLLM uses these
kernels and the bug (flashinfer#2822) matters: ``unavailable()`` says why, and
``verify`` prints "not run: needs SM100". torch and FlashInfer are imported by the
functions that need them; the kernels module is passed in, so tests can stand
in for it on the CPU.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..decision import SUPPORTED_CAPABILITIES
from ..errors import describe_error
from ..facts import Gpu
from . import reference
from .cases import Case

if TYPE_CHECKING:
    import torch

COSINE_FLOOR = 0.99
#: ``flashinfer.fused_moe.RoutingMethodType.Renormalize``.
ROUTING_METHOD_RENORMALIZE = 1
#: ``flashinfer.fused_moe.WeightLayout``: MajorK ``[E, M, K]`` and BlockMajorK
#: ``[E, K / 128, M, 128]``.
MAJOR_K = 0
BLOCK_MAJOR_K = 2
BLOCK = 128


class Shape(NamedTuple):
    """Layer sizes; multiples of 128 (FP8 scale blocks, BlockMajorK blocks)."""

    hidden: int = 1024
    intermediate: int = 512


#: The layer the check runs: small enough for 512 experts, large enough for
#: several tiles.
LAYER = Shape()

Arguments = dict[str, Any]
Builder = Callable[[int, Shape, "torch.Generator", str], Arguments]


class Pair(NamedTuple):
    """A monolithic kernel and its pre-routed twin, with how to build the
    arguments they share: ``weights`` per expert count (built once per count),
    ``activations`` per token count, ``options`` fixed."""

    name: str
    monolithic: str
    routed: str
    weights: Builder
    activations: Builder
    options: Mapping[str, Any]


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: str) -> Any:
    import torch

    return torch.randn(shape, generator=generator, device=device)


def _full(shape: tuple[int, ...], value: float, device: str) -> Any:
    import torch

    return torch.full(shape, value, dtype=torch.float32, device=device)


def _fp8(x: Any) -> Any:
    import torch

    return x.to(torch.float8_e4m3fn)


def bf16_weights(
    experts: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    """BlockMajorK ``[E, K / 128, M, 128]``, the only layout the BF16 kernel
    takes (``use_shuffled_weight`` is its default, True). Random values need no
    shuffling: both kernels read the same bytes."""
    import torch

    h, i = shape.hidden, shape.intermediate
    w1 = _randn((experts, h // BLOCK, 2 * i, BLOCK), generator, device) * h**-0.5
    w2 = _randn((experts, i // BLOCK, h, BLOCK), generator, device) * i**-0.5
    return {
        "gemm1_weights": w1.to(torch.bfloat16),
        "gemm2_weights": w2.to(torch.bfloat16),
    }


def bf16_activations(
    tokens: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    import torch

    hidden = _randn((tokens, shape.hidden), generator, device)
    return {"hidden_states": hidden.to(torch.bfloat16)}


def fp8_block_scale_weights(
    experts: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    """MajorK FP8 weights ``[E, M, K]`` with float32 scales per 128 x 128
    block, unshuffled: FlashInfer's defaults, and what vLLM 0.17 - 0.19 pass."""
    h, i = shape.hidden, shape.intermediate
    return {
        "gemm1_weights": _fp8(_randn((experts, 2 * i, h), generator, device)),
        "gemm1_weights_scale": _full(
            (experts, 2 * i // BLOCK, h // BLOCK), h**-0.5, device
        ),
        "gemm2_weights": _fp8(_randn((experts, h, i), generator, device)),
        "gemm2_weights_scale": _full(
            (experts, h // BLOCK, i // BLOCK), i**-0.5, device
        ),
    }


def fp8_block_scale_activations(
    tokens: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    """FP8 hidden states and their block scales, transposed:
    ``[hidden / 128, tokens]``."""
    return {
        "hidden_states": _fp8(_randn((tokens, shape.hidden), generator, device)),
        "hidden_states_scale": _full((shape.hidden // BLOCK, tokens), 1.0, device),
    }


def fp8_per_tensor_weights(
    experts: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    """FP8 weights ``[E, M, K]`` and the three float32 per-expert output
    scales (``[local_num_experts]``)."""
    h, i = shape.hidden, shape.intermediate
    return {
        "gemm1_weights": _fp8(_randn((experts, 2 * i, h), generator, device)),
        "output1_scales_scalar": _full((experts,), h**-0.5, device),
        "output1_scales_gate_scalar": _full((experts,), h**-0.5, device),
        "gemm2_weights": _fp8(_randn((experts, h, i), generator, device)),
        "output2_scales_scalar": _full((experts,), i**-0.5, device),
    }


def fp8_per_tensor_activations(
    tokens: int, shape: Shape, generator: torch.Generator, device: str
) -> Arguments:
    return {"hidden_states": _fp8(_randn((tokens, shape.hidden), generator, device))}


PAIRS: tuple[Pair, ...] = (
    Pair(
        "bf16",
        "trtllm_bf16_moe",
        "trtllm_bf16_routed_moe",
        bf16_weights,
        bf16_activations,
        {"use_shuffled_weight": True, "weight_layout": BLOCK_MAJOR_K},
    ),
    Pair(
        "fp8-block-scale",
        "trtllm_fp8_block_scale_moe",
        "trtllm_fp8_block_scale_routed_moe",
        fp8_block_scale_weights,
        fp8_block_scale_activations,
        {"use_shuffled_weight": False, "weight_layout": MAJOR_K},
    ),
    Pair(
        "fp8-per-tensor",
        "trtllm_fp8_per_tensor_scale_moe",
        "trtllm_fp8_per_tensor_scale_routed_moe",
        fp8_per_tensor_weights,
        fp8_per_tensor_activations,
        # Only Llama-4 routing scales the input; vLLM passes False otherwise.
        {"use_routing_scales_on_input": False},
    ),
)


def unavailable(gpus: tuple[Gpu, ...]) -> str | None:
    """Why no kernel pair can run here, or None."""
    if not gpus or any(g.capability not in SUPPORTED_CAPABILITIES for g in gpus):
        return "needs SM100"
    try:
        from flashinfer import fused_moe  # noqa: F401
    except Exception as exc:
        return f"FlashInfer does not import ({describe_error(exc)})"
    return None


def missing(pair: Pair, fused_moe: Any) -> str | None:
    """Why this FlashInfer cannot run ``pair``, or None."""
    absent = [f for f in (pair.monolithic, pair.routed) if not hasattr(fused_moe, f)]
    if absent:
        return f"this FlashInfer has no {' / '.join(absent)}"
    return None


def keywords(function: Callable[..., Any], arguments: Mapping[str, Any]) -> Arguments:
    """The arguments ``function`` declares (all of them if it takes
    ``**kwargs``). A required one that is missing still fails the call."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(arguments)
    return {name: value for name, value in arguments.items() if name in parameters}


def routed_argument(ids: Any, weights: Any, routed: Callable[..., Any]) -> Any:
    """The routed kernel's ``topk_ids``: a (ids, weights) pair where the API
    documents it, else packed ``(expert_id << 16) | bf16 weight bits``."""
    import torch

    annotation = inspect.signature(routed).parameters["topk_ids"].annotation
    if "Tuple" in str(annotation) or "pair" in (routed.__doc__ or ""):
        return ids.to(torch.int32), weights.to(torch.bfloat16)
    bits = weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (ids.to(torch.int32) << 16) | bits


def cosine_per_token(a: Any, b: Any) -> Any:
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _output(result: Any) -> Any:
    """FlashInfer returns the tensor, or (newer, and with do_finalize) a list
    whose first item it is."""
    return result[0] if isinstance(result, (list, tuple)) else result


@dataclass(frozen=True)
class KernelRun:
    pair: str
    case: Case
    min_cosine: float
    low_cosine_tokens: int
    selected: reference.Comparison | None  # from routing_replay_out, when available
    error: str | None = None  # the kernel raised (after earlier cases ran)

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.low_cosine_tokens == 0
            and (self.selected is None or self.selected.passed)
        )

    def row(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "case": self.case.name,
            "in_bug_envelope": self.case.in_bug_envelope,
            "min_cosine": None if self.error else self.min_cosine,  # JSON has no NaN
            "low_cosine_tokens": self.low_cosine_tokens,
            "wrong_experts": None
            if self.selected is None
            else (self.selected.wrong_experts + self.selected.invalid_ids),
            "error": self.error,
            "passed": self.passed,
        }


class PairReport(NamedTuple):
    pair: str
    runs: tuple[KernelRun, ...]
    not_run: str | None


def shared_arguments(
    pair: Pair, case: Case, weights: Arguments, activations: Arguments, shape: Shape
) -> Arguments:
    """What both kernels of ``pair`` get for ``case``: everything but the
    routing (``routing_logits`` / ``topk_ids``)."""
    return {
        **activations,
        **weights,
        **pair.options,
        "routing_bias": None,
        "num_experts": case.experts,
        "top_k": case.top_k,
        "n_group": None,
        "topk_group": None,
        "intermediate_size": shape.intermediate,
        "local_expert_offset": 0,
        "local_num_experts": case.experts,
        "routed_scaling_factor": None,
        "routing_method_type": ROUTING_METHOD_RENORMALIZE,
    }


def run_case(
    pair: Pair,
    case: Case,
    flashinfer: tuple[int, ...],
    weights: Arguments,
    fused_moe: Any,
    device: str = "cuda",
    shape: Shape = LAYER,
) -> KernelRun:
    """One case through both kernels of ``pair``; raises what they raise."""
    import torch

    monolithic = getattr(fused_moe, pair.monolithic)
    routed = getattr(fused_moe, pair.routed)
    generator = torch.Generator(device=device).manual_seed(case.tokens)
    activations = pair.activations(case.tokens, shape, generator, device)
    shared = shared_arguments(pair, case, weights, activations, shape)
    logits = case.logits(device)
    host_logits = logits.cpu()
    ids, routing_weights = reference.route(
        host_logits, case.top_k, "renormalize", flashinfer
    )
    replay = None
    if "routing_replay_out" in inspect.signature(monolithic).parameters:
        replay = torch.full(
            (case.tokens, case.top_k), -1, dtype=torch.int16, device=device
        )
    fused = monolithic(
        **keywords(
            monolithic,
            {**shared, "routing_logits": logits, "routing_replay_out": replay},
        )
    )
    topk = routed_argument(ids.to(device), routing_weights.to(device), routed)
    unfused = routed(**keywords(routed, {**shared, "topk_ids": topk}))
    cosine = cosine_per_token(_output(fused), _output(unfused)).cpu()
    selected = None
    if replay is not None:
        key = reference.keys(host_logits, "renormalize", flashinfer)
        selected = reference.compare(replay.cpu(), ids, key)
    return KernelRun(
        pair=pair.name,
        case=case,
        min_cosine=float(cosine.min()),
        low_cosine_tokens=int((cosine < COSINE_FLOOR).sum()),
        selected=selected,
    )


def check_pair(
    pair: Pair,
    cases: Sequence[Case],
    flashinfer: tuple[int, ...],
    fused_moe: Any,
    device: str = "cuda",
    shape: Shape = LAYER,
) -> PairReport:
    """Every case through ``pair``. If the first call raises, the pair is not
    run (the API or this GPU does not take it: the error says which); a later
    raise fails that case (the kernel took these arguments before, so the
    routing is the suspect: garbage expert ids can fault)."""
    import torch

    reason = missing(pair, fused_moe)
    if reason is not None:
        return PairReport(pair.name, (), reason)
    runs: list[KernelRun] = []
    weights: Arguments = {}
    built_for = None
    for case in cases:
        try:
            if case.experts != built_for:
                weights = {}  # free the previous expert count's weights first
                generator = torch.Generator(device=device).manual_seed(case.experts)
                weights = pair.weights(case.experts, shape, generator, device)
                built_for = case.experts
            runs.append(
                run_case(pair, case, flashinfer, weights, fused_moe, device, shape)
            )
        except Exception as exc:
            error = describe_error(exc).splitlines()[0]
            if not runs:
                return PairReport(pair.name, (), error)
            runs.append(
                KernelRun(pair.name, case, float("nan"), case.tokens, None, error)
            )
    return PairReport(pair.name, tuple(runs), None)


def check(
    cases: Sequence[Case],
    flashinfer: tuple[int, ...],
    fused_moe: Any = None,
    device: str = "cuda",
    shape: Shape = LAYER,
    pairs: Sequence[Pair] = PAIRS,
) -> list[PairReport]:
    """Every pair this FlashInfer has, over ``cases``."""
    if fused_moe is None:
        fused_moe = importlib.import_module("flashinfer.fused_moe")
    return [
        check_pair(pair, cases, flashinfer, fused_moe, device, shape) for pair in pairs
    ]
