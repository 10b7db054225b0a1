# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue against real vLLM releases, before any layer is
built: which entries are planned at which target (a bug in vLLM's code only
where probing its code finds it; the backport where vLLM's code is
recognised), what ``status`` reports (install range, the layers each entry
hits, where), and what the log says. Real layers: tests/test_layers.py.

The edges that cannot be real here are answered, and say so in the run's
output: the platform as a CUDA SM100 device and FlashInfer's kernels as present
(``vllm_support.answer_sm100``), and a FlashInfer version other than the
installed one (injected through ``version_of``).
"""

import json
import logging
from types import SimpleNamespace

import pytest

from support import LINE_HEAD
from vllm_moe_routing_plugin import activation, checks
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


@pytest.mark.vllm(">=0.22")
def test_a_vllm_that_passes_the_scale_is_left_alone(bf16_sm100):
    """The probe reads vLLM's code, not its version: from 0.22 the BF16 class
    passes routed_scaling_factor, so the entry is planned nowhere."""
    cls = module(BF16)
    name = "TrtLlmBf16ExpertsMonolithic"
    if not hasattr(cls, name):
        name = "TrtLlmBf16Experts"
    current = activation.activate(SM100)
    planned = [p.bug.id for o in current.outcomes.values() for p in o.planned]
    assert "vllm#43769" not in planned
    assert bf16_choice("DeepSeekV3") == name


@pytest.mark.vllm("==0.20.2")
def test_the_bf16_backport_is_applied_where_vllms_code_is_recognised(bf16_sm100):
    cls = module(BF16).TrtLlmBf16Experts
    original = vars(cls)["apply"]
    current = activation.activate(SM100)
    outcome = next(
        o for o in current.outcomes.values() if o.target.name == "TrtLlmBf16Experts"
    )
    assert outcome.detail == "apply backported, checks each layer"
    assert [(p.bug.id, p.done) for p in outcome.planned if p.bug.defect] == [
        ("vllm#43769", "fixed")
    ]
    assert vars(cls)["apply"] is not original
    # vLLM's code as the plugin left it passes the scale now.
    keyword = "routed_scaling_factor"
    assert not checks.lacks_keyword(module(BF16), "TrtLlmBf16Experts.apply", keyword)
    activation.deactivate()
    assert vars(cls)["apply"] is original


# status: which entries reach (the done-when of the catalogue)


def status_json(*args):
    """``status --json``'s ``known_bugs``, by id (vLLM put back afterwards)."""
    report = status.collect(cli.parser().parse_args(["status", "--json", *args]), {})
    data = json.loads(json.dumps(report.to_json()))
    return {bug["id"]: bug for bug in data["known_bugs"]}


@pytest.mark.vllm("==0.26.0")
@pytest.mark.flashinfer("==0.6.14")
def test_status_on_0_26_lists_the_entries_in_range_and_their_layers():
    bugs = status_json("--capability", "10.0")
    assert {k for k, v in bugs.items() if v["in_range"]} == {
        "flashinfer#3803", "flashinfer#3946", "flashinfer#3875", "flashinfer#4237",
        "vllm#32437",
    }  # fmt: skip
    cancel = bugs["flashinfer#3875"]
    assert (cancel["action"], cancel["hidden_action"], cancel["fixed_in"]) == (
        "guard",
        "warn",
        "0.6.18",
    )
    assert cancel["layers"] == (
        "DeepSeekV3/MiniMax2 layers without expert groups (n_group <= 1) with a "
        "correction bias"
    )
    assert "TrtLlmFp8ExpertsMonolithic" in cancel["applies_to"]
    # vLLM 0.26 passes the scale in BF16: the probe finds no defect there.
    assert bugs["vllm#43769"]["applies_to"] == []


@pytest.mark.vllm("==0.33.0")
def test_status_on_0_33_has_only_vllms_mxint4_defect_in_range():
    """FlashInfer 0.7.2.post1 has none of the catalogue's bugs; vLLM 0.33's
    MXINT4 class still calls the kernel without the layer's scale."""
    bugs = status_json("--capability", "10.0")
    applying = {k: v["applies_to"] for k, v in bugs.items() if v["applies_to"]}
    assert applying == {"vllm#32437": ["TrtLlmMxint4ExpertsMonolithic"]}
    # A bug in vLLM's code is in range where probing vLLM's code finds it.
    assert [k for k, v in bugs.items() if v["in_range"]] == ["vllm#32437"]


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_status_on_0_19_as_pinned_has_2822_in_range_and_not_with_0_6_7():
    pinned = status_json("--capability", "10.0")["flashinfer#2822"]
    assert (pinned["in_range"], pinned["action"]) == (True, "guard")
    assert (
        "flashinfer_trtllm_moe._supports_routing_method_bf16" in (pinned["applies_to"])
    )
    fixed = status_json("--capability", "10.0", "--flashinfer", "0.6.7")
    assert fixed["flashinfer#2822"]["in_range"] is False
    assert fixed["flashinfer#2822"]["applies_to"] == []


