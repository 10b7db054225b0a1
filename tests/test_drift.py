# SPDX-License-Identifier: Apache-2.0
"""Targets in a shape the plugin does not know (a future vLLM) are left alone
and reported; nothing else is touched. Built on stand-in modules: these shapes
do not exist in any released vLLM."""

import enum
import inspect
from types import ModuleType

import pytest

from support import STAND_IN_TARGET, Methods, stand_in_module, supported
from vllm_moe_routing_plugin import bugs, decision, layers, patching, targets

ENABLE = decision.Decision("enable", "test")
#: flashinfer#2822, as if its kernel were behind the stand-in target too.
GUARD = decision.Decision(
    "guard",
    "test",
    (
        decision.Finding(
            bugs.FLASHINFER_2822.replace(targets=(STAND_IN_TARGET,)), True, "guard"
        ),
    ),
    flashinfer="0.6.6",
)


class NoNaive(enum.IntEnum):
    Renormalize = 1
    DeepSeekV3 = 2


class Good:
    is_supported_config = staticmethod(supported)

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method == Methods.DeepSeekV3


class MethodMissing:
    is_supported_config = staticmethod(supported)


class NotStatic:
    is_supported_config = staticmethod(supported)

    def _supports_routing_method(self, routing_method, weight_key, activation_key):
        return False


class OtherSignature:
    is_supported_config = staticmethod(supported)

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key, extra):
        return False


class ConfigCheckNotStatic:
    def is_supported_config(self, moe_config, wk, ak, fmt):
        return True, None

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key):
        return (
            routing_method == Methods.Renormalize
            or routing_method == Methods.RenormalizeNaive
        )


def snapshot(cls):
    return {k: v for k, v in vars(cls).items()}


def test_known_shape_is_patched():
    cls = type("Good", (Good,), {})
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls), ENABLE)
    assert outcome.state == "patched"
    outcome.patch.undo()


@pytest.mark.parametrize(
    ("cls", "methods", "decision", "why"),
    [
        (MethodMissing, Methods, ENABLE, "Experts has no _supports_routing_method"),
        (NotStatic, Methods, ENABLE, "is not a staticmethod"),
        (OtherSignature, Methods, ENABLE, "takes 4 arguments, not 3"),
        (Good, NoNaive, ENABLE, "RoutingMethodType has no RenormalizeNaive"),
        (
            ConfigCheckNotStatic,
            Methods,
            GUARD,
            "is_supported_config is not a staticmethod",
        ),
    ],
)
def test_unknown_shapes_are_left_alone_and_said(cls, methods, decision, why):
    cls = type(cls.__name__, (cls,), {})
    before = snapshot(cls)
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, methods), decision)
    assert outcome.state == "unrecognised"
    assert outcome.detail.startswith("left alone: ")
    assert why in outcome.detail
    assert outcome.patch is None
    assert snapshot(cls) == before


def test_check_that_raises_something_else_is_left_alone():
    class Raising(Good):
        @staticmethod
        def _supports_routing_method(routing_method, weight_key, activation_key):
            raise KeyError("new quant key table")

    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(Raising), ENABLE)
    assert outcome.state == "unrecognised"
    assert "KeyError" in outcome.detail
    assert "_supports_routing_method" in vars(Raising)
    assert inspect.getattr_static(
        Raising, "_supports_routing_method"
    ).__func__.__name__ == ("_supports_routing_method")


def test_missing_class_is_absent():
    module = ModuleType("future.module")
    module.RoutingMethodType = Methods
    assert patching.apply(STAND_IN_TARGET, module, ENABLE).state == "absent"


class Layer:
    """A layer class of the known shape: its constructor sets the values
    the layer checks read, then asks for its kernel."""

    def __init__(self, bias=None):
        self.num_expert_group = None
        self.topk_group = None
        self.e_score_correction_bias = bias
        self.routed_scaling_factor = 1.0
        self.quant_method = "chosen"


class LayerWithoutScale:
    def __init__(self):
        self.num_expert_group = None
        self.topk_group = None
        self.e_score_correction_bias = None
        self.quant_method = "chosen"


def layer_module(cls):
    module = ModuleType("future.layer")
    module.FusedMoE = cls
    return module


LAYER_CLASS = targets.LayerClass("future.layer", "FusedMoE", "future")


def test_a_known_layer_class_is_watched_and_put_back():
    cls = type("FusedMoE", (Layer,), {"__init__": Layer.__init__})
    built = []
    outcome = patching.watch_layers(LAYER_CLASS, layer_module(cls), built.append)
    assert (outcome.state, outcome.detail) == ("patched", "layers visible")
    instance = cls(bias="b")
    assert instance.e_score_correction_bias == "b"  # vLLM's constructor ran
    assert [build.layer for build in built] == [instance]
    outcome.patch.undo()
    assert vars(cls)["__init__"] is Layer.__init__


class FailingLayer:
    """vLLM's constructor raising where it asks for the layer's kernel."""

    def __init__(self, error):
        self.num_expert_group = None
        self.topk_group = None
        self.e_score_correction_bias = None
        self.routed_scaling_factor = 1.0
        self.quant_method = self.choose_kernel(error)

    @staticmethod
    def choose_kernel(error):
        raise error


@pytest.mark.parametrize("reporter_raises", [False, True])
def test_a_layer_constructor_that_raises_is_reported_and_its_error_kept(
    reporter_raises,
):
    cls = type("FusedMoE", (FailingLayer,), {"__init__": FailingLayer.__init__})
    reports = []

    def on_built(build):
        reports.append((build.error, layers.being_built()))
        if reporter_raises:
            raise RuntimeError("the report failed")

    outcome = patching.watch_layers(LAYER_CLASS, layer_module(cls), on_built)
    assert outcome.state == "patched", outcome.detail
    error = ValueError("no MoE kernel")
    with pytest.raises(ValueError) as raised:
        cls(error)
    assert raised.value is error  # vLLM's exception, not the report's
    assert reports == [("ValueError: no MoE kernel", None)]
    assert layers.being_built() is None
    with pytest.raises(KeyboardInterrupt):
        cls(KeyboardInterrupt())
    assert len(reports) == 1  # an interrupted layer is not reported
    assert layers.being_built() is None

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no message")

    with pytest.raises(Unprintable):
        cls(Unprintable())
    assert reports[-1] == ("Unprintable", None)  # named by its type
    outcome.patch.undo()


def test_a_layer_class_that_does_not_set_a_value_is_left_alone_and_said():
    cls = type("FusedMoE", (LayerWithoutScale,), {})
    cls.__init__ = LayerWithoutScale.__init__
    before = snapshot(cls)
    outcome = patching.watch_layers(LAYER_CLASS, layer_module(cls), print)
    assert outcome.state == "unrecognised"
    assert "does not set routed_scaling_factor" in outcome.detail
    assert outcome.detail.endswith("judged without the layers' own values")
    assert snapshot(cls) == before


def test_a_layer_factory_function_is_no_layer_class():
    """vLLM 0.24 - 0.26: ``layer.FusedMoE`` is a function building a
    ``RoutedExperts``."""

    def FusedMoE():
        return None

    outcome = patching.watch_layers(LAYER_CLASS, layer_module(FusedMoE), print)
    assert outcome.state == "absent"
