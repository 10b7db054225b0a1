# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue judged per MoE layer, on real layers: each layer
is built with vLLM's own ``FusedMoE`` constructor (``FusedMoEFactory`` from
0.27), whose quant method asks vLLM's backend oracle for its kernel, with the
routing values each model family's vLLM model file passes (GLM-4.5-Air,
GLM-5, DeepSeek-V3, Kimi-K2, MiniMax-M2, Step-3.5, Ling-2.0, Qwen3-30B-A3B,
Qwen3.5-35B-A3B, Trinity-Mini), in BF16 and block FP8; once without the
plugin, once with it, once after it is undone.

Layers no in-range entry hits keep exactly vLLM's choice; layers an entry
guards leave the fused routing. Expected answers are written from the
catalogue's ranges and the model families' routing values, not taken from
running the plugin.

Answered instead of the real machine, and said in the run's output: the
platform as a CUDA SM100 device and FlashInfer's kernels as present
(``vllm_support.answer_sm100``); FlashInfer 0.6.7 where a test injects it.
"""

import logging
import os

import pytest

from support import (
    FLASHINFER,
    NEWEST_PROVEN_FLASHINFER,
    NEWEST_PROVEN_VLLM,
    VLLM,
    expected,
    versions,
)
from vllm_moe_routing_plugin import activation
from vllm_moe_routing_plugin import layers as layers_module
from vllm_support import (
    MODELS,
    SM100,
    VLLM_BELOW_0_20,
    LayerBuilder,
    module,
    simulated,
)

FP8_MONOLITHIC = "TrtLlmFp8ExpertsMonolithic"
FP8_MODULAR = "TrtLlmFp8ExpertsModular"
#: No-group DeepSeekV3 layers with a bias (flashinfer#3875's layers).
GLM = ("GLM-4.5-Air", "GLM-5", "Kimi-K2", "Trinity-Mini")

#: Per vLLM and FlashInfer release, the catalogue entries that guard each
#: (model, quant) layer with the plugin; a layer not listed keeps vLLM's
#: choice. vLLM 0.19 widens FP8 for Renormalize ("enable"), listed apart.
GUARDED: dict[tuple[str, str], dict[tuple[str, str], set[str]]] = {
    ("0.19.1", "0.6.8.post1"): {
        **{(m, q): {"flashinfer#3875"} for m in GLM for q in ("bf16", "fp8")},
        # vLLM 0.19's BF16 call drops the scale Trinity passes into the layer.
        ("Trinity-Mini", "bf16"): {"flashinfer#3875", "vllm#43769"},
    },
    ("0.19.1", "0.6.6"): {
        ("Qwen3.5-35B-A3B", "bf16"): {"flashinfer#2822"},
        ("Trinity-Mini", "bf16"): {"vllm#43769"},
    },
    # vLLM 0.17's FP8 class takes Renormalize (0.18 and 0.19 refuse it).
    ("0.17.1", "0.6.4"): {
        **{("Qwen3.5-35B-A3B", q): {"flashinfer#2822"} for q in ("bf16", "fp8")},
        ("Trinity-Mini", "bf16"): {"vllm#43769"},
    },
    ("0.20.2", "0.6.8.post1"): {
        **{(m, q): {"flashinfer#3875"} for m in GLM for q in ("bf16", "fp8")},
    },
    ("0.22.1", "0.6.11.post2"): {
        **{(m, q): {"flashinfer#3875"} for m in GLM for q in ("bf16", "fp8")},
        ("MiniMax-M2", "fp8"): {"flashinfer#3875"},
        ("Step-3.5", "fp8"): {"flashinfer#3875", "flashinfer#3499"},
    },
    # vLLM 0.23 - 0.30 route a sigmoid layer with a scale other than 1 and no
    # groups (Step-3.5) as Unspecified, which no fused kernel takes.
    ("0.26.0", "0.6.14"): {
        **{(m, q): {"flashinfer#3875"} for m in GLM for q in ("bf16", "fp8")},
        ("MiniMax-M2", "fp8"): {"flashinfer#3875"},
    },
    ("0.33.0", "0.7.2.post1"): {},
    ("0.34.0", "0.7.4"): {},
}
#: vLLM 0.19's FP8 class lacks Renormalize (vLLM PR #37605); ``enable``
#: gives it back with a fixed FlashInfer.
WIDENED = {("0.19.1", "0.6.8.post1"): {"Qwen3-30B-A3B", "Qwen3.5-35B-A3B"}}

HERE = (VLLM, FLASHINFER)
#: This environment's expectations (the newest proven pair's for an unproven
#: release in the ``newest_release`` session; None: none written).
EXPECTED = expected(GUARDED, HERE, (NEWEST_PROVEN_VLLM, NEWEST_PROVEN_FLASHINFER))
#: Every environment the test command runs this module in has its expectations
#: above (its sessions set this variable, and the test below checks it);
#: elsewhere (a release pair no session installs) the tests that need them
#: skip, and say so.
REQUIRED = os.environ.get("MOE_ROUTING_TESTS_REQUIRE_EXPECTATIONS") == "1"
needs_expectations = pytest.mark.skipif(
    EXPECTED is None, reason=f"no expectations for vLLM {VLLM} x {FLASHINFER}"
)
pytestmark = pytest.mark.skipif(VLLM is None, reason="needs vLLM")


@pytest.mark.skipif(not REQUIRED, reason="outside the test command's sessions")
def test_the_test_command_has_expectations_for_this_environment():
    assert HERE in GUARDED, f"add GUARDED[{HERE!r}] (docs/development.md)"


CASES = [(model, quant) for model in MODELS for quant in ("bf16", "fp8")]


@pytest.fixture
def layers(monkeypatch):
    return LayerBuilder(monkeypatch)


@needs_expectations
@pytest.mark.parametrize(("name", "quant"), CASES, ids=[f"{m}-{q}" for m, q in CASES])
def test_each_layer_keeps_vllms_choice_unless_a_bug_in_range_hits_it(
    layers, records, name, quant
):
    model = MODELS[name]
    without = layers.choice(model, quant)
    current = activation.activate(SM100)
    with_plugin = layers.choice(model, quant)
    guarded = EXPECTED.get((name, quant), set())
    if name in WIDENED.get(HERE, set()) and quant == "fp8":
        assert (without, with_plugin) == (FP8_MODULAR, FP8_MONOLITHIC)
    elif guarded:
        assert without in (
            "TrtLlmFp8Experts",
            "TrtLlmFp8ExpertsMonolithic",
            "TrtLlmBf16ExpertsMonolithic",
            "TrtLlmBf16Experts",
            "FLASHINFER_TRTLLM",
        ), without
        assert with_plugin != without
        # Built with another kernel (INFO), or, where this machine gives vLLM
        # none (FlashInfer's CUTLASS kernels need nvcc or flashinfer-cubin),
        # not built (the WARNING before vLLM's error).
        built = [r for r in records.lines() if "and later layers like it" in r]
        failed = [r for r in records.lines(logging.WARNING) if "vLLM then raised" in r]
        assert len(built + failed) == 1, (built, failed)
        line = (built + failed)[0]
        assert bool(failed) == (with_plugin == "no backend"), line
        for bug_id in guarded:
            assert f"{bug_id} guarded" in line, line
        assert line.count(" guarded") == len(guarded), line
    else:
        assert with_plugin == without
        assert not any(" guarded" in r for r in records.lines()), records.lines()
    activation.deactivate()
    assert layers.choice(model, quant) == without
    assert current.outcomes  # the plugin looked at this vLLM's targets


@pytest.mark.vllm("==0.19.1")
def test_glm_bf16_keeps_the_fused_kernel_on_0_19_with_flashinfer_0_6_7(layers):
    """A GLM-4.5-Air BF16 layer passes routed_scaling_factor=1.0 into the
    layer on vLLM 0.19 (glm4_moe.py scales the output itself), so vLLM's
    dropped scale (vllm#43769) cannot reach it, and FlashInfer 0.6.7 predates
    the bias cancellation (flashinfer#3875): vLLM's choice stands."""
    simulated("flashinfer-python 0.6.7 (injected version)")
    glm = MODELS["GLM-4.5-Air"]
    assert layers.choice(glm) == "FLASHINFER_TRTLLM"
    activation.activate(
        SM100,
        version_of=versions(flashinfer_python="0.6.7", flashinfer_cubin="0.6.7"),
    )
    assert layers.choice(glm) == "FLASHINFER_TRTLLM"
    assert layers.choice(MODELS["Trinity-Mini"]) != "FLASHINFER_TRTLLM"  # 2.826


@pytest.mark.vllm("==0.26.0")
@pytest.mark.flashinfer("==0.6.14")
def test_a_qwen_only_process_names_no_deepseekv3_bug(layers, records):
    current = activation.activate(SM100)
    current.report()
    layers.build(MODELS["Qwen3-30B-A3B"])
    layers.build(MODELS["Qwen3-30B-A3B"])
    logged = "\n".join(r.getMessage() for r in records.records)
    for bug_id in ("flashinfer#3803", "flashinfer#3946", "flashinfer#3875"):
        assert bug_id not in logged, logged
    kinds = [r for r in records.lines() if "and later layers like it" in r]
    assert len(kinds) == 1, kinds  # one line for the kind, not per layer
    assert kinds[0].endswith(
        ": RenormalizeNaive, 128 experts, top_k 8, scale 1, bf16 -> "
        "TrtLlmBf16ExpertsMonolithic: flashinfer#4237 warned"
    ), kinds[0]


@pytest.mark.vllm("==0.26.0")
@pytest.mark.flashinfer("==0.6.14")
def test_a_glm5_layer_is_guarded_and_named_and_deepseek_v3_warned(layers, records):
    activation.activate(SM100)
    layers.build(MODELS["GLM-5"], "fp8", prefix="model.layers.3.mlp.experts")
    layers.build(MODELS["DeepSeek-V3"], "fp8", prefix="model.layers.4.mlp.experts")
    info = [r for r in records.lines() if "and later layers like it" in r]
    assert info[0] == (
        "moe_routing: model.layers.3.mlp.experts and later layers like it: "
        "DeepSeekV3, 256 experts, top_k 8, n_group 1, bias, scale 1, fp8-block "
        f"-> {FP8_MODULAR}: flashinfer#3875 guarded"
    ), info[0]
    assert info[1].endswith(
        f"-> {FP8_MONOLITHIC}: flashinfer#3946 warned, flashinfer#4237 warned"
    ), info[1]
    warnings = records.lines(logging.WARNING)
    grouped = next(w for w in warnings if w.startswith("moe_routing: flashinfer#3946"))
    layer = "model.layers.4.mlp.experts (DeepSeekV3, 256 experts, top_k 8, n_group 8"
    assert layer in grouped
    assert grouped.endswith(
        "to keep such layers off the fused routing: "
        "VLLM_MOE_ROUTING_KNOWN_BUGS=flashinfer#3946=guard; "
        "`vllm-moe-routing status` lists every known bug"
    ), grouped
    assert not any("flashinfer#3803" in w for w in warnings)  # GLM-5 left the path


@pytest.mark.vllm("==0.26.0")
@pytest.mark.flashinfer("==0.6.14")
def test_the_guard_value_from_the_warning_guards_deepseek_v3(layers, records):
    env = {**SM100, "VLLM_MOE_ROUTING_KNOWN_BUGS": "flashinfer#3946=guard"}
    activation.activate(env)
    assert layers.choice(MODELS["DeepSeek-V3"], "fp8") == FP8_MODULAR
    assert layers.choice(MODELS["Kimi-K2"], "fp8") == FP8_MODULAR  # flashinfer#3875
    assert not any("flashinfer#3946" in w for w in records.lines(logging.WARNING))


@needs_expectations
def test_a_layer_vllm_cannot_build_after_a_guard_is_named_before_its_error(
    layers, records
):
    """``--moe-backend flashinfer_trtllm`` asks for FlashInfer's TRT-LLM
    kernels only: where a guard refuses them for a layer, vLLM raises here,
    and the plugin's WARNING before vLLM's error names the guard (vLLM's own
    error names it only where the refused class was the last it tried)."""
    model = MODELS["GLM-5"]
    if not EXPECTED.get(("GLM-5", "bf16")):
        pytest.skip(f"no known bug in range hits GLM-5 on {HERE}")
    layers.build(model, moe_backend="flashinfer_trtllm")  # vLLM alone builds it
    activation.activate(SM100)
    with pytest.raises((ValueError, NotImplementedError)) as raised:
        layers.build(
            model, prefix="model.layers.3.mlp.experts", moe_backend="flashinfer_trtllm"
        )
    assert layers_module.being_built() is None
    unbuilt = [w for w in records.lines(logging.WARNING) if "vLLM then raised" in w]
    assert len(unbuilt) == 1, unbuilt
    warning = unbuilt[0]
    assert warning == (
        "moe_routing: model.layers.3.mlp.experts: DeepSeekV3, 256 experts, top_k 8, "
        "n_group 1, bias, scale 1, bf16: flashinfer#3875 guarded (the fused kernel "
        f"refused); vLLM then raised {type(raised.value).__name__}: {raised.value}"
    ), warning
    assert not any("later layers like it" in r for r in records.lines())


@pytest.mark.vllm("==0.20.2")
def test_the_bf16_backport_passes_the_scale_on_0_20(layers, records, monkeypatch):
    """vllm#43769 fixed, not guarded: a Ling-2.0 BF16 layer (grouped, scale 2.5
    into the layer) keeps TrtLlmBf16Experts, and the kernel now receives its
    routed_scaling_factor (FlashInfer's kernel, which needs SM100, is
    answered by a recorder)."""
    ling = MODELS["Ling-2.0"]
    assert layers.choice(ling) == "TrtLlmBf16Experts"
    activation.activate(SM100)
    layer = layers.build(ling)
    method = layer.quant_method
    assert method.experts_cls.__name__ == "TrtLlmBf16Experts"
    line = next(r for r in records.lines() if "and later layers like it" in r)
    assert "vllm#43769 fixed" in line, line

    import flashinfer.fused_moe

    simulated("FlashInfer's trtllm_bf16_moe kernel (a recorder)")
    calls = []
    monkeypatch.setattr(
        flashinfer.fused_moe, "trtllm_bf16_moe", lambda **kw: calls.append(kw)
    )
    experts_cls = module(
        "vllm.model_executor.layers.fused_moe.experts.trtllm_bf16_moe"
    ).TrtLlmBf16Experts
    experts = experts_cls(layer.moe_config, method.get_fused_moe_quant_config(layer))
    experts.apply(
        None, "w1", "w2", "logits", layer.activation, 256, None, None, False,
        num_expert_group=8, e_score_correction_bias="bias",
        routed_scaling_factor=layer.routed_scaling_factor, topk_group=4,
    )  # fmt: skip
    assert calls[0]["routed_scaling_factor"] == 2.5
    assert calls[0]["n_group"] == 8 and calls[0]["routing_logits"] == "logits"
    activation.deactivate()
    experts.apply(
        None, "w1", "w2", "logits", layer.activation, 256, None, None, False,
        num_expert_group=8, e_score_correction_bias="bias",
        routed_scaling_factor=layer.routed_scaling_factor, topk_group=4,
    )  # fmt: skip
    assert "routed_scaling_factor" not in calls[1]  # vLLM 0.20's own code


@pytest.mark.vllm("==0.20.2")
def test_the_bf16_guard_instead_of_the_backport(layers):
    env = {**SM100, "VLLM_MOE_ROUTING_KNOWN_BUGS": "vllm#43769=guard"}
    activation.activate(env)
    assert layers.choice(MODELS["Ling-2.0"]) != "TrtLlmBf16Experts"
    assert layers.choice(MODELS["DeepSeek-V3"]) == "TrtLlmBf16Experts"  # scale 1


@pytest.mark.vllm(">=0.33")
def test_nothing_in_range_means_no_layer_lines(layers, records):
    activation.activate(SM100)
    for name in ("GLM-5", "DeepSeek-V3", "Qwen3-30B-A3B"):
        layers.build(MODELS[name], "fp8")
    assert not any("later layers like it" in r for r in records.lines())
    assert records.lines(logging.WARNING) == []


def test_model_files_scale_as_assumed():
    """The routing values above are what the installed vLLM's model files
    pass: deepseek_v2.py and glm4_moe.py scale the output themselves (1.0
    into the layer before vLLM 0.20, apply_routed_scale_to_output from 0.20),
    step3p5.py and afmoe.py pass their scale into the layer, and
    bailing_moe.py does from 0.20."""
    import vllm  # noqa: F401

    from vllm_moe_routing_plugin.vllm_source import vllm_source

    def source(name):
        text = vllm_source(f"vllm.model_executor.models.{name}")
        assert text is not None, name
        return text

    from_0_20 = not VLLM_BELOW_0_20
    for name in ("deepseek_v2", "glm4_moe"):
        text = source(name)
        assert ("apply_routed_scale_to_output=" in text) == from_0_20, name
        assert ("routed_scaling_factor=1.0" in text) != from_0_20, name
    assert "routed_scaling_factor=config.moe_router_scaling_factor" in source("step3p5")
    assert "routed_scaling_factor=self.route_scale" in source("afmoe")
    passes = "routed_scaling_factor=self.routed_scaling_factor" in source("bailing_moe")
    assert passes == from_0_20
