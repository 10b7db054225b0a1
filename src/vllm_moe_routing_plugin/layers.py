# SPDX-License-Identifier: Apache-2.0
"""What the plugin knows about the MoE layer vLLM is building.

The known bugs hit layers, not installs: whether one is wrong depends on the
layer's routing method, its experts and top_k, its expert groups, its
correction bias and the ``routed_scaling_factor`` that reaches the kernel.
vLLM's ``FusedMoEConfig``, which the routing checks receive, carries the
first three only. The rest are attributes of the object whose constructor
asks the backend oracle for the layer's kernel (``targets.LAYER_CLASSES``:
``FusedMoE`` up to vLLM 0.23, ``RoutedExperts`` from 0.24), set before the
oracle runs in every release 0.16 - 0.34 and read from there by the quant
methods when they call the kernel. ``patches.layer_constructor`` marks that
object as "being built" for the duration of its constructor; the routing
checks read it here.

Nothing here imports vLLM, and nothing raises: a value that cannot be read
is ``None`` (hidden), and the catalogue then judges the layer as it judges
an install.
"""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


class Build:
    """One layer constructor running: the layer object, the verdicts the
    routing checks reached for it (``policy.Verdict``, by target) and, where
    the constructor raised, what it raised."""

    __slots__ = ("error", "layer", "verdicts")

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.verdicts: list[tuple[Any, Any]] = []
        self.error: str | None = None


def enter(layer: Any) -> Build:
    """``layer``'s constructor has started. A stack: constructors nest only
    when a layer class builds another, which no vLLM release does."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    build = Build(layer)
    stack.append(build)
    return build


def leave() -> None:
    stack = getattr(_local, "stack", None)
    if stack:
        stack.pop()


def being_built() -> Build | None:
    """The layer constructor running in this thread, or None."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


#: The attributes of the layer being built that the catalogue reads; the
#: layer class is recognised only where its constructor sets all of them.
LAYER_ATTRIBUTES: tuple[str, ...] = (
    "num_expert_group",
    "topk_group",
    "e_score_correction_bias",
    "routed_scaling_factor",
)

_MISSING = object()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class LayerFacts:
    """One kind of MoE layer as the kernels see it (immutable; layers of one
    kind share one instance, see ``facts``). ``None``: not visible here."""

    __slots__ = (
        "has_bias", "key", "method", "n_group", "num_experts", "scale",
        "scheme", "top_k", "topk_group", "visible",
    )  # fmt: skip

    def __init__(
        self,
        method: str | None,
        scheme: str,
        num_experts: int | None = None,
        top_k: int | None = None,
        *,
        visible: bool = False,  # the layer's own attributes could be read
        n_group: int | None = None,  # vLLM's num_expert_group (None: no groups)
        topk_group: int | None = None,
        has_bias: bool | None = None,
        scale: float | None = None,  # routed_scaling_factor into the kernel
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.num_experts = num_experts
        self.top_k = top_k
        self.visible = visible
        self.n_group = n_group
        self.topk_group = topk_group
        self.has_bias = has_bias
        self.scale = scale
        #: What makes two layers the same kind for the kernels.
        self.key: tuple[Any, ...] = (
            method, scheme, num_experts, top_k, visible, n_group, topk_group,
            has_bias, scale,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"LayerFacts({self.describe()})"

    @property
    def grouped(self) -> bool | None:
        """Whether the layer routes with expert groups (``n_group > 1``): the
        grouped DeepSeekV3 kernel. ``n_group`` of None, 0 or 1 takes the
        no-group path (FlashInfer's runner: ``n_group <= 1``)."""
        if not self.visible:
            return None
        return (self.n_group or 0) > 1

    def describe(self) -> str:
        """``DeepSeekV3, 256 experts, top_k 8, n_group 1, bias, scale 1.0, bf16``."""
        parts = [self.method or "routing unknown"]
        if self.num_experts is not None and self.top_k is not None:
            parts.append(f"{self.num_experts} experts, top_k {self.top_k}")
        if self.visible:
            if self.n_group is not None:
                parts.append(f"n_group {self.n_group}")
            if self.has_bias:
                parts.append("bias")
            if self.scale is not None:
                parts.append(f"scale {self.scale:g}")
        parts.append(self.scheme)
        return ", ".join(parts)


#: Layers of one kind share one ``LayerFacts`` (a model has a few kinds and
#: builds tens of layers of each; the layer checks cache their verdicts by
#: it). Bounded all the same.
_KINDS: dict[tuple[Any, ...], LayerFacts] = {}
_KINDS_MAX = 1024


def _kind(
    method: str | None,
    scheme: str,
    num_experts: int | None,
    top_k: int | None,
    visible: bool = False,
    n_group: int | None = None,
    topk_group: int | None = None,
    has_bias: bool | None = None,
    scale: float | None = None,
) -> LayerFacts:
    key = (
        method, scheme, num_experts, top_k, visible, n_group, topk_group,
        has_bias, scale,
    )  # fmt: skip
    found = _KINDS.get(key)
    if found is None:
        found = LayerFacts(
            method, scheme, num_experts, top_k, visible=visible, n_group=n_group,
            topk_group=topk_group, has_bias=has_bias, scale=scale,
        )  # fmt: skip
        if len(_KINDS) < _KINDS_MAX:
            _KINDS[key] = found
    return found


def facts(
    build: Build | None,
    method: str | None,
    scheme: str,
    num_experts: int | None = None,
    top_k: int | None = None,
) -> LayerFacts:
    """The facts of the layer being built (``being_built()``), for a routing
    check asked about ``method`` (and, where vLLM hands it over, the
    ``moe_config``'s experts and top_k). The layer's own values count only
    where its experts and top_k agree with what the check was asked about: a
    check called outside a layer's constructor (``status``, a later
    re-selection) or for another configuration sees no layer."""
    if build is None:
        return _kind(method, scheme, num_experts, top_k)
    layer = build.layer
    try:
        own_experts = getattr(layer, "global_num_experts", None)
        own_top_k = getattr(layer, "top_k", None)
        if num_experts is None:
            num_experts, top_k = own_experts, own_top_k
        elif own_experts != num_experts or own_top_k != top_k:
            return _kind(method, scheme, num_experts, top_k)
        n_group = getattr(layer, "num_expert_group", _MISSING)
        topk_group = getattr(layer, "topk_group", _MISSING)
        bias = getattr(layer, "e_score_correction_bias", _MISSING)
        scale = getattr(layer, "routed_scaling_factor", _MISSING)
        if (
            n_group is _MISSING
            or topk_group is _MISSING
            or bias is _MISSING
            or scale is _MISSING
        ):
            return _kind(method, scheme, num_experts, top_k)
        return _kind(
            method,
            scheme,
            num_experts,
            top_k,
            True,
            n_group if type(n_group) is int else None,
            topk_group if type(topk_group) is int else None,
            bias is not None,
            _number(scale),
        )
    except Exception:  # a property of a future vLLM that raises: not visible
        return _kind(method, scheme, num_experts, top_k)


def name(layer: Any) -> str:
    """The layer's name in the model (its prefix), for the log."""
    try:
        return str(getattr(layer, "layer_name", "") or "a MoE layer")
    except Exception:
        return "a MoE layer"
