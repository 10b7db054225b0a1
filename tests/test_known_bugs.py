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

from support import LINE_HEAD, NEWEST_PROVEN_VLLM, VLLM, expected, versions
from vllm_moe_routing_plugin import activation, checks, targets
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
    call = bugs_module.VLLM_43769.defect.callers[targets.BF16_0_20]
    assert checks.probe_call(module(BF16), call, "routed_scaling_factor") == "passes"
    activation.deactivate()
    assert checks.probe_call(module(BF16), call, "routed_scaling_factor") == "drops"
    assert vars(cls)["apply"] is original


# The probes of vLLM's code, on the real code of each release

_BF16_FN = "flashinfer_trtllm_moe._supports_routing_method_bf16"
_BF16_MONOLITHIC = "TrtLlmBf16ExpertsMonolithic"
_MXINT4 = "TrtLlmMxint4ExpertsMonolithic"
_FROM_0_26 = {
    ("vllm#43769", _BF16_MONOLITHIC): "passes",
    ("vllm#32437", _MXINT4): "drops",
}
#: Per release the test command installs, what the code behind each target a
#: vLLM defect names does with the layer's routed_scaling_factor, written from
#: the wheels' sources (scripts/layer_evidence.py): 0.16 - 0.19's module
#: function and 0.20 - 0.21's BF16 class drop it, 0.22 passes it (vllm#43769);
#: the MXINT4 class drops it from 0.23 on (vllm#32437); 0.34's BF16 call
#: splats ``**self.gemm1_activation_params`` beside the keyword it passes.
PROBES: dict[str, dict[tuple[str, str], str]] = {
    "0.17.1": {("vllm#43769", _BF16_FN): "drops"},
    "0.19.1": {("vllm#43769", _BF16_FN): "drops"},
    "0.20.2": {("vllm#43769", "TrtLlmBf16Experts"): "drops"},
    "0.22.1": {("vllm#43769", "TrtLlmBf16Experts"): "passes"},
    "0.26.0": _FROM_0_26,
    "0.33.0": _FROM_0_26,
    "0.34.0": _FROM_0_26,
}


PROBED = expected(PROBES, VLLM, NEWEST_PROVEN_VLLM)


@pytest.mark.skipif(PROBED is None, reason=f"no probe answers for vLLM {VLLM}")
def test_each_vllm_defect_probe_reads_this_releases_code():
    """Both answers occur across the releases: a probe that always said
    "drops" (or "passes") fails on some release here."""
    modules = import_target_modules()
    answers = {}
    for bug in bugs_module.KNOWN_BUGS:
        if bug.defect is None:
            continue
        for target, call in bug.defect.callers.items():
            found = modules.get(target.module)
            if found is None or checks.locate(target, found) is None:
                continue  # this release has no such target
            answers[(bug.id, target.name)] = checks.probe_call(
                found, call, bug.defect.keyword
            )
    assert answers == PROBED


def planned_defects(**versions_):
    current = activation.activate(SM100, version_of=versions(**versions_))
    return {
        (p.bug.id, o.target.name)
        for o in current.outcomes.values()
        for p in o.planned
        if p.bug.defect is not None
    }


@pytest.mark.vllm("==0.20.2")
def test_a_release_past_the_defects_range_is_not_probed():
    """vLLM 0.20.2's BF16 code drops the scale, but as 0.22.0 (injected) it is
    outside vllm#43769's range, and the probe does not widen it."""
    import_target_modules()
    simulated("vllm 0.22.0 (injected version)")
    assert planned_defects(vllm="0.22.0") == set()
    activation.deactivate()
    assert planned_defects() == {("vllm#43769", "TrtLlmBf16Experts")}


@pytest.mark.vllm(">=0.26")
def test_a_release_in_range_whose_code_passes_the_value_is_left_alone():
    """As 0.21.0 (injected), vLLM's BF16 class is in vllm#43769's range, but
    its code passes the scale (as a backport to a 0.21 build would): the probe
    confirms the range only where the code drops it. vllm#32437 (0.23 on) is
    out of range there, and planned on this release itself."""
    import_target_modules()
    simulated("vllm 0.21.0 (injected version)")
    assert planned_defects(vllm="0.21.0") == set()
    activation.deactivate()
    assert planned_defects() == {("vllm#32437", _MXINT4)}


