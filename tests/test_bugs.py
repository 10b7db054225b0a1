# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue: consistent with the targets; its layer
predicates; and the one source the decision, the layer check (its verdict,
the reason vLLM prints), the log lines and the README's table read.

The patching tests run on stand-in modules (support.STAND_IN_TARGET), and
the layer being built is a stand-in object with the attributes vLLM's layer
classes set: tests/test_layers.py proves the same on real vLLM layers."""

import enum
import importlib.util
import linecache
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.version import Version

from support import STAND_IN_TARGET, stand_in_module, supported
from vllm_moe_routing_plugin import (
    bugs,
    checks,
    decision,
    envs,
    layers,
    log_line,
    patching,
    policy,
    targets,
)
from vllm_moe_routing_plugin.facts import Facts, gpus_from_capabilities
from vllm_moe_routing_plugin.layers import LayerFacts

B200 = gpus_from_capabilities([(10, 0)], "test")
README = Path(__file__).resolve().parents[1] / "README.md"
KNOWN_BUGS_DOC = README.with_name("docs") / "known-bugs.md"
#: RoutingMethodType member names of vLLM 0.16 - 0.34.
VLLM_METHODS = {
    "Default", "Renormalize", "DeepSeekV3", "Llama4", "RenormalizeNaive", "TopK",
    "SigmoidRenorm", "MiniMax2", "Sigmoid", "Unspecified", "DeepseekV4", "Custom",
    "Simulated",
}  # fmt: skip


def decide(flashinfer: str, **env: str) -> decision.Decision:
    return policy.decide(Facts({"flashinfer-python": flashinfer}, B200), envs.read(env))


def test_entries_name_the_plugins_targets_and_methods():
    assert len({bug.id for bug in bugs.KNOWN_BUGS}) == len(bugs.KNOWN_BUGS)
    for bug in bugs.KNOWN_BUGS:
        assert set(bug.targets) <= set(targets.TARGETS), bug.id
        assert set(bug.layers.methods) <= VLLM_METHODS, bug.id
        assert bug.id in bug.references
        assert bug.kernels and bug.affected and bug.remove_when and bug.why
        assert bug.action in ("guard", "fix", "warn"), bug.id
        # A FlashInfer bug has a fixed release; a bug in vLLM's code a probe.
        assert (bug.fixed_in is None) == (bug.defect is not None), bug.id
        assert bug.guardable or bug.action == "warn", bug.id
        assert bug.fixable or bug.action != "fix", bug.id
        if bug.defect is not None:
            assert set(bug.defect.callers) <= set(bug.targets), bug.id
            assert set(bug.defect.backported) <= set(bug.defect.callers), bug.id
        assert bug is bugs.by_id(bug.id)


@pytest.mark.parametrize(
    ("flashinfer", "in_range"),
    [
        ("0.6.3", {"flashinfer#2822", "flashinfer#3803", "flashinfer#3946",
                   "flashinfer#2642", "flashinfer#4237"}),
        ("0.6.6", {"flashinfer#2822", "flashinfer#3803", "flashinfer#3946",
                   "flashinfer#4237"}),
        ("0.6.8.post1", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                         "flashinfer#3499", "flashinfer#4237"}),
        ("0.6.12", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                    "flashinfer#3499", "flashinfer#4237"}),
        ("0.6.14", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                    "flashinfer#4237"}),
        ("0.6.16.post3", {"flashinfer#3946", "flashinfer#3875", "flashinfer#4486"}),
        ("0.6.18.post1", set()),
        ("0.7.2.post1", set()),
    ],
)  # fmt: skip
def test_which_flashinfer_releases_each_entry_affects(flashinfer, in_range):
    """The ranges established from the wheels' sources (docs/known-bugs.md).
    The bugs in vLLM's own code go by vLLM's release (none installed here:
    unknown, so in range, and the probe decides)."""
    findings = decide(flashinfer).findings
    assert [f.bug.id for f in findings] == [bug.id for bug in bugs.KNOWN_BUGS]
    assert {f.bug.id for f in findings if f.in_range} == in_range | {
        "vllm#43769",
        "vllm#32437",
    }


def test_the_range_is_stated_once():
    assert bugs.FLASHINFER_2822.affected == "< 0.6.7 (since flashinfer#1831, 0.5.0rc1)"
    assert bugs.FLASHINFER_3875.affected == (
        ">= 0.6.8, < 0.6.18 (since flashinfer#2803)"
    )
    assert bugs.VLLM_43769.affected == "vLLM < 0.22.0"
    assert bugs.VLLM_32437.affected == (
        "vLLM >= 0.23.0 (not fixed upstream; 0.19 - 0.22 call the kernel with no "
        "routing check)"
    )
    assert (bugs.VLLM_43769.fixed_in_text, bugs.VLLM_32437.fixed_in_text) == (
        "vLLM 0.22.0",
        "not yet",
    )
    assert bugs.FLASHINFER_3875.in_range((0, 6, 17), vllm=None)
    assert not bugs.FLASHINFER_3875.in_range((0, 6, 18), vllm=None)
    assert not bugs.FLASHINFER_3875.in_range((0, 6, 7), vllm=None)


def layer(method, experts=256, top_k=8, *, n_group=None, bias=False, scale=1.0):
    """A visible layer's values, as vLLM builds them."""
    return LayerFacts(
        method, "bf16", experts, top_k, visible=True, n_group=n_group,
        has_bias=bias, scale=scale,
    )  # fmt: skip


