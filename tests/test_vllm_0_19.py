# SPDX-License-Identifier: Apache-2.0
"""vLLM 0.19.1 with flashinfer-python/-cubin 0.6.7 installed over its 0.6.6 pins:
the release where the plugin re-enables the fused path (vLLM PR #37605 removed
Renormalize from the FP8 monolithic class; #38859 restored it only in 0.20).

Expected answers are written from the vLLM 0.19.1 source (README, "Targets"),
not taken from running the plugin.
"""

import logging

import pytest
from packaging.version import Version

from support import FLASHINFER, LINE_HEAD, versions
from vllm_moe_routing_plugin import activation, register, targets, vllm_source
from vllm_support import (
    BOTH,
    FP8,
    FP8_BLOCK,
    FP8_PER_TENSOR,
    MXFP8,
    SM100,
    TRTLLM_FUNCTIONS,
    accepted,
    import_target_modules,
    methods,
    module,
    run_python,
)

pytestmark = pytest.mark.vllm("==0.19.1")
fixed_flashinfer = pytest.mark.flashinfer(">=0.6.7")

BUGGY = versions(flashinfer_python="0.6.6", flashinfer_cubin="0.6.6")


@pytest.fixture
def fp8():
    return module(FP8).TrtLlmFp8ExpertsMonolithic


@pytest.fixture
def functions():
    return module(TRTLLM_FUNCTIONS)


@fixed_flashinfer
def test_enable_adds_both_methods_to_every_fp8_scheme(fp8):
    raw = vars(fp8)["_supports_routing_method"]
    assert accepted(fp8._supports_routing_method, FP8_BLOCK) == {
        "DeepSeekV3",
        "Simulated",
    }
    current = activation.activate(SM100)
    assert current.decision.action == "enable"
    check = fp8._supports_routing_method
    assert accepted(check, FP8_BLOCK) == {"DeepSeekV3", "Simulated"} | BOTH
    assert accepted(check, MXFP8) == {"DeepSeekV3", "Simulated"} | BOTH
    assert (
        accepted(check, FP8_PER_TENSOR) == {"DeepSeekV3", "Llama4", "Simulated"} | BOTH
    )
    with pytest.raises(ValueError, match="Unsupported quantization scheme"):
        check(methods().Renormalize, None, None)
    activation.deactivate()
    assert vars(fp8)["_supports_routing_method"] is raw


@fixed_flashinfer
def test_enable_keeps_renormalize_on_the_bf16_function(functions):
    """The function accepts both methods already. It now judges each layer:
    vllm#43769 (vLLM 0.19 calls the kernel without routed_scaling_factor)
    refuses DeepSeekV3 only where no layer's scale is visible (``status``,
    a call outside a layer's constructor); tests/test_layers.py has the
    layers."""
    original = functions._supports_routing_method_bf16
    current = activation.activate(SM100)
    outcome = next(
        o
        for o in current.outcomes.values()
        if o.target.name == "flashinfer_trtllm_moe._supports_routing_method_bf16"
    )
    assert (outcome.state, outcome.detail) == ("patched", "checks each layer")
    assert "vllm#43769" in [plan.bug.id for plan in outcome.planned]
    check = functions._supports_routing_method_bf16
    assert accepted(check, call="function") == {
        "Default", "Renormalize", "Llama4", "RenormalizeNaive",
    }  # fmt: skip
    activation.deactivate()
    assert functions._supports_routing_method_bf16 is original


