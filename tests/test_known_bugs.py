# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue against real vLLM releases: each ``guard`` entry
moves the layers it reaches off the monolithic class in vLLM's own backend
selection (``fused_moe/oracle/``) on a release it affects, keeps the others,
and changes nothing where it does not reach; ``status`` reports which entries
reach (docs/known-bugs.md).

The edges that cannot be real here are answered, and say so in the run's
output: the platform as a CUDA SM100 device and FlashInfer's kernels as present
(``vllm_support.answer_sm100``), and a FlashInfer version other than the
installed one (injected through ``version_of``).
"""

import json
import logging
from types import SimpleNamespace

import pytest

from support import versions
from vllm_moe_routing_plugin import activation
from vllm_moe_routing_plugin import bugs as bugs_module
from vllm_moe_routing_plugin.diagnostics import cli, status
from vllm_support import (
    SM100,
    answer_sm100,
    import_target_modules,
    key,
    module,
    moe_config,
    simulated,
)

FUSED_MOE = "vllm.model_executor.layers.fused_moe"
FP8 = f"{FUSED_MOE}.experts.trtllm_fp8_moe"
BF16 = f"{FUSED_MOE}.experts.trtllm_bf16_moe"
FP8_ORACLE = f"{FUSED_MOE}.oracle.fp8"
UNQUANTIZED_ORACLE = f"{FUSED_MOE}.oracle.unquantized"


def without_vllm_config(monkeypatch, oracle_name):
    oracle = module(oracle_name)
    if hasattr(oracle, "get_current_vllm_config"):
        simulated("current VllmConfig without a model config (the oracle's read)")
        config = SimpleNamespace(model_config=None)
        monkeypatch.setattr(oracle, "get_current_vllm_config", lambda: config)


def fp8_choice(method, experts=256, top_k=8):
    _, cls = module(FP8_ORACLE).select_fp8_moe_backend(
        moe_config(experts, top_k, method),
        key("kFp8Static128BlockSym"),
        key("kFp8Dynamic128Sym"),
    )
    return cls.__name__


def bf16_choice(method, experts=256, top_k=8):
    """The class vLLM's BF16 oracle picks; ``None`` where no backend it tries
    next runs on this machine (the oracle raises NotImplementedError)."""
    try:
        _, cls = module(UNQUANTIZED_ORACLE).select_unquantized_moe_backend(
            moe_config(experts, top_k, method)
        )
    except NotImplementedError:
        return None
    return cls.__name__


@pytest.fixture
def fp8_sm100(monkeypatch):
    answer_sm100(monkeypatch, FP8_ORACLE, FP8)
    without_vllm_config(monkeypatch, FP8_ORACLE)


@pytest.fixture
def bf16_sm100(monkeypatch):
    answer_sm100(monkeypatch, UNQUANTIZED_ORACLE, BF16)
    without_vllm_config(monkeypatch, UNQUANTIZED_ORACLE)


# flashinfer#3499: MiniMax2 with a route scale of 1.0 (FlashInfer 0.6.8 - 0.6.12)


@pytest.mark.vllm("==0.22.1")
@pytest.mark.flashinfer("==0.6.11.post2")
def test_minimax2_layers_leave_the_fused_fp8_kernel_on_0_22(fp8_sm100):
    assert fp8_choice("MiniMax2") == "TrtLlmFp8ExpertsMonolithic"
    current = activation.activate(SM100)
    assert current.decision.action == "enable"  # Renormalize is fixed in 0.6.11
    assert fp8_choice("MiniMax2") == "TrtLlmFp8ExpertsModular"
    assert fp8_choice("MiniMax2", 32, 2) == "TrtLlmFp8ExpertsModular"  # every shape
    assert fp8_choice("Renormalize") == "TrtLlmFp8ExpertsMonolithic"
    assert fp8_choice("DeepSeekV3") == "TrtLlmFp8ExpertsMonolithic"  # only warned
    outcome = next(
        o
        for o in current.outcomes.values()
        if o.target.name == "TrtLlmFp8ExpertsMonolithic"
    )
    assert outcome.detail == "-MiniMax2 for all shapes"
    assert {"flashinfer#3499", "flashinfer#3803", "flashinfer#3946"} <= set(
        outcome.bugs
    )
    activation.deactivate()
    assert fp8_choice("MiniMax2") == "TrtLlmFp8ExpertsMonolithic"


@pytest.mark.vllm("==0.22.1")
def test_a_fixed_flashinfer_keeps_minimax2_on_the_fused_kernel(fp8_sm100):
    print("FlashInfer 0.6.13 injected")
    current = activation.activate(
        SM100, version_of=versions(flashinfer_python="0.6.13")
    )
    assert fp8_choice("MiniMax2") == "TrtLlmFp8ExpertsMonolithic"
    assert not any("flashinfer#3499" in o.bugs for o in current.outcomes.values())


@pytest.mark.vllm("==0.22.1")
def test_minimax2_guard_can_be_turned_down_to_a_warning(fp8_sm100):
    env = {**SM100, "VLLM_MOE_ROUTING_KNOWN_BUGS": "flashinfer#3499=warn"}
    activation.activate(env)
    assert fp8_choice("MiniMax2") == "TrtLlmFp8ExpertsMonolithic"


# vllm#43769: vLLM's BF16 TRT-LLM MoE does not pass routed_scaling_factor


@pytest.mark.vllm("==0.20.2")
def test_deepseekv3_bf16_layers_leave_the_trtllm_kernel_on_0_20(bf16_sm100):
    assert bf16_choice("DeepSeekV3") == "TrtLlmBf16Experts"
    current = activation.activate(SM100)
    assert bf16_choice("DeepSeekV3") != "TrtLlmBf16Experts"  # Kimi-Linear, Trinity
    assert bf16_choice("DeepSeekV3", 64, 6) != "TrtLlmBf16Experts"
    assert bf16_choice("Renormalize") == "TrtLlmBf16Experts"  # no scale applied there
    outcome = next(
        o for o in current.outcomes.values() if o.target.name == "TrtLlmBf16Experts"
    )
    assert outcome.detail == "-DeepSeekV3 for all shapes"
    assert "vllm#43769" in outcome.bugs
    activation.deactivate()
    assert bf16_choice("DeepSeekV3") == "TrtLlmBf16Experts"


@pytest.mark.vllm(">=0.22")
def test_a_vllm_that_passes_the_scale_is_left_alone(bf16_sm100):
    """The probe reads vLLM's code, not its version: from 0.22 the BF16 class
    passes routed_scaling_factor, so the entry reaches nothing."""
    cls = module(BF16)
    name = "TrtLlmBf16ExpertsMonolithic"
    if not hasattr(cls, name):
        name = "TrtLlmBf16Experts"
    current = activation.activate(SM100)
    assert not any("vllm#43769" in o.bugs for o in current.outcomes.values())
    assert bf16_choice("DeepSeekV3") == name


# status: which entries reach (the done-when of the catalogue)


def status_json(*args):
    """``status --json``'s ``known_bugs``, by id (vLLM put back afterwards)."""
    report = status.collect(cli.parser().parse_args(["status", "--json", *args]), {})
    data = json.loads(json.dumps(report.to_json()))
    return {bug["id"]: bug for bug in data["known_bugs"]}