GLM_5 = layer("DeepSeekV3", n_group=1, bias=True)
DEEPSEEK_V3 = layer("DeepSeekV3", n_group=8, bias=True)
MINIMAX_M2 = layer("MiniMax2", bias=True)
STEP_3_5 = layer("MiniMax2", 288, bias=True, scale=3.0)
TRINITY = layer("DeepSeekV3", 128, n_group=1, bias=True, scale=2.826)
QWEN3_5 = layer("Renormalize")


@pytest.mark.parametrize(
    ("bug", "hit"),
    [
        (bugs.FLASHINFER_2822, {"QWEN3_5"}),
        (bugs.FLASHINFER_3803, {"GLM_5", "TRINITY"}),
        (bugs.FLASHINFER_3946, {"DEEPSEEK_V3"}),
        (bugs.FLASHINFER_3875, {"GLM_5", "TRINITY", "MINIMAX_M2", "STEP_3_5"}),
        (bugs.FLASHINFER_3499, {"STEP_3_5"}),
        (bugs.VLLM_43769, {"TRINITY"}),
        (bugs.VLLM_32437, {"TRINITY"}),
        (bugs.FLASHINFER_4237, {"GLM_5", "DEEPSEEK_V3", "MINIMAX_M2", "STEP_3_5",
                                "TRINITY", "QWEN3_5"}),
    ],
    ids=lambda value: getattr(value, "id", ""),
)  # fmt: skip
def test_each_entry_hits_the_layers_it_describes(bug, hit):
    families = ("GLM_5", "DEEPSEEK_V3", "MINIMAX_M2", "STEP_3_5", "TRINITY", "QWEN3_5")
    assert {name for name in families if bug.layers.hits(globals()[name])} == hit


@pytest.mark.parametrize(
    ("experts", "top_k", "inside"),
    [(128, 8, False), (129, 8, True), (256, 8, True), (512, 9, True),
     (513, 8, False), (256, 10, False), (160, 8, True), (32, 4, False)],
)  # fmt: skip
def test_flashinfer_2822_envelope(experts, top_k, inside):
    for method in ("Renormalize", "RenormalizeNaive"):
        assert bugs.FLASHINFER_2822.layers.hits(layer(method, experts, top_k)) is (
            inside
        )
    assert bugs.FLASHINFER_2822.layers.hits(layer("DeepSeekV3", experts, top_k)) is (
        False
    )


