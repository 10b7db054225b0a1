# SPDX-License-Identifier: Apache-2.0
"""Reference MoE routers in plain PyTorch, and the rule for comparing a
kernel's routing with them.

The math (FlashInfer's ``RoutingKernel.cuh`` / ``RoutingKernelTopK.cuh`` and
vLLM's ``fused_topk``), with x one token's router logits and K = top_k:

* vLLM Renormalize: p = softmax(fp32(x)); S = top-K(p); w = p_S / sum(p_S).
* FlashInfer Renormalize (1), and RenormalizeNaive (4) from 0.6.8: S = top-K of
  the keys the kernel reads (bf16 for bf16 logits, and always bf16 up to 0.6.7;
  fp32 logits from 0.6.8); w = softmax_fp32(key_S); weights emitted as bf16.
* FlashInfer RenormalizeNaive up to 0.6.7: p = softmax_fp32(bf16(x)) over all
  experts; S = top-K(p) on fp32 p; w = p_S / sum(p_S); emitted as bf16.

Top-K ranks by value and, at equal values, the lower expert index first (the
kernel packs ``65535 - index`` below the value bits). The three give the same
experts and weights in exact arithmetic; they differ only at near-ties and by
rounding, which the comparison rule allows for.

torch is imported by the functions that need it, so importing this module
costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Method = Literal["vllm", "renormalize", "renormalize_naive"]
Release = tuple[int, ...]  # a FlashInfer Version.release, e.g. (0, 6, 7)

#: FlashInfer 0.6.8 reads fp32 logits as fp32 and runs RenormalizeNaive as
#: Renormalize (flashinfer#2534, #2803).
DTYPE_AWARE_ROUTING = (0, 6, 8)

WEIGHT_ATOL = 1e-2
WEIGHT_RTOL = 1.6e-2


def keys(logits: torch.Tensor, method: Method, flashinfer: Release) -> torch.Tensor:
    """The values the kernel's top-K compares, as fp32 (exactly representable)."""
    import torch

    if method == "vllm":
        return torch.softmax(logits.float(), dim=-1)
    if method == "renormalize_naive" and flashinfer < DTYPE_AWARE_ROUTING:
        return torch.softmax(logits.to(torch.bfloat16).float(), dim=-1)
    reads_fp32 = logits.dtype == torch.float32 and flashinfer >= DTYPE_AWARE_ROUTING
    return logits.float() if reads_fp32 else logits.to(torch.bfloat16).float()


def top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values per row, descending; equal values: lower
    index first."""
    import torch

    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def route(
    logits: torch.Tensor, k: int, method: Method, flashinfer: Release = (0, 7, 4)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ids (int64 [T, k], descending key order) and fp32 weights [T, k]."""
    import torch

    key = keys(logits, method, flashinfer)
    ids = top_k(key, k)
    selected = torch.gather(key, -1, ids)
    if method == "vllm" or (
        method == "renormalize_naive" and flashinfer < DTYPE_AWARE_ROUTING
    ):
        weights = selected / selected.sum(-1, keepdim=True)
    else:
        weights = torch.softmax(selected, dim=-1)
    if method != "vllm":
        weights = weights.to(torch.bfloat16).float()  # the kernel emits bf16
    return ids, weights


def ulp_bf16(value: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at ``value`` (8 bits of mantissa)."""
    import torch

    magnitude = value.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude)) - 7)


@dataclass(frozen=True)
class Comparison:
    """How a kernel's routing compares with the reference on one case."""

    tokens: int
    wrong_experts: int  # tokens whose expert set differs (near-ties excused)
    near_ties: int  # tokens excused because the k-th and (k+1)-th keys tie
    invalid_ids: int  # tokens with an out-of-range or repeated expert id
    weight_errors: int  # tokens whose weights are outside bf16 tolerance

    @property
    def passed(self) -> bool:
        return not (self.wrong_experts or self.invalid_ids or self.weight_errors)


def compare(
    ids: torch.Tensor,
    reference_ids: torch.Tensor,
    reference_keys: torch.Tensor,
    weights: torch.Tensor | None = None,
    reference_weights: torch.Tensor | None = None,
) -> Comparison:
    """Compare per token: the expert sets must be equal, except where the k-th
    and (k+1)-th reference keys are within one bf16 ulp (then either expert is
    right); weights (if given) after sorting by expert id, within
    atol 1e-2 / rtol 1.6e-2, summing to 1 within 1e-2."""
    import torch

    ids = ids.long().cpu()
    reference_ids = reference_ids.long().cpu()
    reference_keys = reference_keys.float().cpu()
    tokens, k = reference_ids.shape
    experts = reference_keys.shape[-1]
    invalid = (ids < 0) | (ids >= experts)
    sorted_ids = torch.sort(ids.clamp(0, experts - 1), dim=-1).values
    repeated = (
        (sorted_ids[:, 1:] == sorted_ids[:, :-1]).any(-1)
        if k > 1
        else invalid[:, 0] & False
    )
    invalid_tokens = invalid.any(-1) | repeated
    same = torch.sort(ids, dim=-1).values == torch.sort(reference_ids, dim=-1).values
    differs = ~same.all(-1)
    ordered = torch.sort(reference_keys, dim=-1, descending=True).values
    if k < experts:
        kth, next_ = ordered[:, k - 1], ordered[:, k]
        tie = (kth - next_).abs() <= ulp_bf16(kth)
    else:
        tie = torch.zeros(tokens, dtype=torch.bool)
    # An excused token must still pick only experts whose keys reach the k-th.
    picked = torch.gather(reference_keys, -1, ids.clamp(0, experts - 1))
    reaches = (picked >= (ordered[:, k - 1 : k] - ulp_bf16(ordered[:, k - 1 : k]))).all(
        -1
    )
    excused = differs & tie & reaches & ~invalid_tokens
    wrong = differs & ~excused & ~invalid_tokens
    weight_errors = torch.zeros(tokens, dtype=torch.bool)
    if weights is not None and reference_weights is not None:
        order = torch.argsort(ids, dim=-1)
        reference_order = torch.argsort(reference_ids, dim=-1)
        got = torch.gather(weights.float().cpu(), -1, order)
        want = torch.gather(reference_weights.float().cpu(), -1, reference_order)
        close = torch.isclose(got, want, atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL).all(-1)
        sums = (weights.float().cpu().sum(-1) - 1).abs() < 1e-2
        weight_errors = ~(close & sums) & ~differs & ~invalid_tokens
    return Comparison(
        tokens=tokens,
        wrong_experts=int(wrong.sum()),
        near_ties=int(excused.sum()),
        invalid_ids=int(invalid_tokens.sum()),
        weight_errors=int(weight_errors.sum()),
    )
