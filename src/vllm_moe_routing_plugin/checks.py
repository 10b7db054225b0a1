# SPDX-License-Identifier: Apache-2.0
"""Finding a target's routing check in a vLLM module, and asking it questions.

``locate`` checks that the target has the shape the plugin knows (a
``@staticmethod`` or module function with the expected arguments, vLLM's
``RoutingMethodType`` with both Renormalize members, the quant keys) before
anything is changed; a target of another shape is ``Unrecognised`` and left
alone. ``RoutingCheck.accepted`` asks the check, per quant scheme, which
routing methods it accepts: the "before" and "after" of ``status``.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .bugs import RENORMALIZE_METHODS, KernelCall
from .layers import LAYER_ATTRIBUTES
from .targets import CONFIG, QUANT_UTILS, SCHEME_LABELS, LayerClass, Target

if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    #: What vLLM's code does with a layer's value where it calls a kernel.
    Probe = Literal["drops", "passes", "unknown"]

#: Set on every replacement the plugin installs, holding vLLM's original.
MARKER = "_vllm_moe_routing_plugin_original"


class Unrecognised(Exception):
    """The target exists but is not shaped the way this plugin knows."""


def _routing_methods(module: ModuleType) -> Any:
    enum = getattr(module, "RoutingMethodType", None)
    if enum is None:
        config = sys.modules.get(CONFIG)
        enum = getattr(config, "RoutingMethodType", None)
    if enum is None:
        raise Unrecognised("RoutingMethodType not found")
    missing = [m for m in RENORMALIZE_METHODS if not hasattr(enum, m)]
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


def caller(target: Target, check: Callable[..., Any]) -> Callable[..., bool]:
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


class RoutingCheck:
    """A target's routing check, found in an imported module."""

    __slots__ = ("check", "methods", "module", "owner", "schemes", "target")

    def __init__(
        self,
        target: Target,
        module: ModuleType,
        owner: Any,  # the class, or the module for module-level functions
        check: Callable[..., Any],  # the routing check as vLLM calls it
        methods: Any,  # vLLM's RoutingMethodType
        schemes: dict[str, tuple[Any, Any]],  # label -> (weight_key, activation_key)
    ) -> None:
        self.target = target
        self.module = module
        self.owner = owner
        self.check = check
        self.methods = methods
        self.schemes = schemes

    def reread(self) -> RoutingCheck:
        """The same target with the routing check its owner holds now."""
        check = getattr(self.owner, self.target.check)
        return RoutingCheck(
            self.target, self.module, self.owner, check, self.methods, self.schemes
        )

    def scheme_of(self, weight_key: Any, activation_key: Any) -> str:
        """The label of the quant scheme vLLM asked about (``fp8-block``); a
        module function that takes no keys has one scheme."""
        if self.target.call == "function" and len(self.schemes) == 1:
            return next(iter(self.schemes))
        for label, (wk, ak) in self.schemes.items():
            if wk is weight_key and ak is activation_key:
                return label  # vLLM passes its module-level constants
        for label, keys in self.schemes.items():
            if keys == (weight_key, activation_key):
                return label
        return "another quant scheme"

    def accepted(self) -> dict[str, tuple[str, ...]]:
        """Per quant scheme the check supports, the routing methods it accepts."""
        call = caller(self.target, self.check)
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


def locate(target: Target, module: ModuleType) -> RoutingCheck | None:
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
    return RoutingCheck(target, module, owner, check, methods, schemes)


def locate_layer_class(layer_class: LayerClass, module: ModuleType) -> type | None:
    """The class that builds a MoE layer in ``module``; None where this vLLM
    has none there (from 0.24 ``layer.FusedMoE`` is a factory function).

    Raises ``Unrecognised`` when its constructor does not name, itself, every
    attribute ``layers`` reads and ``quant_method`` (where the backend oracle
    runs). A cheap screen, not a proof: ``co_names`` holds the names the
    compiled ``__init__`` stores or reads, in no order (walking its bytecode
    with ``dis`` would cost more import time than the patch's budget). That
    each release sets them before its oracle runs is checked on real layers
    (tests/test_layers.py), and a value the layer lacks when asked counts as
    hidden (``layers.facts``).
    """
    owner = getattr(module, layer_class.owner, None)
    if not isinstance(owner, type):
        return None
    init = _unwrap_ours(inspect.getattr_static(owner, "__init__", None))
    code = getattr(init, "__code__", None)
    if code is None or "__init__" not in vars(owner):
        raise Unrecognised(f"{layer_class.owner} has no __init__ of its own")
    missing = [
        name
        for name in (*LAYER_ATTRIBUTES, "quant_method")
        if name not in code.co_names
    ]
    if missing:
        raise Unrecognised(
            f"{layer_class.owner}.__init__ does not set {', '.join(missing)}"
        )
    return owner


def _unwrap_ours(func: Any) -> Any:
    return getattr(func, MARKER, func)


def is_ours(value: Any) -> bool:
    func = value.__func__ if isinstance(value, staticmethod) else value
    return hasattr(func, MARKER)


def probe_call(module: ModuleType, call: KernelCall, keyword: str) -> Probe:
    """What vLLM's code at ``call`` does with ``keyword`` where it calls
    ``call.callee``: ``"drops"`` (no call passes it by name, or one passes
    ``None``), ``"passes"`` (every such call passes a value), or
    ``"unknown"`` (the function or its source cannot be found, it makes no
    such call, or a call without the keyword splats ``**kwargs`` / ``*args``,
    which may carry it: vLLM 0.34's BF16 ``apply`` adds
    ``**self.gemm1_activation_params``).

    A value passed by position, or a call of another function with the
    callee's name, reads as "drops": the safe side (a layer guarded that
    need not be, never one left unguarded).

    Read from the function's source with ``ast``, not from its bytecode, whose
    encoding of keyword names differs between Python versions and between
    calls with and without ``**``. Only a bug in vLLM's code in range of the
    installed vLLM is probed, once per target when vLLM imports its module."""
    owner: Any = module
    for name in call.path.split("."):
        owner = inspect.getattr_static(owner, name, None)
        if isinstance(owner, (staticmethod, classmethod)):
            owner = owner.__func__
        if owner is None:
            return "unknown"
    try:
        source = inspect.getsource(inspect.unwrap(owner))
        tree = ast.parse(textwrap.dedent(source))
    except Exception:  # no source, or a file edited since (tokenize.TokenError)
        return "unknown"
    answers = {
        _keyword_in(node, keyword)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _called(node.func) == call.callee
    }
    if "drops" in answers:
        return "drops"
    if "unknown" in answers or not answers:
        return "unknown"
    return "passes"


def _called(func: ast.expr) -> str | None:
    """The name a call calls: ``f`` of ``f(...)`` and of ``a.b.f(...)``."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _keyword_in(node: ast.Call, keyword: str) -> Probe:
    for passed in node.keywords:
        if passed.arg == keyword:
            value = passed.value
            if isinstance(value, ast.Constant) and value.value is None:
                return "drops"
            return "passes"
    splats = any(passed.arg is None for passed in node.keywords) or any(
        isinstance(arg, ast.Starred) for arg in node.args
    )
    return "unknown" if splats else "drops"