def test_a_value_only_the_layer_holds_is_hidden_without_it():
    blind = LayerFacts("DeepSeekV3", "fp8-block", 256, 8)  # no layer being built
    assert bugs.FLASHINFER_3875.layers.hits(blind) is None
    assert bugs.VLLM_43769.layers.hits(blind) is None
    # A visible value that rules the layer out still decides.
    assert bugs.FLASHINFER_3499.layers.hits(blind) is False  # not MiniMax2
    assert bugs.FLASHINFER_2822.layers.hits(LayerFacts("Renormalize", "bf16")) is None
    assert bugs.FLASHINFER_3875.layers.hidden == "n_group, its correction bias"


def test_layers_in_words():
    assert str(bugs.FLASHINFER_2822.layers) == (
        "Renormalize/RenormalizeNaive layers with 128 < experts <= 512 and top_k < 10"
    )
    assert str(bugs.FLASHINFER_3875.layers) == (
        "DeepSeekV3/MiniMax2 layers without expert groups (n_group <= 1) with a "
        "correction bias"
    )
    assert str(bugs.FLASHINFER_3499.layers) == (
        "MiniMax2 layers whose routed_scaling_factor into the kernel is not 1"
    )
    assert str(bugs.FLASHINFER_4237.layers) == "every layer"


def test_the_refusal_reason_is_read_from_the_entry():
    decision = decide("0.6.6")
    assert decision.action == "guard"
    assert decision.reason.startswith(
        "flashinfer-python 0.6.6 < 0.6.7 (flashinfer#2822)"
    )
    check = policy.LayerCheck(
        (policy.Planned(bugs.FLASHINFER_2822, "guarded", "guarded"),),
        flashinfer="0.6.6",
    )
    verdict = check.judge(QWEN3_5)
    assert verdict.refused
    assert verdict.reason() == (
        "FlashInfer 0.6.6 routes Renormalize wrongly for Renormalize/RenormalizeNaive "
        "layers with 128 < experts <= 512 and top_k < 10 (flashinfer#2822; fixed in "
        "0.6.7; this layer: Renormalize, 256 experts, top_k 8, scale 1, bf16)"
    )
    assert not check.judge(layer("Renormalize", 128)).refused


def test_a_hidden_value_takes_the_entrys_hidden_action():
    """flashinfer#3875 guards layers it hits, and only warns where n_group is
    not visible: a guard would then refuse DeepSeek-V3's grouped layers too."""
    finding = next(f for f in decide("0.6.14").findings if f.bug.id.endswith("3875"))
    assert (finding.action, finding.hidden_action) == ("guard", "warn")
    check = policy.LayerCheck(
        (policy.Planned(bugs.FLASHINFER_3875, "guarded", "warned"),), False, "0.6.14"
    )
    blind = check.judge(LayerFacts("DeepSeekV3", "fp8-block", 256, 8))
    assert (blind.refused, blind.warned, blind.blind) == (
        False,
        [bugs.FLASHINFER_3875],
        [bugs.FLASHINFER_3875],
    )
    assert check.judge(GLM_5).refused
    assert not check.judge(DEEPSEEK_V3).refused


@pytest.mark.parametrize(
    ("asked", "actions"),
    [
        ("flashinfer#3875=guard", ("guard", "warn")),  # its own action: as is
        ("flashinfer#3875=warn", ("warn", "warn")),
        ("flashinfer#3946=guard", ("guard", "guard")),
    ],
)
def test_asking_for_an_action_sets_the_hidden_one_only_when_it_changes(asked, actions):
    """Naming an entry with its default action must not widen its guard to
    layers whose n_group is hidden (DeepSeek-V3's grouped layers)."""
    bug_id = asked.split("=")[0]
    d = decide("0.6.14", VLLM_MOE_ROUTING_KNOWN_BUGS=asked)
    finding = next(f for f in d.findings if f.bug.id == bug_id)
    assert (finding.action, finding.hidden_action) == actions


