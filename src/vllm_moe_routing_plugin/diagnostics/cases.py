# SPDX-License-Identifier: Apache-2.0
"""Adversarial router logits for checking a kernel's routing.

flashinfer#2822 picks garbage experts when every logit is negative (normal for
Qwen3.5-35B-A3B), with 128 < experts <= 512 and top_k < 10; ties and large
magnitudes probe the ordering; token counts reach each path of the routing
kernels (static block <= 4, dynamic block <= 16, single cluster <= 256,
cooperative / multi-kernel beyond).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Kind = Literal["shift", "tied", "large"]

EXPERTS = (128, 160, 256, 512)
TOP_K = (4, 8, 10)
TOKENS = (1, 4, 5, 16, 17, 256, 257, 1024, 4096)
SHIFTS = (3.0, 0.0, -5.0, -20.0)


@dataclass(frozen=True)
class Case:
    experts: int
    top_k: int
    tokens: int
    kind: Kind
    shift: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        what = f"randn{self.shift:+g}" if self.kind == "shift" else self.kind
        return f"E{self.experts}/k{self.top_k}/T{self.tokens}/{what}"

    @property
    def in_bug_envelope(self) -> bool:
        """Inside the flashinfer#2822 envelope (128 < E <= 512, top_k < 10)."""
        return 128 < self.experts <= 512 and self.top_k < 10

    def logits(self, device: str = "cpu") -> torch.Tensor:
        """bf16 router logits [tokens, experts]; no NaN, no signed zeros (the
        kernel orders them bitwise, torch does not)."""
        import torch

        generator = torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.experts * 1009 + self.top_k * 31 + self.tokens
        )
        shape = (self.tokens, self.experts)
        if self.kind == "shift":
            x = torch.randn(shape, generator=generator) + self.shift
        elif self.kind == "tied":
            x = torch.floor(2 * torch.randn(shape, generator=generator)) / 2 - 3
        else:
            x = torch.randn(shape, generator=generator) * 3e4
        x = x.to(torch.bfloat16)
        x = torch.where(x == 0, torch.full_like(x, 2.0**-10), x)
        return x.to(device)


def adversarial(
    experts: tuple[int, ...] = EXPERTS,
    top_ks: tuple[int, ...] = TOP_K,
    tokens: tuple[int, ...] = TOKENS,
) -> list[Case]:
    """Every combination of experts, top_k and token count, with shifted
    (all-negative for -5 and -20), heavily tied and large-magnitude logits."""
    cases = []
    for e in experts:
        for k in top_ks:
            for t in tokens:
                cases += [Case(e, k, t, "shift", s) for s in SHIFTS]
                cases += [Case(e, k, t, "tied"), Case(e, k, t, "large")]
    return cases
