# SPDX-License-Identifier: Apache-2.0
"""Where each vLLM release keeps a TRT-LLM monolithic routing check, as data;
probe, patch and undo one.

Targets are found by probing modules and attributes, never by comparing vLLM
version strings (dev builds and backports exist). Enum members are looked up
by name: their integer values move between vLLM releases.

Two ways to change a target, following the decision:

* ``enable`` widens the class's ``_supports_routing_method`` (a
  ``@staticmethod``) so that Renormalize and RenormalizeNaive are accepted for
  every quant scheme the original accepts at all; the original's answer for
  every other method, and its ``ValueError`` for an unsupported scheme, stay.
  This is what vLLM PR #38859 did upstream in 0.20 after vLLM PR #37605 had
  removed the methods in 0.18. Remove when no supported vLLM is older than 0.20.
* ``guard`` wraps the monolithic class's ``is_supported_config`` (a
  ``@staticmethod`` taking ``cls``): after the original says yes, it says no,
  with a reason vLLM logs, for Renormalize/RenormalizeNaive layers inside the
  bug's envelope, so vLLM's oracle moves exactly those layers to the modular
  class or another backend. The routing check cannot see the layer's shape;
  ``is_supported_config`` can (``moe_config.num_experts``,
  ``moe_config.experts_per_token``). The module-level functions of vLLM
  0.16-0.19 have no shape to look at (vLLM's oracles bind their callers by
  name at import), so there the two methods are removed outright. Remove when
  no supported FlashInfer is older than 0.6.7.

A target already answering what the decision wants is ``native`` and left as
it is. Each target is patched on its own: one that cannot be patched leaves
the others as they are.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Literal

from .policy import METHODS, Decision, Guard
from .report import describe_error

FUSED_MOE = "vllm.model_executor.layers.fused_moe"
QUANT_UTILS = "vllm.model_executor.layers.quantization.utils.quant_utils"
CONFIG = f"{FUSED_MOE}.config"

Scheme = tuple["str | None", "str | None"]  # names of vLLM QuantKey constants
Call = Literal["method", "function", "keys-first-function"]
State = Literal[
    "patched",
    "native",
    "absent",
    "not-probed",
    "untouched",
    "unrecognised",
    "failed",
]

FP8_BLOCK: Scheme = ("kFp8Static128BlockSym", "kFp8Dynamic128Sym")
MXFP8: Scheme = ("kMxfp8Static", "kMxfp8Dynamic")
FP8_PER_TENSOR: Scheme = ("kFp8StaticTensorSym", "kFp8StaticTensorSym")
NVFP4: Scheme = ("kNvfp4Static", "kNvfp4Dynamic")
MXFP4: Scheme = ("kMxfp4Static", None)
MXFP4_MXFP8: Scheme = ("kMxfp4Static", "kMxfp8Dynamic")
MXINT4: Scheme = ("kInt4Static32", None)
UNQUANTIZED: Scheme = (None, None)

SCHEME_LABELS: dict[Scheme, str] = {
    FP8_BLOCK: "fp8-block",
    MXFP8: "mxfp8",
    FP8_PER_TENSOR: "fp8-per-tensor",
    NVFP4: "nvfp4",
    MXFP4: "mxfp4",
    MXFP4_MXFP8: "mxfp4-mxfp8",
    MXINT4: "mxint4",
    UNQUANTIZED: "bf16",
}

MARKER = "_vllm_moe_routing_plugin_original"


@dataclass(frozen=True)
class Target:
    """One routing check of one vLLM release family."""

    module: str
    owner: str | None  # class name; None for a module-level function
    check: str  # attribute holding the routing check
    call: Call
    schemes: tuple[Scheme, ...]
    releases: str  # the vLLM releases that have it (documentation only)

    @property
    def name(self) -> str:
        if self.owner is not None:
            return self.owner
        return f"{self.module.rsplit('.', 1)[-1]}.{self.check}"

    @property
    def path(self) -> str:
        inner = f"{self.owner}.{self.check}" if self.owner else self.check
        return f"{self.module}.{inner}"


TARGETS: tuple[Target, ...] = (
    Target(
        f"{FUSED_MOE}.experts.trtllm_fp8_moe",
        "TrtLlmFp8ExpertsMonolithic",
        "_supports_routing_method",
        "method",
        (FP8_BLOCK, MXFP8, FP8_PER_TENSOR),
        "0.18-0.33",
    ),
    Target(
        f"{FUSED_MOE}.experts.trtllm_fp8_moe",
        "TrtLlmFp8Experts",
        "_supports_routing_method",
        "method",
        (FP8_BLOCK, FP8_PER_TENSOR),
        "0.17",
    ),
    Target(
        f"{FUSED_MOE}.experts.trtllm_bf16_moe",
        "TrtLlmBf16ExpertsMonolithic",
        "_supports_routing_method",
        "method",
        (UNQUANTIZED,),
        "0.26-0.33",
    ),
    Target(
        f"{FUSED_MOE}.experts.trtllm_bf16_moe",
        "TrtLlmBf16Experts",
        "_supports_routing_method",
        "method",
        (UNQUANTIZED,),
        "0.20-0.25",
    ),
    Target(
        f"{FUSED_MOE}.flashinfer_trtllm_moe",
        None,
        "_supports_routing_method_bf16",
        "function",
        (UNQUANTIZED,),
        "0.16-0.19",
    ),
    Target(
        f"{FUSED_MOE}.flashinfer_trtllm_moe",
        None,
        "_supports_routing_method",
        "keys-first-function",
        (FP8_BLOCK, FP8_PER_TENSOR),
        "0.16",
    ),
    # The other fused kernels share the routing code the bug lives in
    # (trtllm_fp4_block_scale_moe for NVFP4 and MXFP4 weights,
    # trtllm_mxint4_block_scale_moe). They accept both methods in every vLLM
    # release, so only the guard changes them. The LoRA experts
    # (TrtLlmBf16LoRAExperts, TrtLlmMxfp4LoRAExperts) are modular: vLLM routes
    # and calls the pre-routed kernels, which the bug does not reach.
    Target(
        f"{FUSED_MOE}.experts.trtllm_nvfp4_moe",
        "TrtLlmNvFp4ExpertsMonolithic",
        "_supports_routing_method",
        "method",
        (NVFP4,),
        "0.17-0.33",
    ),
    Target(
        "vllm.model_executor.layers.quantization.utils.flashinfer_fp4_moe",
        None,
        "_supports_routing_method",
        "function",
        (NVFP4,),
        "0.15-0.16",
    ),
    Target(
        f"{FUSED_MOE}.experts.trtllm_mxfp4_moe",
        "TrtLlmMxfp4ExpertsMonolithic",
        "_supports_routing_method",
        "method",
        (MXFP4, MXFP4_MXFP8),
        "0.19-0.33",
    ),
    Target(
        f"{FUSED_MOE}.experts.trtllm_mxint4_moe",
        "TrtLlmMxint4ExpertsMonolithic",
        "_supports_routing_method",
        "method",
        (MXINT4,),
        "0.23-0.33",
    ),
)


def target_modules(targets: Iterable[Target] = TARGETS) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.module for t in targets))


def defined_names(module: str, targets: Iterable[Target] = TARGETS) -> tuple[str, ...]:
    """The classes and functions of ``module`` that hold a target's check."""
    return tuple(t.owner or t.check for t in targets if t.module == module)