@pytest.mark.parametrize("injected", [True, False], ids=["0.6.6 injected", "installed"])
def test_guard_checks_each_layer_of_the_bf16_function(injected, functions, fp8):
    if not injected and Version(FLASHINFER).release >= (0, 6, 7):
        pytest.skip("installed FlashInfer is fixed; the injected case covers it")
    raw_fp8 = vars(fp8)["_supports_routing_method"]
    original = functions._supports_routing_method_bf16
    current = activation.activate(SM100, version_of=BUGGY if injected else versions())
    assert current.decision.action == "guard"
    check = functions._supports_routing_method_bf16
    # With no layer visible, each entry is judged as for every layer:
    # flashinfer#2822 refuses both methods, vllm#43769 DeepSeekV3.
    assert accepted(check, call="function") == {"Default", "Llama4"}
    # vLLM 0.19.1 already refuses both for FP8 monolithic; the FP8 class
    # checks its layers for the DeepSeekV3 entries only.
    outcome = next(
        o
        for o in current.outcomes.values()
        if o.target.name == "TrtLlmFp8ExpertsMonolithic"
    )
    assert "flashinfer#2822" not in [p.bug.id for p in outcome.planned]
    assert vars(fp8)["_supports_routing_method"] is raw_fp8
    activation.deactivate()
    assert functions._supports_routing_method_bf16 is original


@pytest.mark.parametrize(
    "environ",
    [
        {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "9.0"},
        {**SM100, "VLLM_MOE_ROUTING_PLUGIN_DISABLE": "1"},
    ],
)
def test_not_applicable_and_disabled_change_nothing(environ, fp8, functions, records):
    raw = vars(fp8)["_supports_routing_method"]
    bf16 = functions._supports_routing_method_bf16
    current = activation.activate(environ)
    assert current.decision.action in ("not-applicable", "disabled")
    assert vars(fp8)["_supports_routing_method"] is raw
    assert functions._supports_routing_method_bf16 is bf16
    assert accepted(fp8._supports_routing_method, FP8_BLOCK) == {
        "DeepSeekV3",
        "Simulated",
    }
    assert records.lines()[0].endswith(" - vLLM unchanged")


def test_no_gpu_from_nvml_is_not_applicable(fp8):
    class NoDriver:
        def nvmlInit(self):
            raise RuntimeError("Driver Not Loaded")

    current = activation.activate({}, nvml=NoDriver())
    assert current.decision.action == "not-applicable"
    assert "Driver Not Loaded" in current.decision.reason
    assert accepted(fp8._supports_routing_method, FP8_BLOCK) == {
        "DeepSeekV3",
        "Simulated",
    }


@fixed_flashinfer
def test_register_twice_patches_and_logs_once(fp8, functions, monkeypatch, records):
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "10.0")
    import_target_modules()
    raw = vars(fp8)["_supports_routing_method"]
    register()
    first = vars(fp8)["_supports_routing_method"]
    register()
    assert vars(fp8)["_supports_routing_method"] is first
    # The replacement wraps vLLM's original, not an earlier replacement.
    assert first.__func__._vllm_moe_routing_plugin_original is raw.__func__
    assert records.lines() == [
        f"{LINE_HEAD}: enable (flashinfer-python {FLASHINFER} >= 0.6.7; "
        "GPU 0 sm_100) - "
        "TrtLlmFp8ExpertsMonolithic +Renormalize +RenormalizeNaive, checks each "
        "layer, flashinfer_trtllm_moe._supports_routing_method_bf16 checks each "
        "layer, TrtLlmNvFp4ExpertsMonolithic checks each layer, "
        "TrtLlmMxfp4ExpertsMonolithic checks each layer"
    ]
    # No layer built: no known bug is named, no WARNING.
    assert records.lines(logging.WARNING) == []


def test_plugin_variables_are_registered_with_vllm():
    import vllm.envs

    activation.activate(SM100)
    for name in (
        "VLLM_MOE_ROUTING_PLUGIN_DISABLE",
        "VLLM_MOE_ROUTING_RENORMALIZE",
        "VLLM_MOE_ROUTING_DEVICE_CAPABILITY",
        "VLLM_MOE_ROUTING_KNOWN_BUGS",
    ):
        assert name in vllm.envs.environment_variables