def test_a_copy_with_another_action_hides_nothing_else():
    copy = bugs.FLASHINFER_3946.replace(action="guard")
    assert (copy.action, copy.hidden_action) == ("guard", "guard")
    kept = bugs.FLASHINFER_3875.replace(id="flashinfer#9998")
    assert (kept.action, kept.hidden_action) == ("guard", "warn")


def test_a_new_entry_reaches_the_decision(monkeypatch):
    later = bugs.FLASHINFER_2822.replace(
        id="flashinfer#9999", wrong="routes it wrongly too", fixed_in=(0, 7, 0)
    )
    monkeypatch.setattr(policy, "KNOWN_BUGS", (bugs.FLASHINFER_2822, later))
    decision = decide("0.6.8")
    assert decision.action == "guard"
    assert decision.reason.startswith(
        "flashinfer-python 0.6.8 < 0.7.0 (flashinfer#9999)"
    )
    assert decide("0.7.0").reason.startswith("flashinfer-python 0.7.0 >= 0.7.0")


def test_default_actions_and_what_a_user_can_change():
    d = decide("0.6.11.post2", VLLM_MOE_ROUTING_KNOWN_BUGS=(
        "flashinfer#3946=guard,flashinfer#4237=ignore,flashinfer#3499=warn,"
        "flashinfer#2642=guard,flashinfer#2822=warn,flashinfer#1=guard,"
        "flashinfer#3875=fix,vllm#43769=guard"
    ))  # fmt: skip
    actions = {f.bug.id: (f.action, f.hidden_action) for f in d.findings}
    assert actions == {
        # VLLM_MOE_ROUTING_RENORMALIZE governs it
        "flashinfer#2822": ("guard", "guard"),
        "flashinfer#3803": ("warn", "warn"),
        "flashinfer#3946": ("guard", "guard"),
        "flashinfer#3875": ("guard", "warn"),  # no fix to apply: its default
        "flashinfer#3499": ("warn", "warn"),
        "vllm#43769": ("guard", "guard"),
        "vllm#32437": ("guard", "guard"),
        "flashinfer#2642": ("warn", "warn"),  # not a routing bug: no guard
        "flashinfer#4237": ("ignore", "ignore"),
        "flashinfer#4486": ("warn", "warn"),
    }
    assert d.notes == (
        "VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#2642 cannot be guarded (not a "
        "routing bug); it stays warn",
        "VLLM_MOE_ROUTING_KNOWN_BUGS cannot set flashinfer#2822; "
        "VLLM_MOE_ROUTING_RENORMALIZE governs it",
        "VLLM_MOE_ROUTING_KNOWN_BUGS names flashinfer#1, not a known bug; ignored",
        "VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#3875 has no fix the plugin can "
        "apply; it stays guard",
    )
    assert d.action == "enable"
    assert [f.bug.id for f in d.acting] == [
        "flashinfer#3803", "flashinfer#3946", "flashinfer#3875", "flashinfer#3499",
        "vllm#43769", "vllm#32437",
    ]  # fmt: skip


def test_renormalize_decision_is_unchanged_by_other_entries():
    for version, action in [("0.6.6", "guard"), ("0.6.8.post1", "enable")]:
        d = decide(version)
        assert d.action == action
        assert d.reason.startswith(
            f"flashinfer-python {version} {'<' if action == 'guard' else '>='} 0.6.7"
        )
    forced = decide("0.6.6", VLLM_MOE_ROUTING_RENORMALIZE="enable")
    renormalize = forced.findings[0]
    assert (renormalize.bug, renormalize.in_range, renormalize.action) == (
        bugs.FLASHINFER_2822,
        True,
        "ignore",
    )


# Patching a stand-in target


class Routing(enum.IntEnum):
    """A ``RoutingMethodType`` with the sigmoid methods too."""

    Renormalize = 1
    DeepSeekV3 = 2
    RenormalizeNaive = 4
    MiniMax2 = 7