class Unrecognised(Exception):
    """The target exists but is not shaped the way this plugin knows."""


@dataclass
class Patch:
    """One attribute replaced on a class or module, and how to put it back."""

    owner: Any
    attr: str
    original: Any  # the raw ``__dict__`` entry (e.g. the staticmethod object)
    had_own: bool  # False: the attribute was inherited, undo deletes ours
    replacement: Any

    def apply(self) -> None:
        setattr(self.owner, self.attr, self.replacement)

    def undo(self) -> None:
        if self.had_own:
            setattr(self.owner, self.attr, self.original)
        elif self.attr in vars(self.owner):
            delattr(self.owner, self.attr)


@dataclass
class Outcome:
    """What happened to one target in this process."""

    target: Target
    state: State
    detail: str = ""
    before: dict[str, tuple[str, ...]] = field(default_factory=dict)
    patch: Patch | None = None


# --- reading vLLM's objects -------------------------------------------------


def _routing_methods(module: ModuleType) -> Any:
    enum = getattr(module, "RoutingMethodType", None)
    if enum is None:
        config = sys.modules.get(CONFIG)
        enum = getattr(config, "RoutingMethodType", None)
    if enum is None:
        raise Unrecognised("RoutingMethodType not found")
    missing = [m for m in METHODS if not hasattr(enum, m)]
    if missing:
        raise Unrecognised(f"RoutingMethodType has no {', '.join(missing)}")
    return enum


def _quant_key(module: ModuleType, name: str | None) -> Any:
    if name is None:
        return None
    if hasattr(module, name):
        return getattr(module, name)
    quant_utils = sys.modules.get(QUANT_UTILS)
    if quant_utils is not None and hasattr(quant_utils, name):
        return getattr(quant_utils, name)
    return _MISSING


_MISSING = object()