LAZY = """
import sys
import vllm.plugins
print("fused_moe before:", "vllm.model_executor.layers.fused_moe" in sys.modules)
vllm.plugins.load_general_plugins()
print("fused_moe after:", "vllm.model_executor.layers.fused_moe" in sys.modules)
from vllm.model_executor.layers.fused_moe.config import RoutingMethodType as R
from vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe import (
    TrtLlmFp8ExpertsMonolithic as M)
from vllm.model_executor.layers.quantization.utils.quant_utils import (
    kFp8Static128BlockSym, kFp8Dynamic128Sym)
BLOCK = (kFp8Static128BlockSym, kFp8Dynamic128Sym)
print("accepts Renormalize:", M._supports_routing_method(R.Renormalize, *BLOCK))
"""


@pytest.mark.processes
@fixed_flashinfer
def test_vllm_loader_finds_the_plugin_and_patches_lazily():
    result = run_python(LAZY, SM100)
    assert result.returncode == 0, result.stderr
    assert "fused_moe before: False" in result.stdout
    assert "fused_moe after: False" in result.stdout
    assert "accepts Renormalize: True" in result.stdout
    log = result.stdout  # vLLM's handler writes to stdout (VLLM_LOGGING_STREAM)
    assert (
        f"{LINE_HEAD}: enable (flashinfer-python {FLASHINFER} >= 0.6.7; "
        "GPU 0 sm_100) - "
        # no flashinfer_fp4_moe: its file outlives the function the plugin targets
        "checked on import: flashinfer_trtllm_moe, trtllm_fp8_moe, trtllm_mxfp4_moe, "
        "trtllm_nvfp4_moe\n" in log
    )
    assert (
        "moe_routing: on import: TrtLlmFp8ExpertsMonolithic +Renormalize "
        "+RenormalizeNaive" in log
    )


def test_a_module_that_outlived_its_target_is_not_watched_for():
    fp4 = "vllm.model_executor.layers.quantization.utils.flashinfer_fp4_moe"
    fp8 = "vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe"
    assert vllm_source.vllm_has_module(fp4)
    assert not vllm_source.vllm_defines(fp4, targets.defined_names(fp4))
    assert targets.defined_names(fp8) == (
        "TrtLlmFp8ExpertsMonolithic",
        "TrtLlmFp8Experts",
    )
    assert vllm_source.vllm_defines(fp8, targets.defined_names(fp8))
    assert not vllm_source.vllm_defines(fp8, ("TrtLlmFp8Experts",))  # 0.17's class


def test_an_unreadable_vllm_source_counts_as_defining(monkeypatch, tmp_path):
    unreadable = tmp_path / "module.py"
    unreadable.write_bytes(b"\xff\xfe not utf-8")
    monkeypatch.setattr(vllm_source, "vllm_module_file", lambda name: str(unreadable))
    assert vllm_source.vllm_defines("vllm.any", ("Anything",))


@pytest.mark.processes
def test_vllm_plugins_allow_list_excludes_the_plugin():
    result = run_python(LAZY, {**SM100, "VLLM_PLUGINS": "lora_filesystem_resolver"})
    assert result.returncode == 0, result.stderr
    assert "accepts Renormalize: False" in result.stdout
    assert "moe_routing" not in result.stdout + result.stderr


@pytest.mark.processes
def test_log_line_in_a_real_vllm_serve():
    """vLLM 0.19 loads general plugins while building its CLI parser, logs
    their lines, then stops here for lack of a GPU."""
    import subprocess
    import sys
    from pathlib import Path

    vllm = Path(sys.executable).with_name("vllm")
    result = subprocess.run(
        [str(vllm), "serve", "/nonexistent/model"],
        env={**__import__("os").environ, **SM100},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0  # no GPU, no model: vLLM stops after the plugins
    lines = [line for line in output.splitlines() if f"{LINE_HEAD}:" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("INFO ")
    if Version(FLASHINFER).release >= (0, 6, 7):
        expected = f"enable (flashinfer-python {FLASHINFER} >= 0.6.7; GPU 0 sm_100)"
    else:
        expected = (
            f"guard (flashinfer-python {FLASHINFER} < 0.6.7 (flashinfer#2822); "
            "GPU 0 sm_100)"
        )
    assert f"{LINE_HEAD}: {expected}" in lines[0]