class SigmoidExperts:
    """A monolithic class that accepts Renormalize, DeepSeekV3 and MiniMax2."""

    is_supported_config = staticmethod(supported)

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method in (
            Routing.Renormalize, Routing.RenormalizeNaive, Routing.DeepSeekV3,
            Routing.MiniMax2,
        )  # fmt: skip

    def apply(self, router_logits, routed_scaling_factor=None):
        return kernel(routing_logits=router_logits)


def experts_accepting(*accepted: Routing) -> type:
    """A fresh ``Experts`` class whose routing check accepts only ``accepted``."""

    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method in accepted

    check = staticmethod(_supports_routing_method)
    return type("Experts", (SigmoidExperts,), {"_supports_routing_method": check})


def kernel(**kwargs):
    return kwargs


def config(method: str, experts: int = 256, top_k: int = 8):
    routing = getattr(Routing, method)
    return SimpleNamespace(num_experts=experts, experts_per_token=top_k,
                           routing_method=routing)  # fmt: skip


def being_built(experts=256, top_k=8, *, n_group=None, bias=False, scale=1.0):
    """A stand-in for the vLLM layer object under construction."""
    return SimpleNamespace(
        global_num_experts=experts, top_k=top_k, num_expert_group=n_group,
        topk_group=n_group, e_score_correction_bias=object() if bias else None,
        routed_scaling_factor=scale, layer_name="model.layers.1.mlp.experts",
    )  # fmt: skip


def entry(bug: bugs.KnownBug) -> bugs.KnownBug:
    return bug.replace(targets=(STAND_IN_TARGET,))


def deciding(bug: bugs.KnownBug, action="guard", flashinfer="0.6.8.post1"):
    """An ``enable`` decision with one in-range entry."""
    return decision.Decision(
        "enable",
        "test",
        (decision.Finding(bug, True, action),),
        flashinfer=flashinfer,
    )


def ask(cls, method, built=None, experts=256, top_k=8):
    """``is_supported_config`` as vLLM's oracle asks it, inside ``built``'s
    constructor when given; the verdicts it reached."""
    build = layers.enter(built) if built is not None else None
    try:
        answer = cls.is_supported_config(
            cls, config(method, experts, top_k), None, None, None
        )
    finally:
        if build is not None:
            layers.leave()
    return answer, (build.verdicts if build else [])


def test_a_guard_entry_refuses_only_the_layers_it_hits_and_says_why():
    cls = type("Experts", (SigmoidExperts,), {})
    decision = deciding(entry(bugs.FLASHINFER_3499), flashinfer="0.6.11.post2")
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert (outcome.state, outcome.detail) == ("patched", "checks each layer")
    assert [p.bug.id for p in outcome.planned] == ["flashinfer#3499"]
    step = being_built(288, scale=3.0)
    (answer, verdicts) = ask(cls, "MiniMax2", step, 288)
    assert answer == (
        False,
        "FlashInfer 0.6.11.post2 routes MiniMax2 with a route scale of 1.0 for "
        "MiniMax2 layers whose routed_scaling_factor into the kernel is not 1 "
        "(flashinfer#3499; fixed in 0.6.13; this layer: MiniMax2, 288 experts, "
        "top_k 8, scale 3, bf16)",
    )
    assert [(t, [b.id for b in v.guarded]) for t, v in verdicts] == [
        (STAND_IN_TARGET, ["flashinfer#3499"])
    ]
    minimax_m2 = being_built()
    assert ask(cls, "MiniMax2", minimax_m2)[0] == (True, None)  # scale 1
    assert ask(cls, "MiniMax2")[0][0] is False  # no layer visible: its action
    for method in ("Renormalize", "DeepSeekV3"):
        assert ask(cls, method, step, 288)[0] == (True, None)
    assert patching.accepted_after(outcome) is None  # its module is not imported
    assert log_line.import_line([outcome]) == (
        "moe_routing: on import: Experts checks each layer"
    )
    outcome.patch.undo()
    assert "is_supported_config" not in vars(cls)