def _caller(target: Target, check: Callable[..., Any]) -> Callable[..., bool]:
    """Call any target's routing check as ``f(method, weight_key, activation_key)``."""
    if target.call == "method":
        return lambda method, wk, ak: bool(check(method, wk, ak))
    if target.call == "function":
        return lambda method, wk, ak: bool(check(method))
    return lambda method, wk, ak: bool(check(wk, ak, method))


_ARITY = {"method": 3, "function": 1, "keys-first-function": 3}


def _check_signature(func: Callable[..., Any], expected: int, what: str) -> None:
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise Unrecognised(f"{what} has no readable signature") from exc
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) != expected or len(parameters) != expected:
        raise Unrecognised(f"{what} takes {len(parameters)} arguments, not {expected}")


@dataclass
class Probe:
    """A target found in an imported module, with its original check."""

    target: Target
    module: ModuleType
    owner: Any  # the class, or the module for module-level functions
    check: Callable[..., Any]  # the routing check as vLLM calls it
    methods: Any  # vLLM's RoutingMethodType
    schemes: dict[str, tuple[Any, Any]]  # label -> (weight_key, activation_key)

    def reread(self) -> Probe:
        """The same target with the routing check its owner holds now."""
        return replace(self, check=getattr(self.owner, self.target.check))

    def accepted(self) -> dict[str, tuple[str, ...]]:
        """Per quant scheme the check supports, the routing methods it accepts."""
        call = _caller(self.target, self.check)
        table: dict[str, tuple[str, ...]] = {}
        for label, (wk, ak) in self.schemes.items():
            names: list[str] = []
            try:
                for member in self.methods:
                    if call(member, wk, ak):
                        names.append(member.name)
            except ValueError:
                continue  # the check rejects this quant scheme
            table[label] = tuple(names)
        return table


def probe(target: Target, module: ModuleType) -> Probe | None:
    """Find ``target`` in ``module``; None when this vLLM has no such target.

    Raises ``Unrecognised`` when it exists in a shape the plugin does not know.
    """
    owner: Any = module
    if target.owner is not None:
        owner = getattr(module, target.owner, None)
        if owner is None:
            return None
        if not isinstance(owner, type):
            raise Unrecognised(f"{target.owner} is not a class")
    if not hasattr(owner, target.check):
        if target.owner is not None:
            raise Unrecognised(f"{target.owner} has no {target.check}")
        return None
    if target.owner is not None:
        raw = inspect.getattr_static(owner, target.check)
        if not isinstance(raw, staticmethod):
            raise Unrecognised(f"{target.path} is not a staticmethod")
    check = getattr(owner, target.check)
    _check_signature(_unwrap_ours(check), _ARITY[target.call], target.check)
    methods = _routing_methods(module)
    schemes: dict[str, tuple[Any, Any]] = {}
    for scheme in target.schemes:
        keys = (_quant_key(module, scheme[0]), _quant_key(module, scheme[1]))
        if _MISSING not in keys:
            schemes[SCHEME_LABELS[scheme]] = keys
    if not schemes:
        raise Unrecognised("none of its quant keys found in this vLLM")
    return Probe(target, module, owner, check, methods, schemes)


def _unwrap_ours(func: Any) -> Any:
    return getattr(func, MARKER, func)


def is_ours(value: Any) -> bool:
    func = value.__func__ if isinstance(value, staticmethod) else value
    return hasattr(func, MARKER)


# --- the replacements ---------------------------------------------------------


def _accepting(
    target: Target, original: Callable[..., Any], wanted: tuple[Any, ...]
) -> Any:
    """The routing check, widened to the wanted methods (vLLM PR #38859)."""
    call = _caller(target, original)

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


def _refusing(
    target: Target, original: Callable[..., Any], refused: tuple[Any, ...]
) -> Any:
    """A module-level routing check without the refused methods, for every
    shape: these functions cannot see the layer's shape."""
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


def _guarded_config_check(
    original: Callable[..., Any], refused: tuple[Any, ...], guard: Guard
) -> Any:
    """``is_supported_config`` that refuses ``refused`` routing inside the
    guard's envelope, after the original accepted the configuration."""

    def is_supported_config(
        cls: Any, moe_config: Any, *args: Any, **kwargs: Any
    ) -> tuple[bool, str | None]:
        supported, reason = original(cls, moe_config, *args, **kwargs)
        if not supported:
            return supported, reason
        if getattr(moe_config, "routing_method", None) not in refused:
            return supported, reason
        num_experts = getattr(moe_config, "num_experts", None)
        top_k = getattr(moe_config, "experts_per_token", None)
        if guard.refuses(num_experts, top_k):
            return False, guard.reason(num_experts, top_k)
        return supported, reason

    is_supported_config.__doc__ = original.__doc__
    setattr(is_supported_config, MARKER, original)
    return is_supported_config


