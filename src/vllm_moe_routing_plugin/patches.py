# SPDX-License-Identifier: Apache-2.0
"""Everything the plugin changes in vLLM: five replacements, and how one is
put in place and taken back.

===========================  ==========================================================
replacement                  what it replaces, and when
===========================  ==========================================================
``widened_routing_check``    a class's ``_supports_routing_method``; ``enable``
``layer_config_check``       a monolithic class's ``is_supported_config``; a
                             known bug in range that the class's kernel has
``layer_routing_function``   a module function ``_supports_routing_method[_bf16]``
                             of vLLM 0.16 - 0.19; the same
``layer_constructor``        the ``__init__`` of the class that builds a MoE
                             layer (``targets.LAYER_CLASSES``); the same
``BACKPORTS``                a vLLM function that drops a value it holds (a
                             catalogue entry's ``fix``)
===========================  ==========================================================

Each keeps vLLM's original and calls it first, so every answer the decision
does not concern (other routing methods, the ``ValueError`` for an
unsupported quant scheme, configurations vLLM already refuses) stays vLLM's.
Each carries the original under ``checks.MARKER``, which is how the plugin
recognises its own work (loading twice patches once). ``patching`` decides
which replacement a target gets, verifies it and reports it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from . import layers
from .about import LOGGER, PLUGIN
from .checks import MARKER, Unrecognised, caller
from .errors import describe_error
from .policy import LayerCheck
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


#: ``RoutingMethodType`` member -> name (an enum's ``name`` is a descriptor,
#: and the layer checks run for every MoE layer vLLM builds).
_NAMES: dict[Any, str | None] = {}


def _refused(
    target: Target,
    check: LayerCheck,
    method: Any,
    scheme_of: Callable[[Any, Any], str],
    keys: tuple[Any, Any] = (None, None),
    moe_config: Any = None,
) -> str | None:
    """The verdict on the layer being built, kept with it (``layers.Build``),
    where an entry planned here concerns its routing method; its reason where
    it refuses the layer. ``moe_config`` (vLLM's ``FusedMoEConfig``, for the
    config checks) gives the method, experts and top_k instead. Runs inside
    vLLM's backend selection, so it never raises: a failure leaves vLLM's own
    answer, with one WARNING."""
    try:
        num_experts = top_k = None
        if moe_config is not None:
            method = getattr(moe_config, "routing_method", None)
            num_experts = getattr(moe_config, "num_experts", None)
            top_k = getattr(moe_config, "experts_per_token", None)
        name = _NAMES.get(method)
        if name is None:
            name = _NAMES.setdefault(method, getattr(method, "name", None))
        if check.methods is not None and name not in check.methods:
            return None
        build = layers.being_built()
        facts = layers.facts(build, name, scheme_of(*keys), num_experts, top_k)
        verdict = check.judge(facts)
        if build is not None:
            build.verdicts.append((target, verdict))
        return verdict.reason() if verdict.refused else None
    except Exception as exc:
        _failed(target, check, exc)
        return None


def _failed(target: Target, check: LayerCheck, error: Exception) -> None:
    """One WARNING per layer check that failed; never raises."""
    if check.failed:
        return
    check.failed = True
    with contextlib.suppress(Exception):
        logging.getLogger(LOGGER).warning(
            "%s: the layer check of %s failed (%s); vLLM's own answer stands "
            "for its layers",
            PLUGIN,
            target.name,
            describe_error(error),
        )


def layer_config_check(
    target: Target,
    original: Callable[..., Any],
    check: LayerCheck,
    scheme_of: Callable[[Any, Any], str],
) -> Any:
    """``is_supported_config`` that refuses the layers an in-range known bug
    hits, after the original accepted them.

    Why: a known bug (``bugs.KNOWN_BUGS``) makes the in-kernel routing wrong
    for some layers only (flashinfer#2822: Renormalize with 128 < experts <=
    512 and top_k < 10; flashinfer#3875: DeepSeekV3 and MiniMax2 without
    expert groups, with a bias; vllm#43769: a scale other than 1). A blanket
    refusal would move Qwen3-30B-A3B, gpt-oss, DeepSeek-V3 or MiniMax-M2 off
    the fused kernel for nothing.
    How: the routing check sees only the method; this check sees the layer's
    ``moe_config``, and runs inside the constructor of the layer being built
    (``layer_constructor``), whose expert groups, bias and scale ``layers``
    reads. The answer ``(False, reason)`` makes vLLM's oracle pick the
    modular class (vLLM routes, the same TRT-LLM experts run) or another
    backend for exactly those layers, and vLLM logs the reason.
    Upstream: the fix each entry names (flashinfer#2744 for flashinfer#2822).
    Remove when: no entry of the catalogue is in range of a supported vLLM
    and FlashInfer.
    """

    def is_supported_config(
        cls: Any, moe_config: Any, *args: Any, **kwargs: Any
    ) -> tuple[bool, str | None]:
        supported, reason = original(cls, moe_config, *args, **kwargs)
        if not supported:
            return supported, reason
        keys = (
            args[0] if args else kwargs.get("weight_key"),
            args[1] if len(args) > 1 else kwargs.get("activation_key"),
        )
        refusal = _refused(target, check, None, scheme_of, keys, moe_config)
        if refusal is not None:
            return False, refusal
        return supported, reason

    is_supported_config.__doc__ = original.__doc__
    setattr(is_supported_config, MARKER, original)
    return is_supported_config


def layer_routing_function(
    target: Target,
    original: Callable[..., Any],
    check: LayerCheck,
    scheme_of: Callable[[Any, Any], str],
) -> Any:
    """A module-level routing check that refuses the layers an in-range known
    bug hits.

    Why: the routing checks of vLLM 0.16 - 0.19's module functions
    (``flashinfer_trtllm_moe._supports_routing_method[_bf16]``,
    ``flashinfer_fp4_moe._supports_routing_method``) accept Renormalize and
    DeepSeekV3 while the FlashInfer those releases pin routes some layers
    wrongly (flashinfer#2822), and vLLM 0.16 - 0.19 call the BF16 kernel
    without the layer's ``routed_scaling_factor`` (vllm#43769).
    How: these functions see only the method, and vLLM's oracles bind the
    functions around them by name at import, so there is no narrower place to
    refuse. The layer being built (``layer_constructor``) holds the rest; with
    no layer visible (``status``) each entry is judged as for every layer.
    Upstream: flashinfer#2744 (FlashInfer 0.6.7); vLLM 0.20 moved to the
    classes, 0.22 passes the scale.
    Remove when: no supported vLLM is older than 0.20.
    """
    if target.call == "function":

        def _supports_routing_method_bf16(routing_method: Any) -> bool:
            if not original(routing_method):
                return False
            return _refused(target, check, routing_method, scheme_of) is None

        replacement: Callable[..., bool] = _supports_routing_method_bf16
    else:

        def _supports_routing_method(
            weight_key: Any, activation_key: Any, routing_method: Any
        ) -> bool:
            # Unsupported quant schemes still raise the original's ValueError.
            if not original(weight_key, activation_key, routing_method):
                return False
            keys = (weight_key, activation_key)
            return _refused(target, check, routing_method, scheme_of, keys) is None

        replacement = _supports_routing_method
    replacement.__doc__ = original.__doc__
    setattr(replacement, MARKER, original)
    return replacement


def layer_constructor(
    original: Callable[..., Any], on_built: Callable[[layers.Build], None]
) -> Any:
    """The layer class's ``__init__``, marking the layer as being built.

    Why: the values that decide whether a known bug hits a layer (expert
    groups, correction bias, the ``routed_scaling_factor`` into the kernel)
    are not in the ``moe_config`` vLLM's routing checks receive (0.16 - 0.34);
    they are attributes of this object, set before its constructor asks the
    backend oracle for the layer's kernel.
    How: the original runs unchanged between ``layers.enter`` and
    ``layers.leave``; afterwards ``on_built`` reports the layer, also where
    the constructor raised an ``Exception`` (``Build.error``: where the plugin
    refused the fused kernel, vLLM may find no other, and its error need not
    say why). vLLM's exception propagates as it would; one of ``on_built``'s
    is swallowed.
    Upstream: none; vLLM's ``FusedMoEConfig`` would need these values.
    Remove when: no catalogue entry needs a layer's own values.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        build = layers.enter(self)
        built = False
        try:
            original(self, *args, **kwargs)
            built = True
        except Exception as exc:
            build.error = describe_error(exc)
            raise
        finally:
            layers.leave()
            if built or build.error is not None:  # not on KeyboardInterrupt
                with contextlib.suppress(Exception):
                    on_built(build)

    __init__.__doc__ = original.__doc__
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(__init__, MARKER, original)
    return __init__


# Backports: the upstream fix, where it only passes on a value vLLM holds.

#: The keyword names vLLM 0.20.0 - 0.21.0's ``TrtLlmBf16Experts.apply``
#: passes to ``flashinfer.fused_moe.trtllm_bf16_moe``, in order: the code the
#: backport replaces, recognised exactly.
_BF16_APPLY_KEYWORDS = (
    "routing_logits", "routing_bias", "hidden_states", "gemm1_weights",
    "gemm2_weights", "num_experts", "top_k", "n_group", "topk_group",
    "intermediate_size", "local_expert_offset", "local_num_experts",
    "routing_method_type",
)  # fmt: skip
_BF16_APPLY_PARAMETERS = (
    "self", "hidden_states", "w1", "w2", "router_logits", "activation",
    "global_num_experts", "expert_map", "a1q_scale", "apply_router_weight_on_input",
    "num_expert_group", "e_score_correction_bias", "routed_scaling_factor",
    "topk_group",
)  # fmt: skip


def bf16_apply_passing_scale(original: Callable[..., Any]) -> Any:
    """``TrtLlmBf16Experts.apply`` that passes ``routed_scaling_factor`` on.

    Why: vLLM 0.20 - 0.21 receive the layer's ``routed_scaling_factor`` in
    ``apply`` and drop it when calling ``trtllm_bf16_moe`` (vllm#43769), so
    DeepSeekV3 layers that pass a scale other than 1 into the kernel
    (Trinity/AFMoE, Kimi-Linear, Ling) compute a wrongly scaled output.
    How: vLLM 0.22's ``apply``, which adds ``routed_scaling_factor=`` to the
    call and is otherwise the same code; the original must be exactly the
    0.20 - 0.21 code (``Unrecognised`` otherwise, and the entry guards).
    Every FlashInfer from 0.6.3 takes the keyword.
    Upstream: vllm#43769, first released in vLLM 0.22.0.
    Remove when: no supported vLLM is older than 0.22.
    """
    code = getattr(original, "__code__", None)
    parameters = tuple(inspect.signature(original).parameters)
    keywords = [c for c in getattr(code, "co_consts", ()) if isinstance(c, tuple)]
    if parameters != _BF16_APPLY_PARAMETERS or keywords != [_BF16_APPLY_KEYWORDS]:
        raise Unrecognised("apply is not the vLLM 0.20 - 0.21 code the backport knows")

    def apply(
        self: Any,
        hidden_states: Any,
        w1: Any,
        w2: Any,
        router_logits: Any,
        activation: Any,
        global_num_experts: int,
        expert_map: Any,
        a1q_scale: Any,
        apply_router_weight_on_input: bool,
        num_expert_group: int | None = None,
        e_score_correction_bias: Any = None,
        routed_scaling_factor: float | None = None,
        topk_group: int | None = None,
    ) -> Any:
        import flashinfer

        return flashinfer.fused_moe.trtllm_bf16_moe(
            routing_logits=router_logits,
            routing_bias=e_score_correction_bias,
            hidden_states=hidden_states,
            gemm1_weights=w1,
            gemm2_weights=w2,
            num_experts=global_num_experts,
            top_k=self.topk,
            n_group=num_expert_group,
            topk_group=topk_group,
            intermediate_size=self.intermediate_size_per_partition,
            local_expert_offset=self.ep_rank * self.local_num_experts,
            local_num_experts=self.local_num_experts,
            routed_scaling_factor=routed_scaling_factor,
            routing_method_type=self.routing_method_type,
        )

    apply.__doc__ = original.__doc__
    setattr(apply, MARKER, original)
    return apply


#: The backports by the function they replace (``bugs.VllmDefect.callers``).
BACKPORTS: dict[str, Callable[[Callable[..., Any]], Any]] = {
    "TrtLlmBf16Experts.apply": bf16_apply_passing_scale,
}


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
    widened, ``is_supported_config`` checking layers, a backport); undone
    newest first."""

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