def test_a_warn_entry_changes_no_answer_and_is_said_for_the_layer():
    cls = type("Experts", (SigmoidExperts,), {})
    nan = entry(bugs.FLASHINFER_3946)
    outcome = patching.apply(
        STAND_IN_TARGET, stand_in_module(cls, Routing), deciding(nan, "warn")
    )
    assert outcome.state == "patched"
    dsv3 = being_built(n_group=8, bias=True)
    answer, verdicts = ask(cls, "DeepSeekV3", dsv3)
    assert answer == (True, None)
    report = log_line.LayerReport(verdicts, "Experts", "model.layers.1.mlp.experts")
    assert report.line() == (
        "moe_routing: model.layers.1.mlp.experts and later layers like it: "
        "DeepSeekV3, 256 experts, top_k 8, n_group 8, bias, scale 1, bf16 "
        "-> Experts: flashinfer#3946 warned"
    )
    bug, verdict, target = report.warned[0]
    assert log_line.layer_warning(
        bug, verdict, target, "x", (("flashinfer#4237", "ignore"),)
    ).endswith(
        "FlashInfer 0.6.8.post1 divides grouped DeepSeekV3 routing weights by a zero "
        "sum (fixed in 0.6.17); vLLM left unchanged for it; to keep such layers off "
        "the fused routing: VLLM_MOE_ROUTING_KNOWN_BUGS=flashinfer#4237=ignore,"
        "flashinfer#3946=guard; `vllm-moe-routing status` lists every known bug"
    )
    glm = being_built(n_group=1, bias=True)
    _, verdicts = ask(cls, "DeepSeekV3", glm)
    assert (
        log_line.LayerReport(verdicts, "Experts")
        .line()
        .endswith("-> Experts: no known bug hits it")
    )
    outcome.patch.undo()


def test_an_entry_applies_only_where_vllm_lets_its_method_in():
    cls = experts_accepting(Routing.Renormalize, Routing.RenormalizeNaive)
    decision = deciding(entry(bugs.FLASHINFER_3499))
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert (outcome.state, outcome.planned) == ("native", ())
    assert "is_supported_config" not in vars(cls)


def passing_apply(self, router_logits, routed_scaling_factor=None):
    return kernel(
        routing_logits=router_logits, routed_scaling_factor=routed_scaling_factor
    )


def splatting_apply(self, router_logits, routed_scaling_factor=None):
    return kernel(routing_logits=router_logits, **self.activation_params)


def none_passing_apply(self, router_logits, routed_scaling_factor=None):
    return kernel(routing_logits=router_logits, routed_scaling_factor=None)


def no_kernel_apply(self, router_logits, routed_scaling_factor=None):
    return router_logits


APPLIES = {
    "passes": passing_apply,
    "drops": SigmoidExperts.apply,  # calls kernel(routing_logits=...) only
    "passes None": none_passing_apply,
    "splats **kwargs": splatting_apply,
    "calls no kernel": no_kernel_apply,
    # No source to read: a function compiled from a string.
    "no source": eval("lambda self, router_logits: kernel(routing_logits=1)"),
}


@pytest.mark.parametrize(
    ("code", "probe"),
    [
        ("passes", "passes"),
        ("drops", "drops"),
        ("passes None", "drops"),
        ("splats **kwargs", "unknown"),
        ("calls no kernel", "unknown"),
        ("no source", "unknown"),
    ],
)
def test_the_probe_reads_what_vllms_call_does_with_the_value(code, probe):
    cls = type("Experts", (SigmoidExperts,), {"apply": APPLIES[code]})
    call = bugs.KernelCall("Experts.apply", "kernel")
    module = stand_in_module(cls, Routing)
    assert checks.probe_call(module, call, "routed_scaling_factor") == probe
    missing = bugs.KernelCall("Experts.forward", "kernel")
    assert checks.probe_call(module, missing, "routed_scaling_factor") == "unknown"