@pytest.mark.vllm("==0.26.0")
@pytest.mark.flashinfer("==0.6.14")
def test_status_on_0_26_lists_the_deepseekv3_nan_entries():
    bugs = status_json("--capability", "10.0")
    assert {k for k, v in bugs.items() if v["reaches"]} == {
        "flashinfer#3803", "flashinfer#3946", "flashinfer#3875", "flashinfer#4237",
    }  # fmt: skip
    nan = bugs["flashinfer#3803"]
    assert (nan["action"], nan["default_action"], nan["fixed_in"]) == (
        "warn",
        "warn",
        "0.6.15",
    )
    assert "TrtLlmFp8ExpertsMonolithic" in nan["targets"]


@pytest.mark.vllm("==0.33.0")
def test_status_on_0_33_reaches_no_entry():
    bugs = status_json("--capability", "10.0")
    assert [k for k, v in bugs.items() if v["reaches"]] == []
    assert {v["action"] for v in bugs.values()} == {"none"}


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_status_on_0_19_as_pinned_reaches_2822_and_not_with_0_6_7():
    pinned = status_json("--capability", "10.0")["flashinfer#2822"]
    assert (pinned["reaches"], pinned["action"]) == (True, "guard")
    fixed = status_json("--capability", "10.0", "--flashinfer", "0.6.7")
    assert fixed["flashinfer#2822"]["reaches"] is False
    assert fixed["flashinfer#2822"]["action"] == "none"


@pytest.mark.vllm("==0.19.1")
def test_status_reaches_nothing_without_an_sm100_gpu():
    bugs = status_json("--capability", "9.0")
    assert [k for k, v in bugs.items() if v["reaches"]] == []


# The log: what a vLLM process says about the known bugs


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_the_log_names_each_reaching_bug_and_warns_once(records):
    import_target_modules()
    current = activation.activate(SM100)
    current.report()  # as on the next target import, once logging is up
    line = current.line()
    assert line.endswith(
        "; known bugs: flashinfer#2822 guarded, flashinfer#3803 warned, "
        "flashinfer#3946 warned, vllm#43769 guarded, flashinfer#4237 warned"
    ), line
    warnings = [
        w
        for w in records.lines(logging.WARNING)
        if w.startswith("moe_routing: known bugs reach this install")
    ]
    assert len(warnings) == 1, warnings
    for bug_id in ("flashinfer#3803", "flashinfer#3946", "flashinfer#4237"):
        assert f"{bug_id} (" in warnings[0]
    assert "vllm#43769" not in warnings[0]  # guarded, not warned


@pytest.mark.vllm("==0.19.1")
def test_ignored_entries_are_not_warned_about(records):
    import_target_modules()
    ignore = "flashinfer#3803=ignore,flashinfer#3946=ignore,flashinfer#4237=ignore"
    ignore += ",flashinfer#3875=ignore"
    current = activation.activate({**SM100, "VLLM_MOE_ROUTING_KNOWN_BUGS": ignore})
    current.report()
    assert not any(
        w.startswith("moe_routing: known bugs reach")
        for w in records.lines(logging.WARNING)
    )
    assert "warned" not in current.line()


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_status_text_lists_the_reaching_bugs_first():
    report = status.collect(
        cli.parser().parse_args(["status", "--capability", "10.0"]), {}
    )
    text = status.render(report).splitlines()
    start = text.index("known bugs (docs/known-bugs.md)")
    assert text[start + 1].startswith(
        "  flashinfer#2822  guard  reaches "
        "flashinfer_trtllm_moe._supports_routing_method_bf16"
    ), text[start + 1]
    assert text[start + 1].endswith("; fixed in 0.6.7")
    assert text[start + 2].strip() == bugs_module.FLASHINFER_2822.title
    assert any(
        line == "  not reaching this install: flashinfer#3875, flashinfer#3499, "
        "flashinfer#2642, flashinfer#4486"
        for line in text
    ), text
