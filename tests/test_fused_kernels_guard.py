# SPDX-License-Identifier: Apache-2.0
"""The guard on the other fused TRT-LLM kernels (NVFP4, MXFP4), proven with
vLLM's own backend selection (``fused_moe/oracle/``).

flashinfer#2822 lives in the routing code every monolithic TRT-LLM kernel
shares (``trtllm_fp4_block_scale_moe`` serves NVFP4 and MXFP4 weights), and vLLM
never removed Renormalize from those classes. With FlashInfer < 0.6.7 the
oracle must stop choosing the monolithic class for a layer inside the bug's
envelope and keep it for layers outside; with >= 0.6.7 nothing changes.

Where the installed FlashInfer is already older than 0.6.7 (vLLM 0.19.1 as
pinned: 0.6.6) the real version is used; elsewhere 0.6.6 is injected.
"""

import dataclasses
from types import SimpleNamespace

import pytest
from packaging.version import Version

from support import FLASHINFER, versions
from vllm_moe_routing_plugin import activation
from vllm_support import SM100, answer_sm100, key, module, moe_config, simulated

pytestmark = pytest.mark.vllm(">=0.19")

EXPERTS = "vllm.model_executor.layers.fused_moe.experts"
ORACLE = "vllm.model_executor.layers.fused_moe.oracle"
INSTALLED_IS_BUGGY = FLASHINFER is not None and Version(FLASHINFER).release < (0, 6, 7)


@pytest.fixture
def sm100(monkeypatch):
    oracle = module(f"{ORACLE}.mxfp4")
    if hasattr(oracle, "get_current_vllm_config"):
        # From about vLLM 0.31 the MXFP4 oracle reads the user's MoE activation
        # override from the current VllmConfig, which cannot be built without a
        # device: hand it only what it reads (no override).
        simulated("current VllmConfig without a quantization override (MXFP4 oracle)")
        config = SimpleNamespace(model_config=SimpleNamespace(quantization_config=None))
        monkeypatch.setattr(oracle, "get_current_vllm_config", lambda: config)
    answer_sm100(
        monkeypatch,
        f"{ORACLE}.nvfp4",
        f"{ORACLE}.mxfp4",
        f"{EXPERTS}.trtllm_nvfp4_moe",
        f"{EXPERTS}.trtllm_mxfp4_moe",
    )


def nvfp4_choice(num_experts, top_k):
    oracle = module(f"{ORACLE}.nvfp4")
    config = moe_config(num_experts, top_k)
    _, cls = oracle.select_nvfp4_moe_backend(
        config, key("kNvfp4Static"), key("kNvfp4Dynamic")
    )
    return cls.__name__


def mxfp4_choice(num_experts, top_k):
    oracle = module(f"{ORACLE}.mxfp4")
    activation = module("vllm.model_executor.layers.fused_moe.activation").MoEActivation
    config = dataclasses.replace(
        moe_config(num_experts, top_k), activation=activation.SWIGLUOAI
    )
    _, cls = oracle.select_mxfp4_moe_backend(config)
    return cls.__name__


def activate_with_buggy_flashinfer():
    if INSTALLED_IS_BUGGY:
        print(f"FlashInfer {FLASHINFER} as installed")
        return activation.activate(SM100)
    print("FlashInfer 0.6.6 injected")
    return activation.activate(
        SM100, version_of=versions(flashinfer_python="0.6.6", flashinfer_cubin="0.6.6")
    )


def test_nvfp4_oracle_leaves_the_fused_kernel_only_inside_the_envelope(sm100):
    assert nvfp4_choice(256, 8) == "TrtLlmNvFp4ExpertsMonolithic"
    assert activate_with_buggy_flashinfer().decision.action == "guard"
    assert nvfp4_choice(256, 8) != "TrtLlmNvFp4ExpertsMonolithic"  # Qwen3.5 NVFP4
    assert nvfp4_choice(160, 8) != "TrtLlmNvFp4ExpertsMonolithic"
    assert nvfp4_choice(128, 8) == "TrtLlmNvFp4ExpertsMonolithic"  # Qwen3-30B-A3B
    assert nvfp4_choice(512, 10) == "TrtLlmNvFp4ExpertsMonolithic"  # Qwen3-Next
    activation.deactivate()
    assert nvfp4_choice(256, 8) == "TrtLlmNvFp4ExpertsMonolithic"


def test_mxfp4_oracle_keeps_gpt_oss_on_the_fused_kernel(sm100):
    assert mxfp4_choice(256, 8) == "TrtLlmMxfp4ExpertsMonolithic"
    activate_with_buggy_flashinfer()
    assert mxfp4_choice(128, 4) == "TrtLlmMxfp4ExpertsMonolithic"  # gpt-oss-120b
    assert mxfp4_choice(32, 4) == "TrtLlmMxfp4ExpertsMonolithic"  # gpt-oss-20b
    assert mxfp4_choice(256, 8) != "TrtLlmMxfp4ExpertsMonolithic"


@pytest.mark.skipif(INSTALLED_IS_BUGGY, reason="needs FlashInfer >= 0.6.7 installed")
def test_fixed_flashinfer_changes_nothing(sm100):
    nvfp4 = module(f"{EXPERTS}.trtllm_nvfp4_moe").TrtLlmNvFp4ExpertsMonolithic
    mxfp4 = module(f"{EXPERTS}.trtllm_mxfp4_moe").TrtLlmMxfp4ExpertsMonolithic
    routing = (nvfp4._supports_routing_method, mxfp4._supports_routing_method)
    current = activation.activate(SM100)
    assert current.decision.action == "enable"
    # Known bugs other than flashinfer#2822 may be in range of this FlashInfer:
    # their layer checks change no answer for these layers.
    assert (nvfp4._supports_routing_method, mxfp4._supports_routing_method) == routing
    assert nvfp4_choice(256, 8) == "TrtLlmNvFp4ExpertsMonolithic"
    assert mxfp4_choice(256, 8) == "TrtLlmMxfp4ExpertsMonolithic"


def test_lora_experts_route_outside_the_kernel():
    """The LoRA experts call the pre-routed kernels, which the bug does not
    reach, so the plugin leaves them alone; if a vLLM made them monolithic,
    they would need a guard."""
    try:
        lora = module(f"{EXPERTS}.trtllm_lora_moe")
    except ModuleNotFoundError:
        pytest.skip("this vLLM has no TRT-LLM LoRA experts")
    mk = module("vllm.model_executor.layers.fused_moe.modular_kernel")
    for name in ("TrtLlmBf16LoRAExperts", "TrtLlmMxfp4LoRAExperts"):
        cls = getattr(lora, name, None)
        if cls is not None:
            assert issubclass(cls, mk.FusedMoEExpertsModular), name
            assert not issubclass(cls, mk.FusedMoEExpertsMonolithic), name
