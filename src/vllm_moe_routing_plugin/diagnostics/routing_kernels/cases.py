# SPDX-License-Identifier: Apache-2.0
"""The routing-kernel check's cases, as data: each names the catalogue entry
(``bugs.py``) whose layers it is, or none for a control.

* flashinfer#2822: Renormalize with every logit of a token negative, inside its
  envelope (128 < experts <= 512, top_k < 10) at token counts that reach each
  path of the kernels (1, 17: one warp / block; 256: the largest single
  cluster; 257 and 2048: the histogram path, where 384 experts / top-6 went
  wrong on 0.6.6 only), and outside it (128 / top-8, 256 / top-10) as controls.
* flashinfer#3803 / #3946: DeepSeekV3 without / with expert groups where every
  selected sigmoid underflows (logits -100 to -110; the kernels flush to 0).
* flashinfer#3875: a GLM-5-like layer (256 experts, top-8, no groups) with
  biases of 12 - 14 and logits of -13 to -12.5 (sigmoid scores of 2.3e-6 -
  3.7e-6), which ``(sigmoid + bias) - bias`` rounds to the nearest multiple
  of 9.5e-7 (fp32's spacing at 8 - 16): up to 20 % off per score, 25 % per
  renormalised weight. FlashInfer's sigmoid itself
  (``0.5 * tanh(x / 2) + 0.5``, which fast math makes ``tanh.approx.f32``)
  is within 1.4 % there on an H200 (``scripts/sigmoid_probe.cu``), and 0
  below a logit of about -16, so the case stays above that.
* flashinfer#3499: MiniMax2 with a route scale of 3 (Step-3.5), where the
  release has MiniMax2 routing (0.6.8 on).
* Controls: random logits for each method, and the GLM-like scores without the
  large bias (no cancellation: what FlashInfer's sigmoid makes of them).
* A measured limit, not a catalogue entry: the precision of FlashInfer's
  routing sigmoid itself, ``0.5f * tanhf(0.5f * x) + 0.5f``
  (``sigmoid_accurate`` in ``RoutingKernel.cuh``, 0.6.x and 0.7.x), which the
  kernels' ``-use_fast_math`` makes ``tanh.approx.f32``: on an H200 it is 0
  below a logit of about -16 and 25 % off at -15 to -14
  (``scripts/sigmoid_probe.cu``). Each token routes one expert at logit 0
  (sigmoid 0.5, exact) and ``top_k - 1`` at logits drawn from -24 to -4, all
  in the first group, with a zero bias (so no ``(s + b) - b`` rounding,
  flashinfer#3875, enters); the weight each of those gets, next to the
  anchor's, is about twice its sigmoid, so its error is the sigmoid's as it
  reaches the GEMMs. ``check.measure_sigmoid`` reports, per band of logits,
  how many came back 0 and how far off the rest are, with and without
  groups (the custom and the grouped DeepSeek kernels each compute it).

Logits are bf16 for Renormalize and fp32 for the sigmoid methods, biases bf16,
as vLLM hands them to FlashInfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .. import cases as renormalize_cases

if TYPE_CHECKING:
    import torch

Method = Literal["Renormalize", "DeepSeekV3", "MiniMax2"]
Logits = Literal["randn", "negative", "underflow", "small", "bands"]
Bias = Literal["none", "small", "large", "zero"]
Measure = Literal["sigmoid"]

#: The sigmoid-limit cases: the band of logits the ``top_k - 1`` measured
#: experts are drawn from, the anchor's logit, and every other expert's
#: (FlashInfer's sigmoid and the exact one are both below 1e-43 there).
BAND_LOGITS = (-24.0, -4.0)
ANCHOR_LOGIT = 0.0
OTHER_LOGIT = -100.0


@dataclass(frozen=True)
class RoutingCase:
    method: Method
    experts: int
    top_k: int
    tokens: int
    logits: Logits
    bias: Bias = "none"
    n_group: int = 0
    topk_group: int = 0
    scale: float = 1.0
    bug: str | None = None  # the catalogue entry whose layers this is; None: control
    seed: int = 0
    measures: Measure | None = None  # a measured limit, reported, never a failure

    @property
    def name(self) -> str:
        text = f"{self.method}/E{self.experts}/k{self.top_k}"
        if self.n_group > 1:
            text += f"/g{self.n_group}.{self.topk_group}"
        text += f"/T{self.tokens}/{self.logits}"
        if self.bias != "none":
            text += f"/bias-{self.bias}"
        if self.scale != 1.0:
            text += f"/scale{self.scale:g}"
        return text

    @property
    def logits_dtype(self) -> str:
        return "bf16" if self.method == "Renormalize" else "fp32"

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Router logits [tokens, experts] and the bias [experts] (None without)."""
        import torch

        if self.method == "Renormalize":
            shift = -20.0 if self.logits == "negative" else 0.0
            case = renormalize_cases.Case(
                self.experts, self.top_k, self.tokens, "shift", shift, self.seed
            )
            return case.logits(), None
        generator = torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.experts * 1009 + self.top_k * 31 + self.tokens
        )
        shape = (self.tokens, self.experts)
        if self.logits == "underflow":
            x = -100.0 - 10.0 * torch.rand(shape, generator=generator)
        elif self.logits == "small":  # sigmoid 2.3e-6 - 3.7e-6
            x = -13.0 + 0.5 * torch.rand(shape, generator=generator)
        elif self.logits == "bands":  # the anchor and top_k - 1 in the first group
            group = self.experts // max(self.n_group, 1)
            planted = torch.argsort(torch.rand(self.tokens, group, generator=generator))
            planted = planted[:, : self.top_k]
            low, high = BAND_LOGITS
            band = low + (high - low) * torch.rand(
                (self.tokens, self.top_k - 1), generator=generator
            )
            x = torch.full(shape, OTHER_LOGIT)
            x.scatter_(1, planted[:, :1], ANCHOR_LOGIT)
            x.scatter_(1, planted[:, 1:], band)
        else:
            x = torch.randn(shape, generator=generator)
        if self.bias == "large":  # GLM-5's biases are ~11 - 35
            b = 12.0 + 2.0 * torch.rand(self.experts, generator=generator)
        elif self.bias == "zero":
            b = torch.zeros(self.experts)
        else:
            b = 0.05 * torch.randn(self.experts, generator=generator)
        bias = None if self.bias == "none" else b.to(torch.bfloat16)
        return x.float(), bias