def scale_defect(unreadable="affected", **range_):
    """vllm#43769 at the stand-in target, with the rule and range given."""
    defect = bugs.VllmDefect(
        "routed_scaling_factor",
        {STAND_IN_TARGET: bugs.KernelCall("Experts.apply", "kernel")},
        fixed_in=range_.get("fixed_in", (0, 22, 0)),
        introduced_in=range_.get("introduced_in"),
        unreadable=unreadable,
    )
    return entry(bugs.VLLM_43769).replace(defect=defect)


@pytest.mark.parametrize(
    ("code", "unreadable", "planned"),
    [
        ("passes", "affected", False),  # a backported build is left alone
        ("drops", "affected", True),
        ("drops", "unaffected", True),
        ("splats **kwargs", "affected", True),  # the range decides
        ("splats **kwargs", "unaffected", False),
        ("no source", "affected", True),
    ],
)
def test_a_vllm_defect_in_range_is_planned_as_the_probe_and_its_rule_say(
    code, unreadable, planned
):
    cls = type("Experts", (SigmoidExperts,), {"apply": APPLIES[code]})
    outcome = patching.apply(
        STAND_IN_TARGET,
        stand_in_module(cls, Routing),
        deciding(scale_defect(unreadable), "fix"),
    )
    if not planned:
        assert (outcome.state, outcome.planned) == ("native", ())
        return
    # No backport for this caller: the entry guards instead.
    assert [(p.bug.id, p.done) for p in outcome.planned] == [("vllm#43769", "guarded")]
    trinity = being_built(128, n_group=1, bias=True, scale=2.826)
    assert ask(cls, "DeepSeekV3", trinity, 128)[0] == (
        False,
        "FlashInfer's trtllm_bf16_moe is called by vLLM without routed_scaling_factor "
        "for DeepSeekV3 layers whose routed_scaling_factor into the kernel is not 1 "
        "(vllm#43769; this layer: DeepSeekV3, 128 experts, top_k 8, n_group 1, bias, "
        "scale 2.826, bf16)",
    )
    assert ask(cls, "DeepSeekV3", being_built(n_group=8, bias=True))[0] == (True, None)
    outcome.patch.undo()


@pytest.mark.parametrize(
    ("vllm", "in_range"),
    [("0.16.0", True), ("0.21.0", True), ("0.22.0", False), ("0.34.0", False),
     ("0.34.0+cu130", False), (None, True), ("0.22.0rc1", True),
     ("0.22.0.dev3", True), ("0.1.dev7557+g1a2b3c4", True), ("0.15.1", True)],
)  # fmt: skip
def test_a_vllm_defects_known_range_decides_before_any_probe(vllm, in_range):
    """The range is data: a release outside it is never probed, whatever its
    code (a probe confirms the range, never widens it). A version that does
    not say which code it is (unknown, a pre-release or dev build, a source
    build's ``0.1.devN``, one older than supported) leaves the probe to decide."""
    facts = Facts({"flashinfer-python": "0.7.4", "vllm": vllm}, B200)
    found = {f.bug.id: f for f in policy.decide(facts, envs.read({})).findings}
    assert found["vllm#43769"].in_range is in_range
    mxint4 = found["vllm#32437"].in_range  # >= 0.23.0, not fixed upstream
    said = vllm is None or Version(vllm).is_prerelease
    said = said or Version(vllm).release < (0, 16)
    assert mxint4 is (said or Version(vllm).release >= (0, 23, 0))


def test_a_version_the_ranges_cannot_place_is_said_in_the_decision():
    facts = Facts({"flashinfer-python": "0.7.4", "vllm": "0.1.dev7557+g1a2b3c4"}, B200)
    reason = policy.decide(facts, envs.read({})).reason
    assert reason.endswith(
        "; vLLM 0.1.dev7557+g1a2b3c4 is a pre-release or a build the known ranges "
        "cannot place: vLLM defects decided by probing its code"
    )
    proven = Facts({"flashinfer-python": "0.7.4", "vllm": "0.34.0+cu130"}, B200)
    assert "probing" not in policy.decide(proven, envs.read({})).reason


