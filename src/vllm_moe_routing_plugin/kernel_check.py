# SPDX-License-Identifier: Apache-2.0
"""The fused kernel itself, on an SM100/SM103 GPU: FlashInfer's monolithic
``trtllm_bf16_moe`` (routing in the kernel) against ``trtllm_bf16_routed_moe``
fed the reference routing, on the same inputs and weights.

The two calls share every input but the routing, so their outputs agree per
token (cosine) exactly when the kernel routed as the reference did; where the
FlashInfer version exposes it (``routing_replay_out``, 0.6.8+), the experts the
kernel selected are compared directly too. The FP8 block-scale and per-tensor
pairs are not implemented. Nothing here can run on a GPU outside SM100/SM103:
``unavailable()`` says why, and ``verify`` prints "not run: needs SM100".
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from . import reference
from .cases import Case
from .facts import Gpu
from .policy import SUPPORTED_CAPABILITIES

HIDDEN = 1024
INTERMEDIATE = 512
COSINE_FLOOR = 0.99


def unavailable(gpus: tuple[Gpu, ...]) -> str | None:
    """Why the kernel check cannot run here, or None."""
    if not gpus or any(g.capability not in SUPPORTED_CAPABILITIES for g in gpus):
        return "needs SM100"
    try:
        from flashinfer import fused_moe
    except Exception as exc:
        return f"FlashInfer does not import ({type(exc).__name__}: {exc})"
    if not all(
        hasattr(fused_moe, f) for f in ("trtllm_bf16_moe", "trtllm_bf16_routed_moe")
    ):
        return "this FlashInfer has no trtllm_bf16_moe / trtllm_bf16_routed_moe"
    return None


@dataclass(frozen=True)
class KernelRun:
    case: Case
    min_cosine: float
    low_cosine_tokens: int
    selected: reference.Comparison | None  # from routing_replay_out, when available

    @property
    def passed(self) -> bool:
        return self.low_cosine_tokens == 0 and (
            self.selected is None or self.selected.passed
        )


def cosine_per_token(a: Any, b: Any) -> Any:
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def routed_argument(ids: Any, weights: Any, routed: Any) -> Any:
    """The routed kernel's ``topk_ids``: a (ids, weights) pair where the API
    documents it, else packed ``(expert_id << 16) | bf16 weight bits``."""
    import torch

    doc = routed.__doc__ or ""
    if "Tuple" in str(inspect.signature(routed).parameters["topk_ids"].annotation) or (
        "pair" in doc
    ):
        return ids.to(torch.int32), weights.to(torch.bfloat16)
    bits = weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (ids.to(torch.int32) << 16) | bits


def run_bf16(
    case: Case, flashinfer: tuple[int, ...], device: str = "cuda"
) -> KernelRun:
    import torch
    from flashinfer import fused_moe

    generator = torch.Generator(device="cpu").manual_seed(case.experts * 7 + case.top_k)
    e, k, t = case.experts, case.top_k, case.tokens
    w1 = (torch.randn(e, 2 * INTERMEDIATE, HIDDEN, generator=generator) * 0.02).to(
        device
    )
    w2 = (torch.randn(e, HIDDEN, INTERMEDIATE, generator=generator) * 0.02).to(device)
    w1, w2 = w1.to(torch.bfloat16), w2.to(torch.bfloat16)
    hidden = torch.randn(t, HIDDEN, generator=generator).to(torch.bfloat16).to(device)
    logits = case.logits(device)
    method = int(fused_moe.RoutingMethodType.Renormalize)
    ids, weights = reference.route(logits.cpu(), k, "renormalize", flashinfer)
    common = dict(
        num_experts=e,
        top_k=k,
        n_group=None,
        topk_group=None,
        intermediate_size=INTERMEDIATE,
        local_expert_offset=0,
        local_num_experts=e,
        routing_method_type=method,
    )
    monolithic_args: dict[str, Any] = {}
    replay = None
    if "routing_replay_out" in inspect.signature(fused_moe.trtllm_bf16_moe).parameters:
        replay = torch.full((t, k), -1, dtype=torch.int16, device=device)
        monolithic_args["routing_replay_out"] = replay
    fused = fused_moe.trtllm_bf16_moe(
        logits, None, hidden, w1, w2, **common, **monolithic_args
    )
    routed = fused_moe.trtllm_bf16_routed_moe(
        routed_argument(
            ids.to(device), weights.to(device), fused_moe.trtllm_bf16_routed_moe
        ),
        hidden,
        w1,
        w2,
        **common,
    )
    fused = fused[0] if isinstance(fused, (list, tuple)) else fused
    routed = routed[0] if isinstance(routed, (list, tuple)) else routed
    cosine = cosine_per_token(fused, routed).cpu()
    key = reference.keys(logits.cpu(), "renormalize", flashinfer)
    selected = None
    if replay is not None:
        selected = reference.compare(replay.cpu(), ids, key)
    return KernelRun(
        case=case,
        min_cosine=float(cosine.min()),
        low_cosine_tokens=int((cosine < COSINE_FLOOR).sum()),
        selected=selected,
    )
