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
    nan_weights: int = 0  # tokens with a NaN or infinite weight
    zero_weights: int = (
        0  # tokens whose weights are all 0 where the reference's are not
    )

    @property
    def passed(self) -> bool:
        return not (
            self.wrong_experts
            or self.invalid_ids
            or self.weight_errors
            or self.nan_weights
        )


def token_masks(
    ids: torch.Tensor, reference_ids: torch.Tensor, reference_keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: (wrong, excused, invalid). Invalid: an out-of-range or repeated
    id. Excused: a different expert set where the k-th and (k+1)-th reference
    keys are within one bf16 ulp and every picked expert's key reaches the
    k-th. Wrong: any other different expert set."""
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
    return wrong, excused, invalid_tokens


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

    wrong, excused, invalid_tokens = token_masks(ids, reference_ids, reference_keys)
    differs = wrong | excused
    tokens = reference_ids.shape[0]
    weight_errors = torch.zeros(tokens, dtype=torch.bool)
    if weights is not None and reference_weights is not None:
        ids = ids.long().cpu()
        order = torch.argsort(ids, dim=-1)
        reference_order = torch.argsort(reference_ids.long().cpu(), dim=-1)
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


#: FlashInfer's sigmoid routers divide by ``sum + 1e-20`` from 0.6.15 (DeepSeekV3
#: without groups, MiniMax2) and 0.6.17 (with groups): a token whose selected
#: scores are all 0 gets weights 0, not 0 / 0 (flashinfer#3803, #3946).
SIGMOID_SUM_EPSILON = 1e-20


def route_sigmoid(
    logits: torch.Tensor,
    bias: torch.Tensor,
    k: int,
    *,
    n_group: int = 1,
    topk_group: int = 1,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DeepSeek-V3's router (vLLM's ``grouped_topk`` / FlashInfer's DeepSeekV3 and
    MiniMax2), in fp32 as the kernels compute it: s = sigmoid(x), flushed to 0
    below the smallest normal float (the kernels are built with fast math);
    the selection key s + bias; with groups, each group scores the sum of its
    two best keys and only the ``topk_group`` best groups compete; weights
    s_S / (sum(s_S) + 1e-20) * scale, emitted as bf16.

    Returns ids [T, k], weights [T, k], the keys [T, E] the top-k compared
    (-inf outside the chosen groups) and, with groups, the group scores [T, G]."""
    import torch

    scores = torch.sigmoid(logits.float())
    scores = torch.where(
        scores < torch.finfo(torch.float32).tiny, torch.zeros_like(scores), scores
    )
    keys_ = scores + bias.float()
    group_scores = None
    if n_group > 1:
        tokens, experts = keys_.shape
        grouped = keys_.view(tokens, n_group, experts // n_group)
        group_scores = (
            torch.sort(grouped, dim=-1, descending=True).values[..., :2].sum(-1)
        )
        chosen = top_k(group_scores, topk_group)
        allowed = torch.zeros_like(group_scores, dtype=torch.bool)
        allowed.scatter_(1, chosen, True)
        mask = allowed.repeat_interleave(experts // n_group, dim=1)
        keys_ = torch.where(mask, keys_, torch.full_like(keys_, float("-inf")))
    ids = top_k(keys_, k)
    return ids, sigmoid_weights(scores, ids, scale), keys_, group_scores


def sigmoid_weights(
    scores: torch.Tensor, ids: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """The weights of the experts ``ids`` from the un-biased ``scores``:
    s_S / (sum(s_S) + 1e-20) * scale, emitted as bf16."""
    import torch

    selected = torch.gather(scores, -1, ids)
    weights = selected / (selected.sum(-1, keepdim=True) + SIGMOID_SUM_EPSILON) * scale
    return weights.to(torch.bfloat16).float()


def compare_routed(
    ids: torch.Tensor,
    weights: torch.Tensor,
    reference_ids: torch.Tensor,
    reference_keys: torch.Tensor,
    reference_weights: torch.Tensor,
    group_scores: torch.Tensor | None = None,
    topk_group: int = 0,
) -> Comparison:
    """Per token, what a routing kernel hands its GEMMs against the reference:
    the expert set (near-ties excused as in ``token_masks``; with expert groups
    also a near-tie between the last chosen group's score and the next one's:
    with random logits about 1 % of tokens tie there to three digits), NaN or
    infinite weights, and the weights (sorted by expert id) within atol 1e-2 /
    rtol 1.6e-2. Unlike ``compare`` the weights need not sum to 1: a route
    scale multiplies them, and all-zero scores give zeros."""
    import torch

    wrong, excused, invalid = token_masks(ids, reference_ids, reference_keys)
    if group_scores is not None and 0 < topk_group < group_scores.shape[-1]:
        ordered = torch.sort(group_scores.float().cpu(), -1, descending=True).values
        last, next_ = ordered[:, topk_group - 1], ordered[:, topk_group]
        group_tie = (last - next_).abs() <= ulp_bf16(last)
        excused = excused | (wrong & group_tie)
        wrong = wrong & ~group_tie
    ids = ids.long().cpu()
    weights = weights.float().cpu()
    nan = ~torch.isfinite(weights).all(-1)
    order = torch.argsort(ids, dim=-1)
    reference_order = torch.argsort(reference_ids.long().cpu(), dim=-1)
    got = torch.gather(weights, -1, order)
    want = torch.gather(reference_weights.float().cpu(), -1, reference_order)
    close = torch.isclose(got, want, atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL).all(-1)
    weight_errors = ~close & ~(wrong | excused) & ~nan & ~invalid
    vanished = (weights == 0).all(-1) & (reference_weights.float().cpu() != 0).any(-1)
    return Comparison(
        tokens=reference_ids.shape[0],
        wrong_experts=int(wrong.sum()),
        near_ties=int(excused.sum()),
        invalid_ids=int(invalid.sum()),
        weight_errors=int(weight_errors.sum()),
        nan_weights=int(nan.sum()),
        zero_weights=int(vanished.sum()),
    )