@pytest.mark.vllm("==0.19.1")
def test_without_an_sm100_gpu_status_says_what_is_in_range_and_acts_on_none():
    """A build host plans before it has the GPU: the FlashInfer entries in
    range are those an SM100 GPU would have, applied nowhere."""
    here = status_json("--capability", "9.0")
    there = status_json("--capability", "10.0")

    def flashinfer_in_range(bugs):
        return {k for k, v in bugs.items() if v["in_range"] and v["fixed_in"]}

    assert flashinfer_in_range(here) == flashinfer_in_range(there) != set()
    assert all(v["applies_to"] == [] for v in here.values())
    report = status.collect(
        cli.parser().parse_args(["status", "--capability", "9.0"]), {}
    )
    assert (
        "known bugs (the plugin acts on none here: not-applicable; in range of this "
        "FlashInfer on an SM100/SM103 GPU:)"
    ) in status.render(report).splitlines()


# The log: what a vLLM process says about the known bugs before any layer


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_the_log_names_no_known_bug_before_a_layer_is_built(records):
    import_target_modules()
    current = activation.activate(SM100)
    current.report()  # as on the next target import, once logging is up
    line = current.line()
    assert line.startswith(
        f"{LINE_HEAD}: guard (flashinfer-python 0.6.6 < 0.6.7 (flashinfer#2822); "
        "GPU 0 sm_100) - "
    ), line
    assert "flashinfer#3" not in line and "vllm#" not in line, line
    assert records.lines(logging.WARNING) == []


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_status_text_lists_the_entries_in_range_first():
    report = status.collect(
        cli.parser().parse_args(["status", "--capability", "10.0"]), {}
    )
    text = status.render(report).splitlines()
    start = text.index("known bugs (each MoE layer is judged when vLLM builds it)")
    assert text[start + 1].startswith(
        "  flashinfer#2822  guard; in range (< 0.6.7 (since flashinfer#1831, "
        "0.5.0rc1)); at flashinfer_trtllm_moe._supports_routing_method_bf16"
    ), text[start + 1]
    assert text[start + 2].strip() == (
        "hits Renormalize/RenormalizeNaive layers with 128 < experts <= 512 and "
        "top_k < 10"
    )
    assert text[start + 3].strip() == bugs_module.FLASHINFER_2822.title
    assert any(
        line.startswith("  not in range of this install: flashinfer#3875 (>= 0.6.8")
        for line in text
    ), text


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.8.post1")
def test_status_text_says_what_an_entry_does_where_its_action_cannot_apply():
    """A guard that warns where the layer's values are hidden, and a fix that
    guards where no backport fits vLLM's code (vLLM 0.19's BF16 function has
    none: the entry's layers are guarded there, and status says guard)."""
    report = status.collect(
        cli.parser().parse_args(["status", "--capability", "10.0"]), {}
    )
    text = status.render(report).splitlines()
    bf16 = "flashinfer_trtllm_moe._supports_routing_method_bf16"
    # (The NVFP4 class is listed too once a test has imported its module.)
    entries = {line.split()[0]: line for line in text if line.startswith("  ")}
    assert entries["flashinfer#3875"].startswith(
        "  flashinfer#3875  guard (warn where the layer's values are hidden); in "
        "range (>= 0.6.8, < 0.6.18 (since flashinfer#2803)); at "
        f"TrtLlmFp8ExpertsMonolithic, {bf16}"
    ), text
    assert entries["vllm#43769"] == (
        "  vllm#43769       guard (its fix has no backport for this vLLM's code); in "
        "range (vLLM 0.16.0 - 0.21.0 (0.22.0 passes it)); at "
        f"{bf16}"
    ), text
    row = next(b for b in report.known_bugs if b.id == "vllm#43769")
    assert (row.action, row.default_action) == ("guard", "fix")
    assert any(
        line.strip() == "layers vllm#43769 guarded: DeepSeekV3 layers whose "
        "routed_scaling_factor into the kernel is not 1"
        for line in text
    ), text