def _patch(owner: Any, attr: str, replacement: Any, *, static: bool) -> Patch:
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


# --- deciding one target ------------------------------------------------------


def apply(target: Target, module: ModuleType, decision: Decision) -> Outcome:
    """Bring one target in line with the decision. Never raises."""
    try:
        found = probe(target, module)
    except Unrecognised as exc:
        return Outcome(target, "unrecognised", f"left alone: {exc}")
    except Exception as exc:
        return Outcome(
            target, "failed", f"left alone: probing raised {describe_error(exc)}"
        )
    if found is None:
        return Outcome(target, "absent")
    try:
        before = found.accepted()
    except Exception as exc:
        return Outcome(
            target,
            "unrecognised",
            f"left alone: its check raised {describe_error(exc)}",
        )
    if not decision.acts:
        return Outcome(target, "untouched", before=before)
    if is_ours(vars(found.owner).get(target.check)) or (
        target.owner is not None
        and is_ours(vars(found.owner).get("is_supported_config"))
    ):
        return Outcome(target, "patched", "already patched in this process", before)
    wanted = tuple(getattr(found.methods, m) for m in METHODS)
    try:
        if decision.action == "enable":
            return _enable(found, before, wanted)
        assert decision.guard is not None
        return _guard(found, before, wanted, decision.guard)
    except Unrecognised as exc:
        return Outcome(target, "unrecognised", f"left alone: {exc}", before)
    except Exception as exc:
        return Outcome(target, "failed", f"left alone: {describe_error(exc)}", before)


def _enable(
    found: Probe, before: dict[str, tuple[str, ...]], wanted: tuple[Any, ...]
) -> Outcome:
    target = found.target
    lacking = sorted(
        {m for names in before.values() for m in METHODS if m not in names},
        key=METHODS.index,
    )
    if not before or not lacking:
        return Outcome(target, "native", "", before)
    replacement = _accepting(target, found.check, wanted)
    patch = _patch(
        found.owner, target.check, replacement, static=target.owner is not None
    )
    detail = " ".join(f"+{m}" for m in lacking)
    return _verified(Outcome(target, "patched", detail, before, patch), found)


def _guard(
    found: Probe,
    before: dict[str, tuple[str, ...]],
    wanted: tuple[Any, ...],
    guard: Guard,
) -> Outcome:
    target = found.target
    accepted = sorted(
        {m for names in before.values() for m in METHODS if m in names},
        key=METHODS.index,
    )
    if not accepted:
        return Outcome(target, "native", "", before)
    refused = " ".join(f"-{m}" for m in accepted)
    if target.owner is None:
        replacement = _refusing(target, found.check, wanted)
        patch = _patch(found.owner, target.check, replacement, static=False)
        scope = "all shapes" if guard.everywhere else "all shapes: no shape visible"
        return _verified(
            Outcome(target, "patched", f"{refused} ({scope})", before, patch), found
        )
    raw = inspect.getattr_static(found.owner, "is_supported_config", None)
    if not isinstance(raw, staticmethod):
        raise Unrecognised(f"{target.owner}.is_supported_config is not a staticmethod")
    original = found.owner.is_supported_config
    parameters = list(inspect.signature(original).parameters)
    if len(parameters) < 2 or parameters[0] != "cls":
        raise Unrecognised(
            f"{target.owner}.is_supported_config does not take cls first"
        )
    replacement = _guarded_config_check(original, wanted, guard)
    patch = _patch(found.owner, "is_supported_config", replacement, static=True)
    return Outcome(target, "patched", f"{refused} for {guard.scope}", before, patch)


def _verified(outcome: Outcome, found: Probe) -> Outcome:
    """Re-read the patched routing check; undo if it does not answer as planned
    (an unexpected check must never be left half-changed)."""
    assert outcome.patch is not None
    try:
        table = found.reread().accepted()
    except Exception as exc:
        outcome.patch.undo()
        raise Unrecognised(f"patched check raised {describe_error(exc)}") from exc
    if set(table) != set(outcome.before):
        outcome.patch.undo()
        raise Unrecognised("patched check changed the supported quant schemes")
    return outcome


def accepted_after(outcome: Outcome) -> dict[str, tuple[str, ...]] | None:
    """What the routing check accepts now, or None when the module is not loaded."""
    module = sys.modules.get(outcome.target.module)
    if module is None:
        return None
    found = probe(outcome.target, module)
    return found.accepted() if found is not None else None
