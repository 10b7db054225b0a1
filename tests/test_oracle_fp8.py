# SPDX-License-Identifier: Apache-2.0
"""The strongest evidence that the plugin changes what vLLM does: vLLM's own
FP8 MoE backend selection (``oracle/fp8.py``, ``select_fp8_moe_backend``) for a
Qwen3.5-35B-A3B-like block-FP8 layer (256 experts, top_k 8, Renormalize).

The edges that cannot be real here are answered, and say so in the run's
output: the platform as a CUDA SM100 device, FlashInfer's TRT-LLM MoE kernels
as present (FlashInfer 0.7.x does not import without a CUDA runtime, so vLLM's
``has_flashinfer_trtllm_fused_moe()`` is false on this machine), and, from
about vLLM 0.31, the current VllmConfig the oracle reads (it cannot be built
without a device: the oracle gets only what it reads, no model config).
"""

from types import SimpleNamespace

import pytest
from packaging.version import Version

from support import FLASHINFER
from vllm_moe_routing_plugin import activation
from vllm_support import SM100, answer_sm100, key, module, moe_config, simulated

ORACLE = "vllm.model_executor.layers.fused_moe.oracle.fp8"
FP8 = "vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe"


@pytest.fixture
def sm100(monkeypatch):
    answer_sm100(monkeypatch, ORACLE, FP8)
    oracle = module(ORACLE)
    if hasattr(oracle, "get_current_vllm_config"):
        simulated("current VllmConfig without a model config (the FP8 oracle's read)")
        config = SimpleNamespace(model_config=None)
        monkeypatch.setattr(oracle, "get_current_vllm_config", lambda: config)


def qwen35_choice():
    oracle = module(ORACLE)
    _, cls = oracle.select_fp8_moe_backend(
        moe_config(256, 8, "Renormalize"),
        key("kFp8Static128BlockSym"),
        key("kFp8Dynamic128Sym"),
    )
    return cls.__name__


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer(">=0.6.7")
def test_plugin_moves_qwen35_fp8_to_the_fused_kernel_on_0_19(sm100):
    assert qwen35_choice() == "TrtLlmFp8ExpertsModular"  # vLLM PR #37605
    activation.activate(SM100)
    assert qwen35_choice() == "TrtLlmFp8ExpertsMonolithic"
    activation.deactivate()
    assert qwen35_choice() == "TrtLlmFp8ExpertsModular"


@pytest.mark.vllm(">=0.20")
def test_newest_vllm_chooses_the_fused_kernel_either_way(sm100):
    assert Version(FLASHINFER).release >= (0, 6, 7)
    assert qwen35_choice() == "TrtLlmFp8ExpertsMonolithic"  # vLLM PR #38859
    assert activation.activate(SM100).decision.action == "enable"
    assert qwen35_choice() == "TrtLlmFp8ExpertsMonolithic"