@pytest.mark.vllm(">=0.26")
@pytest.mark.parametrize(("scale", "refused"), [(2.5, True), (1.0, False)])
def test_the_mxint4_class_refuses_the_layers_vllm_32437_hits(
    scale, refused, monkeypatch
):
    """vllm#32437, in range from 0.23 on: vLLM's own MXINT4 class, asked by
    the oracle about a DeepSeekV3 layer being built, refuses the fused kernel
    where the layer passes a scale other than 1 into it (Ling, Kimi-Linear
    from 0.20) and keeps it where the model scales its output (DeepSeek-V3,
    Kimi-K2-Thinking). The layer under construction is a stand-in holding
    the attributes vLLM's ``RoutedExperts`` sets (tests/test_layers.py builds
    the real one for BF16 and FP8)."""
    from vllm_moe_routing_plugin import layers

    path = f"{FUSED_MOE}.experts.trtllm_mxint4_moe"
    monkeypatch.setenv("VLLM_USE_FLASHINFER_MOE_INT4", "1")  # vLLM's own opt-in
    answer_sm100(
        monkeypatch,
        path,
        "vllm.model_executor.layers.quantization.utils.flashinfer_mxint4_moe",
    )
    cls = module(path).TrtLlmMxint4ExpertsMonolithic
    config = moe_config(256, 8, "DeepSeekV3")
    mk = module(f"{FUSED_MOE}.modular_kernel")
    ask = lambda: cls.is_supported_config(  # noqa: E731
        cls, config, key("kInt4Static32"), None, mk.FusedMoEActivationFormat.Standard
    )
    assert ask() == (True, None)
    activation.activate(SM100)
    being_built = SimpleNamespace(
        global_num_experts=256, top_k=8, num_expert_group=8, topk_group=4,
        e_score_correction_bias=object(), routed_scaling_factor=scale,
        layer_name="model.layers.1.mlp.experts",
    )  # fmt: skip
    layers.enter(being_built)
    try:
        supported, reason = ask()
    finally:
        layers.leave()
    assert supported is not refused
    if refused:
        assert reason.startswith(
            "FlashInfer's trtllm_mxint4_block_scale_moe is called by vLLM with "
            "routed_scaling_factor=None for DeepSeekV3 layers whose "
            "routed_scaling_factor into the kernel is not 1 (vllm#32437; this layer: "
            "DeepSeekV3, 256 experts, top_k 8, n_group 8, bias, scale 2.5"
        ), reason


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
    # vLLM 0.26 is past vllm#43769's range (fixed in 0.22.0).
    assert (bugs["vllm#43769"]["in_range"], bugs["vllm#43769"]["applies_to"]) == (
        False,
        [],
    )


@pytest.mark.vllm(">=0.33")
def test_status_on_0_33_and_later_has_only_vllms_mxint4_defect_in_range():
    """FlashInfer 0.7.2.post1 and 0.7.4 have none of the catalogue's bugs;
    vLLM 0.33's and 0.34's MXINT4 class still calls the kernel without the
    layer's scale, and vllm#43769 (fixed in 0.22.0) is out of range."""
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


@pytest.mark.parametrize("gpu", ["9.0", None])
@pytest.mark.vllm(">=0.19")
def test_without_an_sm100_gpu_status_lists_what_an_sm100_run_would_meet(gpu):
    """A build host plans before it has the GPU: where the plugin acts on
    none (another GPU, or none at all), ``status`` lists the entries an SM100
    GPU would meet with these packages, vLLM's own defects and the targets
    where each is judged included, as ``--capability 10.0`` does."""
    args = ["--capability", gpu] if gpu else []
    here = status_json(*args)
    there = status_json("--capability", "10.0")

    def meets(bugs):
        return {
            k: (v["in_range"], v["applies_to"], v["action"]) for k, v in bugs.items()
        }

    assert meets(here) == meets(there)
    assert any(v["in_range"] and v["applies_to"] for v in here.values())
    report = status.collect(cli.parser().parse_args(["status", *args]), {})
    assert report.action == "not-applicable"
    assert report.known_bugs_gpu == "10.0"
    assert (
        "known bugs (the plugin acts on none here: not-applicable; with these "
        "packages an SM100/SM103 GPU would meet, as --capability 10.0 shows:)"
    ) in status.render(report).splitlines()
    assert all(row.state != "patched" for row in report.targets)  # vLLM unchanged


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
        "range (vLLM < 0.22.0); at "
        f"{bf16}"
    ), text
    row = next(b for b in report.known_bugs if b.id == "vllm#43769")
    assert (row.action, row.default_action) == ("guard", "fix")
    assert any(
        line.strip() == "layers vllm#43769 guarded: DeepSeekV3 layers whose "
        "routed_scaling_factor into the kernel is not 1"
        for line in text
    ), text
