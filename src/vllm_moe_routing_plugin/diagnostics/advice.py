# SPDX-License-Identifier: Apache-2.0
"""Which FlashInfer to install over vLLM 0.18 / 0.19's pin for the fixed
routing, as data, and the install command ``status`` prints.

vLLM 0.18 and 0.19 pin ``flashinfer-python==0.6.6`` (0.19 also
``flashinfer-cubin==0.6.6``), whose fused kernels route Renormalize layers of
more than 128 experts wrongly (flashinfer#2822, fixed in 0.6.7). The plugin's
gate stays at the first fixed release: the gate decides where in-kernel
routing is correct; this advice decides what to install. The evidence (which
of vLLM's calls bind to which FlashInfer, and why the advised version was
chosen) is in docs/flashinfer-advice.md, produced by
``bash scripts/nox.sh -t advice``; ``tests/test_bindings.py`` fails if a call
of vLLM's fused-MoE code stops binding to the advised version.

Remove when vLLM 0.18 and 0.19 are no longer supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import facts, policy
from ..about import docs_url
from ..decision import Decision

#: vLLM never shipped FlashInfer 0.6.7 (docs/flashinfer-advice.md).
PR_38188 = (
    "vLLM never shipped FlashInfer 0.6.7: its bump (vLLM PR #38188) was closed "
    "after nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-NVFP4 gave repetitive output "
    "with it on GB300 (TP 2, expert parallel, MTP speculative decoding; cause not "
    "established)"
)


class Advice:
    """The FlashInfer advised for some vLLM releases, and why."""

    __slots__ = ("flashinfer", "reason", "vllm")

    def __init__(self, vllm: tuple[str, ...], flashinfer: str, reason: str) -> None:
        self.vllm = vllm  # the vLLM releases whose calls were checked
        self.flashinfer = flashinfer
        self.reason = reason


_REASON = (
    "0.6.8.post1 fixes flashinfer#2822, is what vLLM 0.20 moved to, and every "
    "fused-MoE call of this vLLM binds to it; vLLM never shipped 0.6.7 "
    "(vLLM PR #38188). It has flashinfer#3875, which the plugin guards: "
    "DeepSeekV3 layers without expert groups (GLM-4.5 - 5.x, Kimi-K2) leave the "
    f"fused routing. Evidence: {docs_url('flashinfer-advice.md')}"
)

ADVICE: tuple[Advice, ...] = (
    Advice(("0.18.1",), "0.6.8.post1", _REASON),
    Advice(("0.19.1",), "0.6.8.post1", _REASON),
)


def for_vllm(vllm: str | None) -> Advice | None:
    """The advice for this vLLM release, where its calls were checked."""
    for advice in ADVICE:
        if vllm in advice.vllm:
            return advice
    return None


@dataclass
class Recommendation:
    """What ``status`` tells a user to install (``--json`` key ``advice``)."""

    flashinfer: str
    command: str
    reason: str


def install_command(flashinfer: str, versions: Mapping[str, str | None]) -> str:
    """``pip install --no-deps`` of the advised version, with the companion
    wheels this install has (FlashInfer 0.6.x refuses to import when they
    differ). ``--no-deps``: over vLLM's pins, as the binding check installed it."""
    wheels = [f'"{facts.FLASHINFER}=={flashinfer}"']
    if versions.get(facts.FLASHINFER_CUBIN) is not None:
        wheels.append(f'"{facts.FLASHINFER_CUBIN}=={flashinfer}"')
    command = "pip install --no-deps " + " ".join(wheels)
    jit_cache = versions.get(facts.FLASHINFER_JIT_CACHE)
    if jit_cache is not None:
        cuda = jit_cache.partition("+")[2] or "cu129"
        command += (
            f' "{facts.FLASHINFER_JIT_CACHE}=={flashinfer}+{cuda}"'
            f" --extra-index-url https://flashinfer.ai/whl/{cuda}"
        )
    return command


def recommend(
    decision: Decision, versions: Mapping[str, str | None]
) -> Recommendation | None:
    """An install command where the guard stands only because this
    FlashInfer predates a fix and this vLLM's calls bind to the advised one."""
    if decision.action != "guard" or decision.refuses_renormalize:
        return None
    advice = for_vllm(versions.get(facts.VLLM))
    if advice is None:
        return None
    return Recommendation(
        flashinfer=advice.flashinfer,
        command=install_command(advice.flashinfer, versions),
        reason=advice.reason,
    )


def never_shipped_note(versions: Mapping[str, str | None]) -> str | None:
    """One line where FlashInfer 0.6.7 runs under vLLM 0.18 / 0.19."""
    installed = policy.parse_version(versions.get(facts.FLASHINFER))
    vllm = policy.parse_version(versions.get(facts.VLLM))
    if installed is None or vllm is None:
        return None
    if installed.release[:3] != (0, 6, 7) or vllm.release[:2] not in ((0, 18), (0, 19)):
        return None
    advice = for_vllm(versions.get(facts.VLLM))
    advised = f"; advised: {advice.flashinfer}" if advice else ""
    return f"{PR_38188}{advised}"