def _renormalize(
    experts: int, top_k: int, tokens: tuple[int, ...], logits: Logits, bug: str | None
) -> list[RoutingCase]:
    return [
        RoutingCase("Renormalize", experts, top_k, t, logits, bug=bug) for t in tokens
    ]


def _sigmoid(
    method: Method,
    tokens: tuple[int, ...],
    logits: Logits,
    bias: Bias,
    *,
    groups: bool = False,
    scale: float = 1.0,
    bug: str | None = None,
    measures: Measure | None = None,
) -> list[RoutingCase]:
    n_group, topk_group = (8, 4) if groups else (1, 1)
    if method == "MiniMax2":
        n_group, topk_group = 0, 0
    return [
        RoutingCase(
            method,
            256,
            8,
            t,
            logits,
            bias,
            n_group,
            topk_group,
            scale,
            bug,
            measures=measures,
        )
        for t in tokens
    ]


TOKENS = (1, 17, 256, 257, 2048)

CASES: tuple[RoutingCase, ...] = (
    # flashinfer#2822, inside its envelope
    *_renormalize(256, 8, TOKENS, "negative", "flashinfer#2822"),
    *_renormalize(512, 8, (1, 257, 2048), "negative", "flashinfer#2822"),
    *_renormalize(384, 6, (256, 2048), "negative", "flashinfer#2822"),
    *_renormalize(160, 8, (17, 257), "negative", "flashinfer#2822"),
    # ... and outside it
    *_renormalize(128, 8, (17, 257, 2048), "negative", None),
    *_renormalize(256, 10, (17, 257), "negative", None),
    # random logits
    *_renormalize(256, 8, (17, 2048), "randn", None),
    *_renormalize(512, 8, (257,), "randn", None),
    # DeepSeekV3, every selected sigmoid underflowing
    *_sigmoid("DeepSeekV3", (1, 300), "underflow", "small", bug="flashinfer#3803"),
    *_sigmoid(
        "DeepSeekV3", (1, 300), "underflow", "small", groups=True, bug="flashinfer#3946"
    ),
    # a GLM-5-like layer: bias 12 - 14, scores ~3e-6
    *_sigmoid("DeepSeekV3", (1, 300, 2048), "small", "large", bug="flashinfer#3875"),
    # ... and the same scores without the large bias: no cancellation
    *_sigmoid("DeepSeekV3", (300, 2048), "small", "small"),
    # MiniMax2 with a route scale of 3
    *_sigmoid("MiniMax2", (1, 300), "randn", "small", scale=3.0, bug="flashinfer#3499"),
    # controls
    *_sigmoid("DeepSeekV3", (1, 300, 2048), "randn", "small"),
    *_sigmoid("DeepSeekV3", (1, 300, 2048), "randn", "small", groups=True),
    *_sigmoid("MiniMax2", (300,), "randn", "small"),
    # the precision of FlashInfer's sigmoid: a measured limit, no catalogue entry
    *_sigmoid("DeepSeekV3", (2048,), "bands", "zero", measures="sigmoid"),
    *_sigmoid("DeepSeekV3", (2048,), "bands", "zero", groups=True, measures="sigmoid"),
)


def quick(cases: tuple[RoutingCase, ...] = CASES) -> tuple[RoutingCase, ...]:
    """At most two token counts per shape: the smallest and the largest."""
    kept: dict[tuple[object, ...], list[RoutingCase]] = {}
    for case in cases:
        key = (
            case.method,
            case.experts,
            case.top_k,
            case.logits,
            case.bias,
            case.n_group,
            case.scale,
            case.bug,
            case.measures,
        )
        kept.setdefault(key, []).append(case)
    return tuple(
        case
        for group in kept.values()
        for case in group
        if case.tokens in (min(c.tokens for c in group), max(c.tokens for c in group))
    )
