# SPDX-License-Identifier: Apache-2.0
"""Everything the plugin changes in vLLM: three replacements, and how one is
put in place and taken back.

============================  =========================================================
replacement                   what it replaces, and when
============================  =========================================================
``widened_routing_check``     a class's ``_supports_routing_method``; ``enable``
``narrowed_routing_function`` a module function ``_supports_routing_method[_bf16]``
                              of vLLM 0.16 - 0.19; a catalogue entry to guard
``guarded_config_check``      a monolithic class's ``is_supported_config``; a
                              catalogue entry to guard
============================  =========================================================

Each keeps vLLM's original and calls it first, so every answer the decision
does not concern (other routing methods, the ``ValueError`` for an
unsupported quant scheme, configurations vLLM already refuses) stays vLLM's.
Each carries the original under ``checks.MARKER``, which is how the plugin
recognises its own work (loading twice patches once). ``patching`` decides
which replacement a target gets, verifies it and reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import MARKER, caller
from .policy import Guard
from .targets import Target


def widened_routing_check(
    target: Target, original: Callable[..., Any], wanted: tuple[Any, ...]
) -> Any:
    """``_supports_routing_method`` that also accepts the wanted methods.

    Why: vLLM 0.18/0.19 removed Renormalize/RenormalizeNaive from the FP8
    monolithic class (vLLM PR #37605) while FlashInfer <= 0.6.6 routed them
    wrongly (flashinfer#2822); with FlashInfer >= 0.6.7 that slows every
    Renormalize model for nothing.
    How: accept the wanted methods for every quant scheme the original
    accepts at all.
    Upstream: vLLM PR #38859 restored the methods in 0.20.
    Remove when: no supported vLLM is older than 0.20.
    """
    call = caller(target, original)

    def _supports_routing_method(
        routing_method: Any, weight_key: Any, activation_key: Any
    ) -> bool:
        # The original runs first: its ValueError for an unsupported quant
        # scheme, and its answer for every other method, stay as they are.
        return call(routing_method, weight_key, activation_key) or (
            routing_method in wanted
        )

    _supports_routing_method.__doc__ = original.__doc__
    setattr(_supports_routing_method, MARKER, original)
    return _supports_routing_method


def narrowed_routing_function(
    target: Target, original: Callable[..., Any], refused: tuple[Any, ...]
) -> Any:
    """A module-level routing check without the refused methods, for every
    layer shape.

    Why: the routing checks of vLLM 0.16 - 0.19's module functions
    (``flashinfer_trtllm_moe._supports_routing_method[_bf16]``,
    ``flashinfer_fp4_moe._supports_routing_method``) accept Renormalize while
    the FlashInfer those releases pin routes it wrongly (flashinfer#2822).
    How: refuse the methods outright. These functions cannot see the layer's
    shape, and vLLM's oracles bind the classes around them by name at
    import, so there is no narrower place to refuse.
    Upstream: flashinfer#2744 (the fix, FlashInfer 0.6.7); vLLM 0.20 moved to
    the classes and a fixed FlashInfer.
    Remove when: no supported vLLM is older than 0.20.
    """
    if target.call == "function":

        def _supports_routing_method_bf16(routing_method: Any) -> bool:
            return routing_method not in refused and bool(original(routing_method))

        replacement: Callable[..., bool] = _supports_routing_method_bf16
    else:

        def _supports_routing_method(
            weight_key: Any, activation_key: Any, routing_method: Any
        ) -> bool:
            # Unsupported quant schemes still raise the original's ValueError.
            accepted = bool(original(weight_key, activation_key, routing_method))
            return accepted and routing_method not in refused

        replacement = _supports_routing_method
    replacement.__doc__ = original.__doc__
    setattr(replacement, MARKER, original)
    return replacement


def guarded_config_check(original: Callable[..., Any], guard: Guard) -> Any:
    """``is_supported_config`` that refuses the guard's routing methods for the
    layers inside its entries' envelopes, after the original accepted them.

    Why: a known bug (``bugs.KNOWN_BUGS``) makes the in-kernel routing wrong
    for some routing methods, and for some of them only for some layer shapes;
    a blanket refusal of Renormalize would move models outside flashinfer#2822's
    envelope (Qwen3-30B-A3B, gpt-oss, Qwen3-Next) off the fused kernel for
    nothing.
    How: the routing check cannot see the layer's shape; this check can
    (``moe_config.num_experts``, ``moe_config.experts_per_token``,
    ``moe_config.routing_method``). The answer ``(False, reason)`` makes vLLM's
    oracle pick the modular class (vLLM routes, the same TRT-LLM experts run)
    or another backend for exactly those layers, and vLLM logs the reason.
    Upstream: the fix each entry names (flashinfer#2744 for flashinfer#2822).
    Remove when: no entry of the catalogue with the action ``guard`` reaches a
    supported vLLM and FlashInfer.
    """
    refused = guard.methods

    def is_supported_config(
        cls: Any, moe_config: Any, *args: Any, **kwargs: Any
    ) -> tuple[bool, str | None]:
        supported, reason = original(cls, moe_config, *args, **kwargs)
        if not supported:
            return supported, reason
        method = getattr(getattr(moe_config, "routing_method", None), "name", None)
        if method not in refused:
            return supported, reason
        num_experts = getattr(moe_config, "num_experts", None)
        top_k = getattr(moe_config, "experts_per_token", None)
        if guard.refuses(num_experts, top_k, method):
            return False, guard.reason(num_experts, top_k, method)
        return supported, reason

    is_supported_config.__doc__ = original.__doc__
    setattr(is_supported_config, MARKER, original)
    return is_supported_config


class Patch:
    """One attribute replaced on a class or module, and how to put it back."""

    __slots__ = ("attr", "had_own", "original", "owner", "replacement")

    def __init__(
        self,
        owner: Any,
        attr: str,
        original: Any,  # the raw ``__dict__`` entry (e.g. the staticmethod object)
        had_own: bool,  # False: the attribute was inherited, undo deletes ours
        replacement: Any,
    ) -> None:
        self.owner = owner
        self.attr = attr
        self.original = original
        self.had_own = had_own
        self.replacement = replacement

    @property
    def attrs(self) -> tuple[str, ...]:
        return (self.attr,)

    def apply(self) -> None:
        setattr(self.owner, self.attr, self.replacement)

    def undo(self) -> None:
        if self.had_own:
            setattr(self.owner, self.attr, self.original)
        elif self.attr in vars(self.owner):
            delattr(self.owner, self.attr)


class Patches:
    """Several attributes of one class replaced together (the routing check
    widened and ``is_supported_config`` guarded); undone newest first."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Patch, ...]) -> None:
        self.parts = parts

    @property
    def attrs(self) -> tuple[str, ...]:
        return tuple(part.attr for part in self.parts)

    def undo(self) -> None:
        for part in reversed(self.parts):
            part.undo()


def install(owner: Any, attr: str, replacement: Any, *, static: bool) -> Patch:
    """Put ``replacement`` in place of ``owner.attr`` (as a ``staticmethod``
    where vLLM declares one) and return how to undo it."""
    had_own = attr in vars(owner)
    original = vars(owner).get(attr)
    patch = Patch(
        owner,
        attr,
        original,
        had_own,
        staticmethod(replacement) if static else replacement,
    )
    patch.apply()
    return patch