def test_widening_and_checking_one_class_undo_together():
    """vLLM 0.18/0.19's FP8 class lacks Renormalize (widened on ``enable``)
    while an in-range entry is judged per layer: two patches, one outcome."""

    cls = experts_accepting(Routing.DeepSeekV3, Routing.MiniMax2)
    written = dict(vars(cls))
    decision = deciding(entry(bugs.FLASHINFER_3499))
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert outcome.detail == "+Renormalize +RenormalizeNaive, checks each layer"
    assert outcome.patch.attrs == ("_supports_routing_method", "is_supported_config")
    assert cls._supports_routing_method(Routing.Renormalize, None, None)
    outcome.patch.undo()
    assert dict(vars(cls)) == written


def readme_row(bug: bugs.KnownBug) -> str:
    return (
        f"| {bug.id} | {bug.title} | {bug.layers} | {bug.affected} | "
        f"{bug.fixed_in_text} | {bug.action} |"
    )


def test_readme_table_is_the_catalogue():
    """Every entry has its row as the catalogue states it, in the catalogue's
    order, and the table has no other row."""
    text = README.read_text(encoding="utf-8")
    header = "| bug | what goes wrong | layers it hits |"
    table = text[text.index(header) :].split("\n\n", 1)[0].splitlines()[2:]
    assert table == [readme_row(bug) for bug in bugs.KNOWN_BUGS]


def test_known_bugs_doc_has_a_section_per_entry():
    text = KNOWN_BUGS_DOC.read_text(encoding="utf-8")
    for bug in bugs.KNOWN_BUGS:
        assert f"## {bug.id}:" in text, bug.id


def test_a_failing_layer_check_leaves_vllms_answer_and_warns_once(monkeypatch, records):
    """The layer check runs inside vLLM's backend selection: an error there
    must not stop vLLM from building the model."""
    cls = type("Experts", (SigmoidExperts,), {})
    decision = deciding(entry(bugs.FLASHINFER_3499), flashinfer="0.6.11.post2")
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)

    def broken(self, layer):
        raise RuntimeError("a future vLLM's layer")

    monkeypatch.setattr(policy.LayerCheck, "judge", broken)
    step = being_built(288, scale=3.0)
    for _ in range(3):
        assert ask(cls, "MiniMax2", step, 288)[0] == (True, None)  # vLLM's answer
    warnings = [w for w in records.lines(logging.WARNING) if "layer check" in w]
    assert warnings == [
        "moe_routing: the layer check of Experts failed (RuntimeError: a future "
        "vLLM's layer); vLLM's own answer stands for its layers"
    ]
    outcome.patch.undo()


def test_a_source_file_changed_after_import_is_unknown_not_a_failure(tmp_path):
    """``inspect.getsource`` reads the file as it is now: edited after import
    (an unbalanced bracket from here on), it raises ``tokenize.TokenError``.
    The probe says "unknown", so the entry's own rule applies and the other
    entries at the target keep theirs."""
    path = tmp_path / "edited_experts.py"
    path.write_text(
        "def kernel(**kwargs):\n    return kwargs\n\n\nclass Experts:\n"
        "    def apply(self, router_logits):\n"
        "        return kernel(routing_logits=router_logits)\n"
    )
    spec = importlib.util.spec_from_file_location("edited_experts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    call = bugs.KernelCall("Experts.apply", "kernel")
    assert checks.probe_call(module, call, "routed_scaling_factor") == "drops"
    path.write_text(
        "def kernel(**kwargs):\n    return kwargs\n\n\nclass Experts:\n"
        "    def apply(self, router_logits):\n        return kernel(\n"
    )
    linecache.checkcache(str(path))
    assert checks.probe_call(module, call, "routed_scaling_factor") == "unknown"
